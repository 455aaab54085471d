"""One readable training loop: jitted step, logging, eval, hooks, checkpoints."""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jaxlab.models import contract
from jaxlab.train import io, sharding
from jaxlab.train import mesh as mesh_lib
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.step import LossFn, TrainState, init_state, make_train_step


class Hook(Protocol):
  """Called every `every_steps` steps; its dict joins that step's metrics.

  A hook with a true attribute `updates_state` returns `(metrics, new_state)`
  instead, and the loop continues from `new_state` (same pytree structure,
  shapes and dtypes, so the compiled step is reused): e.g. a learning-rate
  rule writing `opt_state.hyperparams["learning_rate"]` of an
  `optax.inject_hyperparams` optimizer.

  A hook with a true attribute `at_start` is also called once with step 0,
  before the first update of a run that starts from scratch (not on resume:
  the checkpoint holds its effect); its dict is the row `{"step": 0, ...}`.
  E.g. a rule that picks the first stage's learning rate (AutoLRS).
  """

  every_steps: int

  def __call__(self, step: int, state: TrainState) -> Mapping[str, float]: ...


class TrainResult(NamedTuple):
  state: TrainState
  history: list[dict]  # the rows written to metrics.jsonl, resumed rows included


class NonFiniteError(FloatingPointError):
  """A loss or gradient went NaN/inf; the message names the step."""

  exit_code = 7


def _check_positive(**kwargs: int) -> None:
  for name, value in kwargs.items():
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name}={value!r}; allowed: an integer ≥ 0")


@functools.lru_cache(maxsize=32)
def _cached_train_step(loss_fn, tx, lr_schedule, inject_nan_at_step):
  return make_train_step(loss_fn, tx, lr_schedule=lr_schedule,
                         inject_nan_at_step=inject_nan_at_step)


def _train_step(loss_fn, tx, lr_schedule, inject_nan_at_step):
  # Repeated runs with the same functions (sweeps, restarts) reuse one compiled step.
  try:
    return _cached_train_step(loss_fn, tx, lr_schedule, inject_nan_at_step)
  except TypeError:  # something unhashable: build a fresh step
    return make_train_step(loss_fn, tx, lr_schedule=lr_schedule,
                           inject_nan_at_step=inject_nan_at_step)


def _apply_state_hook(hook, step: int, state: TrainState, mesh) -> tuple[Mapping, TrainState]:
  out = hook(step, state)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError(f"hook {hook!r} has updates_state=True and must return (metrics, new_state); "
                     f"got {type(out).__name__}")
  metrics, new = out
  old_struct = jax.tree.structure(state)
  if jax.tree.structure(new) != old_struct:
    raise ValueError(f"hook {hook!r} returned a state of structure {jax.tree.structure(new)}; "
                     f"allowed: the structure of the train state, {old_struct}")
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
    if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
      raise ValueError(f"hook {hook!r} changed a state leaf from {jnp.shape(a)} "
                       f"{jnp.result_type(a)} to {jnp.shape(b)} {jnp.result_type(b)}; allowed: "
                       "the same shape and dtype (the compiled step is reused)")
  return metrics, mesh_lib.put_state(new, mesh)


def _start_hooks(hooks, state, mesh, logger, history) -> TrainState:
  """Runs the `at_start` hooks before the first update; their dicts are the row of step 0."""
  row: dict = {}
  for h in hooks:
    if not getattr(h, "at_start", False):
      continue
    if getattr(h, "updates_state", False):
      out, state = _apply_state_hook(h, 0, state, mesh)
    else:
      out = h(0, state)
    row.update({k: float(v) for k, v in out.items()})
  history.append({"step": 0, **row})
  if logger is not None:
    logger.write(0, row)
  return state


def _due(step: int, every: int, num_steps: int) -> bool:
  return bool(every) and (step % every == 0 or step == num_steps)


