"""Verified orbax checkpoints of a TrainState, with resume from the newest good step.

Orbax makes each step atomic (a temporary directory renamed when complete) but
does not check what it reads back: a flipped byte in a data file restores
silently. So every step holds two items, written in one atomic orbax step:
`state` (the arrays, `StandardSave`) and `integrity` (JSON: each leaf's path,
shape, dtype and SHA-256 of its bytes). `restore_verified` tries the steps from
the newest down, skips a step that fails to restore or to verify (naming its
path and the reason), moves it aside into `<directory>.rejected/` (nothing is
deleted) and continues from the newest good step.

Several processes (`jaxlab.train.multihost`) save and restore together through
orbax's multi-process support: every process calls `save` and `restore`, each
writes and reads the shards its devices hold, process 0 commits the step and
writes the integrity record. A leaf's checksum is always that of the whole
array in C order, whatever the sharding, so a step written by N processes
verifies when read by one (`load_state`) and the other way round: a replicated
array is hashed from this process's copy, a sharded one is first gathered
(`process_allgather`, a collective over every process). Whether a step
restores and verifies is agreed by all processes, so they resume from the same
step; process 0 moves the rejected ones aside.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import io as stdio
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxlab._tree import path_parts
from jaxlab.train import io, multihost, sharding
from jaxlab.train.errors import CheckpointError
from jaxlab.train.step import TrainState

log = logging.getLogger("jaxlab")
_FORMAT = 1


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  # Typed PRNG keys (the run's key, an nnx module's rng streams in its state)
  # are stored as their raw uint32 data; their impl is recorded beside.
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _key_impls(tree: Any) -> dict[str, str]:
  return {_path(p): str(jax.random.key_impl(x))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if _is_key(x)}


def _data_to_keys(tree: Any, impls: dict[str, str]) -> Any:
  def wrap(path, x):
    impl = impls.get(_path(path))
    return jax.random.wrap_key_data(x, impl=impl) if impl else x
  return jax.tree_util.tree_map_with_path(wrap, tree)


def _to_tree(state: TrainState) -> dict:
  tree = {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": state.key}
  if state.model_state is not None:
    tree["model_state"] = state.model_state
  return tree


def _leaf_record(x: Any, digest: bool) -> dict:
  rec = {"shape": list(np.shape(x)), "dtype": str(np.dtype(x.dtype))}
  if digest:
    rec["sha256"] = hashlib.sha256(np.ascontiguousarray(sharding.whole(x)).tobytes()).hexdigest()
  return rec


def _path(path: tuple) -> str:
  """A leaf path as "a/0/b", the same whether a node is a dict, a tuple or a
  NamedTuple (a checkpoint read without a template comes back as dicts)."""
  return "/".join(path_parts(path))


def integrity_record(tree: Any, digest: bool = True) -> dict[str, dict]:
  """`{leaf path: {shape, dtype, sha256}}` of a pytree of arrays.

  The SHA-256 is that of the whole array's bytes in C order, independent of its
  sharding. With `digest` and several processes this is a collective when a
  leaf is sharded across processes: every process must call it on the same tree.
  """
  return {_path(p): _leaf_record(x, digest)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_changes(saved: dict[str, dict], like: dict[str, dict]) -> list[str]:
  """How the leaves of a saved step differ from the run's (paths, shapes, dtypes)."""
  out = []
  for path in sorted(set(saved) | set(like)):
    if path not in like:
      out.append(f"{path}: in the checkpoint, not in this run's state")
    elif path not in saved:
      out.append(f"{path}: in this run's state, not in the checkpoint")
    else:
      a, b = saved[path], like[path]
      if (a["shape"], a["dtype"]) != (b["shape"], b["dtype"]):
        out.append(f"{path}: checkpoint {a['dtype']}{a['shape']}, run {b['dtype']}{b['shape']}")
  return out


