"""Ten or more SIGKILLs at random instants, then a clean finish: the workdir
equals an uninterrupted run's (parameters, optimizer state, rows, summary).

The kill times are drawn from a fixed seed over the whole life of a run
(start-up, compile, training, checkpoints, the summary and plots, and the
resume of a finished workdir), so the test is repeatable in what it asks and
does not depend on the machine being idle: a slower machine only moves where
the kills land.
"""
from __future__ import annotations

import random
import signal
import subprocess
import time

import faults_common as fc


def test_random_sigkill_loop_resumes_to_the_uninterrupted_run(tmp_path):
  reference = str(tmp_path / "reference")
  out = fc.run(reference)
  assert out.returncode == 0, out.stderr[-3000:]
  # The kill times scale with the length of a run as the killed runs will see it: a second
  # uninterrupted run, whose programs come from the test session's compilation cache
  # (tests/conftest.py) as theirs will. It must equal the first.
  again = str(tmp_path / "again")
  t0 = time.perf_counter()
  out = fc.run(again)
  duration = time.perf_counter() - t0
  assert out.returncode == 0, out.stderr[-3000:]
  fc.assert_same_run(reference, again)

  workdir = str(tmp_path / "run")
  rng = random.Random(20261130)
  kills, finished_between = 0, 0
  while kills < 10:
    proc = subprocess.Popen(fc.command(workdir), cwd=fc.ROOT, env=fc.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
      proc.wait(timeout=rng.uniform(0.3, 1.1) * duration)
      assert proc.returncode == 0, proc.stderr.read()[-3000:]
      finished_between += 1
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills += 1
    finally:
      proc.stderr.close()
  out = fc.run(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  fc.assert_same_run(reference, workdir)
