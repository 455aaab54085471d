"""Verified orbax checkpoints of a TrainState, with resume from the newest good step.

Orbax makes each step atomic (a temporary directory renamed when complete) but
does not check what it reads back: a flipped byte in a data file restores
silently. So every step holds two items, written in one atomic orbax step:
`state` (the arrays, `StandardSave`) and `integrity` (JSON: each leaf's path,
shape, dtype and SHA-256 of its bytes). `restore_verified` tries the steps from
the newest down, skips a step that fails to restore or to verify (naming its
path and the reason), moves it aside into `<directory>.rejected/` (nothing is
deleted) and continues from the newest good step.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxlab.train import io
from jaxlab.train.errors import CheckpointError
from jaxlab.train.step import TrainState

log = logging.getLogger("jaxlab")
_FORMAT = 1


def _to_tree(state: TrainState) -> dict:
  # Typed PRNG keys are stored as their raw uint32 data.
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": jax.random.key_data(state.key)}


def _leaf_record(x: Any, digest: bool) -> dict:
  rec = {"shape": list(np.shape(x)), "dtype": str(np.dtype(x.dtype))}
  if digest:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      rec["sha256"] = None  # multi-process: this process sees only its shards
    else:
      rec["sha256"] = hashlib.sha256(np.ascontiguousarray(jax.device_get(x)).tobytes()).hexdigest()
  return rec


def integrity_record(tree: Any, digest: bool = True) -> dict[str, dict]:
  """`{leaf path: {shape, dtype, sha256}}` of a pytree of arrays."""
  return {jax.tree_util.keystr(p): _leaf_record(x, digest)
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

  def __init__(self, directory: str, every_steps: int, max_to_keep: int = 2):
    if every_steps <= 0:
      raise ValueError(f"checkpoint every_steps={every_steps}; allowed: ≥ 1")
    from jaxlab.train.workdir import ensure_dir

    self.directory = ensure_dir(os.path.abspath(directory), "checkpoint directory")
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: TrainState) -> None:
    tree = _to_tree(state)
    io.fault_point("checkpoint.save.before")
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        integrity=ocp.args.JsonSave({"format": _FORMAT, "leaves": integrity_record(tree)})))
    if io.faults_enabled():  # make "after the commit" a well-defined instant
      self.manager.wait_until_finished()
      io.fault_point("checkpoint.save.after")

  def _record(self, step: int) -> dict[str, dict]:
    out = self.manager.restore(step, args=ocp.args.Composite(integrity=ocp.args.JsonRestore()))
    rec = out.integrity
    if not isinstance(rec, dict) or rec.get("format") != _FORMAT:
      raise ValueError("no integrity record (written by another version of jaxlab?)")
    return rec["leaves"]

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """Restores and verifies one step (default: the newest); raises on any failure."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    want = _to_tree(like)
    record = self._record(step)
    changed = structure_changes(record, integrity_record(want, digest=False))
    if changed:
      raise CheckpointError(
          f"checkpoint {self.step_path(step)} holds a state of another structure than this run's "
          f"(a changed model or optimizer): " + "; ".join(changed[:8])
          + (f"; and {len(changed) - 8} more" if len(changed) > 8 else "")
          + ". Use another workdir for the new model.")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        want)
    tree = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract))).state
    got = integrity_record(tree)
    bad = [p for p, r in record.items() if r.get("sha256") and got[p]["sha256"] != r["sha256"]]
    if bad:
      raise ValueError(f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:4])}")
    key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(like.key))
    return TrainState(tree["params"], tree["opt_state"], tree["step"], key)

  def restore_verified(self, like: TrainState) -> TrainState | None:
    """The newest step that restores and verifies; None when there is no step.

    Each failing newer step is reported (path and reason) and moved into
    `<directory>.rejected/`. When no step restores, raises CheckpointError
    naming every step and its error, and moves nothing.
    """
    steps = self.all_steps()
    failures: list[tuple[int, str]] = []
    for step in reversed(steps):
      try:
        state = self.restore(like, step)
      except CheckpointError:
        raise  # a different model, not damage: stop, touch nothing
      except Exception as e:  # noqa: BLE001 - any reader error means this step is unusable
        # TensorStore appends its whole spec to the message: keep the first sentence.
        reason = " ".join(str(e).split("See full TensorStore details")[0].split())[:300]
        failures.append((step, f"{type(e).__name__}: {reason}"))
        continue
      for bad, reason in failures:
        dest = self._set_aside(bad)
        log.warning("checkpoint %s did not restore (%s); moved to %s; resuming from step %d",
                    self.step_path(bad), reason, dest, step)
      if failures:
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
