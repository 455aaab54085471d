"""A run killed at every write boundary resumes to exactly the uninterrupted run.

Each case runs the mlp_mnist1d study (120 steps, a metrics row every 5, a
checkpoint every 20) in a subprocess that SIGKILLs itself at a named write
boundary (`JAXLAB_FAULT`, see `jaxlab.train.io.FAULT_POINTS`), then re-runs it
on the same workdir and compares parameters, optimizer state, every metrics
row and the summary with an uninterrupted run.
"""
from __future__ import annotations

import os
import signal

import faults_common as fc
import pytest

from jaxlab.train import io


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  out = fc.run(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


# (fault point and the pass at which it fires, what is on disk at that instant)
CASES = [
    ("metrics.append.mid:7", "row 35 half written; checkpoint 20 newest"),
    ("metrics.append.after:8", "row 40 written, checkpoint 40 not started"),
    ("checkpoint.save.before:3", "rows up to 60, checkpoint 40 newest"),
    ("checkpoint.save.after:2", "checkpoint 40 committed"),
    ("file.write.mid:1", "config.json half written (first write of the run)"),
    ("file.write.mid:2", "summary.json half written"),
    ("file.write.before_rename:3", "first plot written, not renamed"),
]


@pytest.mark.parametrize("fault", [c[0] for c in CASES], ids=[c[0] for c in CASES])
def test_kill_at_write_boundary_then_resume_equals_uninterrupted(tmp_path, reference, fault):
  workdir = str(tmp_path / "run")
  killed = fc.run(workdir, fault)
  assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode, killed.stderr[-2000:])
  out = fc.run(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  fc.assert_same_run(reference, workdir)


def test_kill_while_resume_rewrites_metrics(tmp_path, reference):
  """The rows after the newest checkpoint are trimmed by an atomic rewrite; a
  kill in the middle of it leaves the old file, and the next resume finishes."""
  workdir = str(tmp_path / "run")
  assert fc.run(workdir, "checkpoint.save.before:3").returncode == -signal.SIGKILL
  rows_before = io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert rows_before[-1]["step"] == 60  # rows beyond checkpoint 40 are on disk
  killed = fc.run(workdir, "metrics.rewrite.mid:1")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert io.read_jsonl(os.path.join(workdir, "metrics.jsonl")) == rows_before
  assert fc.run(workdir).returncode == 0
  fc.assert_same_run(reference, workdir)


def test_fault_points_are_the_documented_ones():
  for fault, _ in CASES:
    assert fault.partition(":")[0] in io.FAULT_POINTS