class Checkpointer:
  """Saves a TrainState every `every_steps` steps into `directory` (orbax).

  Keeps the newest `max_to_keep` checkpoints. `restore_verified(like)` returns
  the newest step that restores and verifies, in the structure, dtypes and
  shardings of `like`.
  """

  def __init__(self, directory: str, every_steps: int, max_to_keep: int = 2, *,
               read_only: bool = False):
    if every_steps <= 0:
      raise ValueError(f"checkpoint every_steps={every_steps}; allowed: ≥ 1")
    from jaxlab.train.workdir import ensure_dir

    if read_only:
      self.directory = os.path.abspath(directory)
      if not os.path.isdir(self.directory):
        raise CheckpointError(f"no checkpoint directory {self.directory}")
    else:
      self.directory = ensure_dir(os.path.abspath(directory), "checkpoint directory")
    self.every_steps = every_steps
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    if read_only:  # orbax warns that a read-only manager will not save: we know
      absl_log.setLevel(logging.ERROR)
    try:
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                               read_only=read_only))
    finally:
      absl_log.setLevel(level)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: TrainState) -> None:
    tree = _to_tree(state)
    impls = _key_impls(tree)
    tree = _keys_to_data(tree)
    io.fault_point("checkpoint.save.before")
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        integrity=ocp.args.JsonSave({"format": _FORMAT, "leaves": integrity_record(tree),
                                     "keys": impls})))
    if io.faults_enabled():  # make "after the commit" a well-defined instant
      self.manager.wait_until_finished()
      io.fault_point("checkpoint.save.after")

  def _record(self, step: int) -> dict:
    out = self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))
    rec = out.integrity
    if not isinstance(rec, dict) or rec.get("format") != _FORMAT:
      raise ValueError("no integrity record (written by another version of jaxlab?)")
    return rec

  def _verified(self, step: int, record: dict, abstract: Any = None) -> Any:
    """The step's tree (keys still as data), checked against its checksums."""
    restore = ocp.args.StandardRestore(abstract) if abstract is not None else \
        ocp.args.StandardRestore()
    tree = self.manager.restore(step, args=ocp.args.Composite(state=restore)).state
    got = integrity_record(tree)
    bad = [p for p, r in record["leaves"].items()
           if r.get("sha256") and (p not in got or got[p]["sha256"] != r["sha256"])]
    if bad:
      raise ValueError(f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:4])}")
    return tree

  def restore_raw(self, step: int | None = None) -> tuple[int, dict]:
    """(step, tree) of one verified step without a template: dicts of arrays with
    keys "params", "opt_state" (as saved, not the optimizer's types), "step",
    "key" and, if the run had one, "model_state"."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    if step not in self.all_steps():
      raise CheckpointError(f"no checkpoint step {step} in {self.directory}; the steps there "
                            f"are {self.all_steps()}")
    record = self._record(step)
    tree = self._verified(step, record, self._abstract_local(step))
    return step, _data_to_keys(tree, record.get("keys", {}))

  def _abstract_local(self, step: int) -> Any:
    """The saved tree's shapes and dtypes, each leaf whole on this process's first
    device: a step saved on other devices (N processes, forced host devices)
    restores here too."""
    from etils import epath

    meta = ocp.StandardCheckpointHandler().metadata(epath.Path(self.step_path(step)) / "state")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        getattr(meta, "tree", meta))

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """Restores and verifies one step (default: the newest); raises on any failure."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    tree_like = _to_tree(like)
    impls, want = _key_impls(tree_like), _keys_to_data(tree_like)
    record = self._record(step)
    changed = structure_changes(record["leaves"], integrity_record(want, digest=False))
    if changed:
      raise CheckpointError(
          f"checkpoint {self.step_path(step)} holds a state of another structure than this run's "
          f"(a changed model or optimizer): " + "; ".join(changed[:8])
          + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
          + ". Use another workdir for the new model.")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        want)
    tree = _data_to_keys(self._verified(step, record, abstract), impls)
    return TrainState(tree["params"], tree["opt_state"], tree["step"], tree["key"],
                      tree.get("model_state"))

  def restore_verified(self, like: TrainState) -> TrainState | None:
    """The newest step that restores and verifies; None when there is no step.

    Each failing newer step is reported (path and reason) and moved into
    `<directory>.rejected/`. When no step restores, raises CheckpointError
    naming every step and its error, and moves nothing.
    """
    steps = self.all_steps()
    failures: list[tuple[int, str]] = []
    for step in reversed(steps):
      noise = stdio.StringIO()
      error = None
      try:
        # A failed TensorStore read makes orbax's reader threads print "Event
        # loop is closed" tracebacks to stderr; the failure is reported below.
        with contextlib.redirect_stderr(noise):
          state = self.restore(like, step)
      except Exception as e:  # noqa: BLE001 - any reader error means this step is unusable
        error = e
      try:
        # Several processes: a step failing on any one is unusable for all.
        multihost.agree(error)
      except CheckpointError:
        raise  # a different model, not damage: stop, touch nothing
      except Exception as e:  # noqa: BLE001 - any reader error means this step is unusable
        # TensorStore appends its whole spec to the message: keep the first sentence.
        reason = " ".join(str(e).split("See full TensorStore details")[0].split())[:300]
        failures.append((step, f"{type(e).__name__}: {reason}"))
        continue
      if multihost.is_primary():
        for bad, reason in failures:
          dest = self._set_aside(bad)
          log.warning("checkpoint %s did not restore (%s); moved to %s; resuming from step %d",
                      self.step_path(bad), reason, dest, step)
      if failures:
        multihost.barrier("jaxlab_checkpoint_set_aside")
        self.manager.reload()
      return state
    if failures:
      lines = "\n".join(f"  {self.step_path(s)}: {r}" for s, r in failures)
      raise CheckpointError(f"no checkpoint in {self.directory} restores:\n{lines}\n"
                            "Nothing was moved or deleted; use another workdir to start fresh.")
    return None

  def _set_aside(self, step: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    dest = os.path.join(self.directory + ".rejected", f"{step}.{stamp}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(self.step_path(step), dest)
    return dest

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _find_runs(workdir: str) -> list[str]:
  """Sub-directories of `workdir` that hold a run's checkpoints (studies with arms)."""
  out = []
  for root, dirs, _ in os.walk(workdir):
    if "checkpoints" in dirs:
      out.append(os.path.relpath(root, workdir))
    dirs[:] = [d for d in dirs if d != "checkpoints" and not d.endswith(".rejected")]
  return sorted(out)


def load_state(workdir: str, step: int | None = None) -> tuple[Any, Any]:
  """`(params, model_state)` of a run's workdir, without rebuilding its optimizer.

  Reads `workdir/checkpoints` (the newest step, or `step`), verifies every
  array against its checksum, and returns the parameters and the model's
  carried state (None for a model without one) as saved: nested dicts of
  arrays, ready for `model.apply`. Works on a finished run and on one still
  running (orbax steps appear atomically). A study with arms keeps one run per
  sub-directory: the error lists them.

  >>> params, state = train.load_state("runs/mlp_mnist1d_quick")
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    runs = _find_runs(workdir) if os.path.isdir(workdir) else []
    hint = (f"; runs with checkpoints under it: {runs}" if runs else
            "; it holds no run with checkpoints (was checkpoint_every 0?)")
    raise CheckpointError(f"no checkpoints in {workdir!r}{hint}")
  ckpt = Checkpointer(directory, 1, read_only=True)
  try:
    _, tree = ckpt.restore_raw(step)
  finally:
    ckpt.manager.close()
  return tree["params"], tree.get("model_state")


def load_params(workdir: str, step: int | None = None) -> Any:
  """The parameters of a run's workdir (see :func:`load_state`)."""
  return load_state(workdir, step)[0]