def train(loss_fn: LossFn, params: Any, tx: optax.GradientTransformation,
          batch_fn: Callable[[int], Any], *, num_steps: int, key: jax.Array,
          workdir: str | None = None, log_every: int = 100, eval_every: int = 0,
          eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
          checkpoint_every: int = 0, hooks: Sequence[Hook] = (),
          lr_schedule: Callable[[Any], Any] | None = None, progress: bool = True,
          inject_nan_at_step: int | None = None, mesh: jax.sharding.Mesh | None = None,
          desc: str = "train", model_state: Any = None) -> TrainResult:
  """Trains `params` with `tx` for `num_steps` steps; resumes from `workdir`.

  Steps are counted from 1: step k is the k-th update; the metrics row
  `{"step": k, ...}` holds the loss of the batch that update used, and the
  checkpoint of step k holds the state after k updates.

  Args:
    loss_fn: a loss of the model contract (`jaxlab.models.contract`):
      `(params, batch[, key][, *, state, train]) -> loss or (loss, aux)`, aux a
      dict of scalars plus, with `model_state`, the new state under "state".
      Training calls it with `train=True` and the step's key.
    params: initial parameters (ignored when a checkpoint is resumed).
    tx: optax transformation.
    batch_fn: `step -> batch` for step index 0, 1, ... (pure in the step, e.g.
      `jaxlab.data.Batches`), so resumed runs see the same batches.
    num_steps: total number of updates.
    key: root PRNG key of the run; update k uses `fold_in(key, k - 1)`.
    workdir: where metrics.jsonl and checkpoints/ go (None: nothing written).
    log_every: metrics are fetched and written every `log_every` steps.
    eval_every, eval_fn: `eval_fn(params) -> dict` every `eval_every` steps and
      at the end; `eval_fn(params, model_state)` when the run has a model state.
    checkpoint_every: orbax checkpoint every so many steps and at the end
      (0: none). A re-run on the same workdir resumes from the newest step
      that restores and verifies (see `Checkpointer.restore_verified`); the
      metrics rows after it are dropped and recomputed, so the finished
      workdir equals an uninterrupted run's. A log step's row is on disk
      before its checkpoint is saved.
    hooks: objects with `every_steps` and `__call__(step, state) -> dict`; a
      hook with `updates_state = True` returns `(dict, new_state)` and the run
      continues from `new_state`; one with `at_start = True` is also called at
      step 0 of a fresh run (see :class:`Hook`).
    lr_schedule: the schedule inside `tx`, to log `learning_rate`.
    progress: show a tqdm progress bar.
    inject_nan_at_step: test hook — the loss of step k becomes NaN.
    mesh: device mesh (default: all devices on one "data" axis); a 2-D
      (`data`, `fsdp`) mesh from `jaxlab.train.mesh` shards the parameters and
      optimizer state over `fsdp` (FSDP) and the batch over both axes.
    desc: the progress bar's label.
    model_state: the model's initial carried state (flax collections such as
      `batch_stats`, or the non-Param part of an nnx module): passed to the
      loss as `state`, replaced each step by the loss's aux["state"], never
      differentiated, checkpointed with the run (`TrainResult.state.model_state`).

  The workdir is locked for the run (`jaxlab.train.workdir.lock`): a second
  process on it stops at once.

  Raises:
    NonFiniteError: when a loss or gradient is non-finite; the message names
      the step and the metric, and checkpoints from before it stay on disk.
    WorkdirError: the workdir or its checkpoints/ is not a usable directory.
    WorkdirBusyError: another live process holds the workdir.
    CheckpointError: checkpoints exist but none restores, or they hold a state
      of another structure (a changed model or optimizer).
  """
  _check_positive(num_steps=num_steps, log_every=log_every, eval_every=eval_every,
                  checkpoint_every=checkpoint_every)
  if num_steps == 0 or log_every == 0:
    raise ValueError(f"num_steps={num_steps}, log_every={log_every}; allowed: ≥ 1")
  if checkpoint_every and workdir is None:
    raise ValueError("checkpoint_every > 0 needs a workdir")
  for h in hooks:
    if not getattr(h, "every_steps", 0) or h.every_steps < 1:
      raise ValueError(f"hook {h!r} needs an integer attribute every_steps ≥ 1")
  if inject_nan_at_step is not None and (not isinstance(inject_nan_at_step, (int, np.integer))
                                         or inject_nan_at_step < 1):
    raise ValueError(f"inject_nan_at_step={inject_nan_at_step!r}; allowed: None or an update "
                     "index ≥ 1 (updates are counted from 1)")
  contract.check_loss(loss_fn, state=model_state)
  mesh = sharding.data_mesh() if mesh is None else mesh
  first = batch_fn(0)
  sizes = {np.shape(x)[0] for x in jax.tree.leaves(first)}
  if len(sizes) != 1:
    raise ValueError(f"batch leaves must share their leading (batch) dimension; got {sizes}")
  sharding.check_batch_size(sizes.pop(), mesh)
  with contextlib.ExitStack() as stack:
    if workdir is not None:
      stack.enter_context(workdir_lib.lock(workdir))
    # The step donates the state: copy, so that the caller's params, key and
    # model state (and any optimizer state aliasing them) survive. device_put
    # alone may alias a shard.
    state = jax.tree.map(jnp.copy, init_state(params, tx, key, model_state))
    state = mesh_lib.put_state(state, mesh)
    logger = io.MetricsLogger(workdir) if workdir else None
    ckpt = None
    if checkpoint_every:
      ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), checkpoint_every)
      stack.callback(ckpt.close)
    return _loop(state, loss_fn, tx, batch_fn, logger, ckpt, num_steps=num_steps,
                 log_every=log_every, eval_every=eval_every, eval_fn=eval_fn,
                 checkpoint_every=checkpoint_every, hooks=hooks, lr_schedule=lr_schedule,
                 progress=progress, inject_nan_at_step=inject_nan_at_step, mesh=mesh,
                 desc=desc)


