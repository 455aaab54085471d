"""Shared pieces of the kill tests: a small mlp_mnist1d run in a subprocess, and
the comparison of a finished workdir with an uninterrupted one."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp

from jaxlab.train import io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 120 steps, a row every 5, a checkpoint every 20 (two kept), evaluation every 40.
ARGS = ["--config=experiments/configs/mlp_mnist1d.py:quick", "--config.train.num_steps=120",
        "--config.train.log_every_steps=5", "--config.train.eval_every_steps=40",
        "--config.train.checkpoint_every_steps=20", "--config.data.num_samples=1000",
        "--config.model.hidden_sizes=(32,32)", "--config.train.batch_size=32",
        "--config.train.progress=False"]
# Content that is not deterministic (timings); everything else must match exactly.
TIMING_KEYS = ("steps_per_sec", "wall_time_s")


def command(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, "-m", "experiments.run", f"--workdir={workdir}", *ARGS, *extra]


def env(fault: str | None = None) -> dict:
  out = dict(os.environ, JAX_PLATFORMS="cpu")
  if "JAXLAB_TEST_KILL_CACHE_DIR" in out:  # the session's cache for runs that get killed
    out["JAX_COMPILATION_CACHE_DIR"] = out["JAXLAB_TEST_KILL_CACHE_DIR"]  # (tests/conftest.py)
  out.pop("JAXLAB_FAULT", None)
  if fault:
    out["JAXLAB_FAULT"] = fault
  return out


def run(workdir: str, fault: str | None = None, *extra: str) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=env(fault), capture_output=True,
                        text=True, timeout=600)


def _strip(row: dict) -> dict:
  return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def final_state(workdir: str) -> tuple[list[int], dict]:
  directory = os.path.join(workdir, "checkpoints")
  with ocp.CheckpointManager(os.path.abspath(directory)) as mgr:
    steps = sorted(mgr.all_steps())
    tree = mgr.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return steps, tree.state


def assert_same_run(reference: str, workdir: str) -> None:
  """The finished `workdir` equals the uninterrupted `reference`, timings aside."""
  ref_rows = [_strip(r) for r in io.read_jsonl(os.path.join(reference, "metrics.jsonl"))]
  rows = [_strip(r) for r in io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
  assert rows == ref_rows
  ref_summary = _strip(io.read_json(os.path.join(reference, "summary.json")))
  assert _strip(io.read_json(os.path.join(workdir, "summary.json"))) == ref_summary
  ref_steps, ref_state = final_state(reference)
  steps, state = final_state(workdir)
  assert steps[-1] == ref_steps[-1]
  flat_ref = dict(_leaves(ref_state))
  flat = dict(_leaves(state))
  assert flat.keys() == flat_ref.keys()
  for path, x in flat.items():  # params, optimizer state, step and key, bit for bit
    np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_ref[path]), err_msg=path)
  assert sorted(os.listdir(os.path.join(workdir, "plots"))) == \
      sorted(os.listdir(os.path.join(reference, "plots")))
  leftovers = [os.path.join(r, f) for r, _, fs in os.walk(workdir) for f in fs
               if f.endswith(".tmp") and "checkpoints" not in r]
  assert not leftovers, leftovers  # a killed writer's temporary file is cleaned up


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}/{k}")
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from _leaves(v, f"{prefix}/{i}")
  else:
    yield prefix, tree
