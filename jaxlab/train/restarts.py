"""Best-of-k restarts: train k initializations briefly, keep the best, train it on.

Some training problems have a loss plateau whose length depends on the
initialization (in-context regression is one: Garg et al. 2022, Sec. 3, note
that training can stall without their curriculum). A study whose claim is
about the trained model, not about how often training stalls, can then train
`k` initializations together for the first `select_steps` updates, score each
with a held-out `score_fn`, and continue only the best one: the kept run is
exactly the chosen initialization trained with the full schedule (its
optimizer state, schedule count and step key are the candidate's own), so the
only cost is `(k - 1) * select_steps` extra updates.

The k candidates train as one vmapped run (`optax` state and the update of
each member are independent; the members share each step's batch and key)
in `workdir/candidates`; the choice is written to
`workdir/candidates/choice.json`, and the main run in `workdir` starts from
a checkpoint of the chosen member at `select_steps` (with its metrics rows),
so `train` resumes it as if it had been killed there. Every stage resumes
after a kill, and a re-run on a finished workdir returns the same result.
A model with a carried state (BatchNorm's `batch_stats`; `jaxlab.models.contract`)
passes `model_states`, one per init: the candidates' states are stacked like
their params, each updated by its own forward passes.

>>> result, choice = restarts.train_best_of(
...     loss_fn, [init(k) for k in keys], tx, batches, num_steps=4500,
...     select_steps=750, score_fn=held_out_loss, key=key, workdir="runs/x",
...     checkpoint_every=1000)
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.models import contract
from jaxlab.train import io, loop, sharding
from jaxlab.train import mesh as mesh_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.step import TrainState, init_state


def vmap_transform(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied independently to each member of params stacked on axis 0.

  Each member's state (moments, schedule count, clipping norm) is its own:
  member i of `vmap_transform(tx)` updates exactly as `tx` alone would.
  """
  return optax.GradientTransformation(jax.vmap(tx.init), jax.vmap(tx.update))


def member(tree: Any, i: int) -> Any:
  """Member `i` of a pytree stacked on axis 0."""
  return jax.tree.map(lambda x: x[i], tree)


def ensemble_loss(loss_fn: Callable, k: int, with_state: bool = False) -> Callable:
  """`(stacked params, batch, key) -> (sum of the k losses, per-member metrics)`.

  The gradient of the sum with respect to member i is member i's own gradient.
  Metrics are `loss_i` and `<name>_i` for each aux scalar of `loss_fn`.
  `with_state`: `loss_fn` carries a model state (`jaxlab.models.contract`); the
  ensemble loss then takes the k stacked states as `state=` and returns the k
  new ones under aux["state"], each member's computed from its own.
  """
  contract.check_loss(loss_fn, state=() if with_state else None)

  def one(params, model_state, batch, key):  # (loss, metrics, new state)
    return contract.call(loss_fn, params, batch, key=key, state=model_state, train=True)

  def total(params, batch, key, model_state):
    losses, metrics, new = jax.vmap(one, in_axes=(0, 0 if with_state else None, None, None))(
        params, model_state, batch, key)
    out = {f"loss_{i}": losses[i] for i in range(k)}
    for name, v in metrics.items():
      out.update({f"{name}_{i}": v[i] for i in range(k)})
    if with_state:
      out[contract.STATE_KEY] = new
    return jnp.sum(losses), out

  if with_state:
    def loss(params, batch, key, *, state):
      return total(params, batch, key, state)
  else:
    def loss(params, batch, key):
      return total(params, batch, key, None)

  return loss


def _first_unlike(trees: Sequence[Any]) -> int | None:
  """The index of the first tree whose structure or leaf shapes differ from trees[0], or None."""
  ref, shapes = jax.tree.structure(trees[0]), [np.shape(a) for a in jax.tree.leaves(trees[0])]
  for i, t in enumerate(trees):
    if jax.tree.structure(t) != ref or [np.shape(a) for a in jax.tree.leaves(t)] != shapes:
      return i
  return None


def _validate(inits, num_steps, select_steps, workdir, checkpoint_every, model_states=None):
  if not isinstance(inits, Sequence) or isinstance(inits, (str, bytes)) or not inits:
    raise ValueError(f"inits={type(inits).__name__}: allowed a non-empty list of params pytrees")
  i = _first_unlike(inits)
  if i is not None:
    raise ValueError(f"inits[{i}] differs in structure or shapes from inits[0]; allowed: "
                     "initializations of one model")
  if model_states is not None:
    if (not isinstance(model_states, Sequence) or isinstance(model_states, (str, bytes))
        or len(model_states) != len(inits)):
      raise ValueError(f"model_states={type(model_states).__name__} of "
                       f"{len(model_states) if isinstance(model_states, Sequence) else '?'}; "
                       f"allowed: None or a list of {len(inits)} states, one per init")
    i = next((i for i, st in enumerate(model_states) if st is None), _first_unlike(model_states))
    if i is not None:
      raise ValueError(f"model_states[{i}] is None or differs in structure or shapes from "
                       "model_states[0]; allowed: the states of one model, one per init")
  if len(inits) == 1:
    return
  for name, v in (("select_steps", select_steps), ("num_steps", num_steps)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name}={v!r}; allowed: an int >= 1")
  if select_steps >= num_steps:
    raise ValueError(f"select_steps={select_steps}; allowed: < num_steps={num_steps}")
  if workdir is None or not checkpoint_every:
    raise ValueError(f"workdir={workdir!r}, checkpoint_every={checkpoint_every!r}: best-of-k "
                     "restarts hand the chosen candidate to the main run through a checkpoint; "
                     "allowed: a workdir and checkpoint_every >= 1")