def _loop(state, loss_fn, tx, batch_fn, logger, ckpt, *, num_steps, log_every, eval_every,
          eval_fn, checkpoint_every, hooks, lr_schedule, progress, inject_nan_at_step, mesh,
          desc) -> TrainResult:
  """The loop proper: resume, then step, log, evaluate, run hooks, checkpoint."""
  history: list[dict] = []
  start = 0
  restored = ckpt.restore_verified(state) if ckpt is not None else None
  if restored is not None:
    state, start = restored, int(restored.step)
    if start > num_steps:
      raise ValueError(f"num_steps={num_steps}, but the checkpoint in {ckpt.directory} is at "
                       f"step {start}; allowed: num_steps ≥ {start} (or another workdir)")
    # Rows after the checkpoint belong to work the kill threw away.
    history = logger.resume_from(start)
  elif logger is not None:
    logger.reset()
  if start == 0 and any(getattr(h, "at_start", False) for h in hooks):
    state = _start_hooks(hooks, state, mesh, logger, history)

  step_fn = mesh_lib.pin_step(_train_step(loss_fn, tx, lr_schedule, inject_nan_at_step),
                              state, mesh)
  last_saved = start if ckpt is not None and start else None
  pending: list[dict] = []
  # Several CPU "devices" share one host thread pool; with more than one
  # sharded step in flight XLA's in-process all-reduce can wait forever for a
  # participant (seen: 4 forced host devices on 2 cores). Run them one at a time.
  serialize = sharding.needs_serial_steps(mesh)
  bar = tqdm.tqdm(total=num_steps, initial=start, desc=desc, disable=not progress,
                  dynamic_ncols=True, mininterval=1.0)
  t_last, s_last = time.perf_counter(), start
  try:
    for t in range(start, num_steps):
      state, metrics = step_fn(state, sharding.put_batch(batch_fn(t), mesh))
      if serialize:
        jax.block_until_ready(metrics)
      pending.append(metrics)
      s = t + 1
      bar.update(1)
      do_log = _due(s, log_every, num_steps)
      do_eval = eval_fn is not None and _due(s, eval_every, num_steps)
      do_ckpt = ckpt is not None and _due(s, checkpoint_every, num_steps)
      due_hooks = [h for h in hooks if s % h.every_steps == 0]
      if not (do_log or do_eval or do_ckpt or due_hooks):
        continue
      # Only the last step's metrics come to the host: fetching every step's
      # flag cost ~30 µs a step on CPU. A NaN/inf gradient poisons the
      # parameters, so the last step's `finite` (loss, gradient and parameters)
      # is false after any earlier bad gradient; only then are the interval's
      # flags fetched, to name the first bad step. (A non-finite loss whose
      # gradient stays finite is caught only on a log step.)
      last = jax.device_get(pending[-1])
      if not last["finite"]:
        finite = np.asarray(jax.device_get([m["finite"] for m in pending]))
        i = int(np.argmin(finite))
        bad = s - len(pending) + i + 1
        where = ", ".join(f"{k}={float(v)}" for k, v in jax.device_get(pending[i]).items()
                          if k != "finite" and not np.isfinite(v))
        saved = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                 if last_saved is not None else "no checkpoint had been saved")
        raise NonFiniteError(f"non-finite value at step {bad}: {where}; the run stopped and "
                             f"{saved}")
      pending = []
      row = {k: float(v) for k, v in last.items() if k != "finite"}
      now = time.perf_counter()
      row["steps_per_sec"] = (s - s_last) / max(now - t_last, 1e-9)
      t_last, s_last = now, s
      if do_eval:
        evals = eval_fn(state.params) if state.model_state is None else \
            eval_fn(state.params, state.model_state)
        row.update({k: float(v) for k, v in evals.items()})
      for h in due_hooks:
        if getattr(h, "updates_state", False):
          out, state = _apply_state_hook(h, s, state, mesh)
        else:
          out = h(s, state)
        row.update({k: float(v) for k, v in out.items()})
      row = {"step": s, **row}
      history.append(row)
      # The row is on disk before its checkpoint: a resume from step s finds
      # every row up to s, and drops rows written after its checkpoint.
      if logger is not None:
        logger.write(s, row)
      if do_ckpt:
        ckpt.save(s, state)
        last_saved = s
      bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
  finally:
    bar.close()
  return TrainResult(state, history)