def train_best_of(loss_fn: Callable, inits: Sequence[Any], tx: optax.GradientTransformation,
                  batch_fn: Callable[[int], Any], *, num_steps: int, select_steps: int,
                  score_fn: Callable[[Any], Any] | None, key: jax.Array, workdir: str | None = None,
                  checkpoint_every: int = 0, log_every: int = 100,
                  lr_schedule: Callable | None = None, progress: bool = True,
                  mesh: jax.sharding.Mesh | None = None,
                  desc: str = "train",
                  model_states: Sequence[Any] | None = None) -> tuple[loop.TrainResult, dict]:
  """Trains each of `inits` for `select_steps`, then the best one to `num_steps`.

  Args:
    loss_fn: a loss of the model contract (`jaxlab.models.contract`); with
      `model_states`, one that carries a state (BatchNorm's `batch_stats`).
    inits: k initial params pytrees of one model. With k = 1 this is `train.train`.
    tx: the optax transformation of the run (built for `num_steps`: the
      candidates run the first `select_steps` updates of the same schedule).
    batch_fn: `step -> batch`, as for `train.train`; every candidate sees the same batches.
    num_steps, key, workdir, checkpoint_every, log_every, lr_schedule,
      progress, mesh, desc: as for `train.train`.
    select_steps: updates before the choice (< num_steps).
    score_fn: `params -> scalar` (`(params, model_state) -> scalar` with
      `model_states`), lower is better (e.g. the loss on held-out data); the
      chosen candidate is the argmin (the first on ties). With one init,
      `select_steps` and `score_fn` are not used (None is fine).
    model_states: None, or the k initial model states, one per init (e.g. each
      init's `batch_stats`): every candidate carries its own, as `train.train`'s
      `model_state` does, and the kept run continues the chosen one's.

  Returns:
    `(result, choice)`: the main run's `TrainResult` (its history starts with
    the chosen candidate's rows) and `{"scores", "chosen", "select_steps"}`
    (None when k = 1).
  """
  _validate(inits, num_steps, select_steps, workdir, checkpoint_every, model_states)
  common = dict(key=key, log_every=log_every, lr_schedule=lr_schedule, progress=progress,
                mesh=mesh)
  states = [None] * len(inits) if model_states is None else list(model_states)
  if len(inits) == 1:
    return loop.train(loss_fn, inits[0], tx, batch_fn, num_steps=num_steps, workdir=workdir,
                      checkpoint_every=checkpoint_every, desc=desc, model_state=states[0],
                      **common), None
  k = len(inits)
  cand_dir = os.path.join(workdir, "candidates")
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
  with_state = model_states is not None
  cands = loop.train(ensemble_loss(loss_fn, k, with_state), stack(inits), vmap_transform(tx),
                     batch_fn, num_steps=select_steps, workdir=cand_dir,
                     checkpoint_every=min(checkpoint_every, select_steps),
                     desc=f"{desc}/candidates x{k}",
                     model_state=stack(states) if with_state else None, **common)
  if with_state:
    scores = [float(score_fn(member(cands.state.params, i), member(cands.state.model_state, i)))
              for i in range(k)]
  else:
    scores = [float(score_fn(member(cands.state.params, i))) for i in range(k)]
  if not np.all(np.isfinite(scores)):
    raise loop.NonFiniteError(f"best-of-{k} restarts: candidate scores {scores} at step "
                              f"{select_steps} are not all finite; the candidates' checkpoints "
                              f"are in {cand_dir}")
  chosen = int(np.argmin(scores))
  choice = {"scores": scores, "chosen": chosen, "select_steps": int(select_steps),
            "num_candidates": k}
  io.write_json(os.path.join(cand_dir, "choice.json"), choice)
  _seed_main_run(cands, chosen, tx, key, workdir, checkpoint_every, mesh)
  result = loop.train(loss_fn, inits[chosen], tx, batch_fn, num_steps=num_steps,
                      workdir=workdir, checkpoint_every=checkpoint_every, desc=desc,
                      model_state=states[chosen], **common)
  return result, choice


def _seed_main_run(cands: loop.TrainResult, chosen: int, tx, key, workdir: str,
                   checkpoint_every: int, mesh) -> None:
  """Writes the chosen member's metrics rows and state as the main run's step `select_steps`.

  Skipped when the main run already has a checkpoint that restores (a resumed
  study). Rows up to `select_steps` hold the member's own `loss` and aux
  metrics and the learning rate; the gradient, parameter and update norms of
  the candidates run are of the whole ensemble, so they are left out. The rows go first, then the checkpoint, as in the train loop: a kill
  between them re-seeds on the next run with the same content.
  """
  s = int(cands.state.step)
  mesh = sharding.data_mesh() if mesh is None else mesh
  model_state = cands.state.model_state
  chosen_state = None if model_state is None else member(model_state, chosen)
  like = mesh_lib.put_state(init_state(member(cands.state.params, chosen), tx, key,
                                       chosen_state), mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), checkpoint_every)
  try:
    if ckpt.restore_verified(like) is not None:
      return
    rows = []
    for r in cands.history:  # the chosen member's loss_i / <metric>_i, and the shared rate
      row = {"step": r["step"]}
      for name, v in r.items():
        base, _, idx = name.rpartition("_")
        if base and idx == str(chosen):
          row[base] = v
        elif name == "learning_rate":
          row[name] = v
      rows.append(row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    io.atomic_write(os.path.join(workdir, "metrics.jsonl"), text)
    state = TrainState(member(cands.state.params, chosen), member(cands.state.opt_state, chosen),
                       jnp.asarray(s, jnp.int32), key, chosen_state)
    ckpt.save(s, state)
  finally:
    ckpt.close()
