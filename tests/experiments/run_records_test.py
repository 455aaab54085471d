"""Run records: config-checked resume, the continue flag, the workdir lock,
verified checkpoints with fallback, torn rows, and one clean `error:` line
(with its own exit code) for every way a workdir or a run can fail."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import run
from jaxlab.train import errors, io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "experiments/configs/mlp_mnist1d.py:quick"
# 40 steps, a row every 5, checkpoints every 10 (steps 30 and 40 kept).
TINY = {"train.num_steps": 40, "train.log_every_steps": 5, "train.eval_every_steps": 20,
        "train.checkpoint_every_steps": 10, "data.num_samples": 600,
        "model.hidden_sizes": (16, 16), "train.batch_size": 32, "train.progress": False}


def _rows(workdir):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"}
          for r in io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _summary(workdir):
  return {k: v for k, v in io.read_json(os.path.join(workdir, "summary.json")).items()
          if k != "wall_time_s"}


def _snapshot(workdir):
  """Every file under workdir with its bytes (to show nothing was written or deleted),
  the lock file aside."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      if f == ".lock":
        continue  # names the last holder's pid
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, workdir)] = fh.read()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  run.run(SPEC, workdir, TINY)
  return workdir


@pytest.fixture
def copy(finished, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(finished, dst)
  return dst


def _cli(*args, env=None):
  cmd = [sys.executable, "-m", "experiments.run", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


def _overrides(d):
  return [f"--config.{k}={v!r}" if not isinstance(v, str) else f"--config.{k}={v}"
          for k, v in d.items()]


CHANGES = [("optimizer.learning_rate", 3e-3), ("seed", 1), ("train.num_steps", 60),
           ("model.hidden_sizes", (32, 16)), ("optimizer.name", "sgd")]


@pytest.mark.parametrize("key,value", CHANGES, ids=[c[0] for c in CHANGES])
def test_changed_config_is_refused_naming_the_keys(copy, key, value):
  before = _snapshot(copy)
  with pytest.raises(errors.ConfigChangedError) as e:
    run.run(SPEC, copy, {**TINY, key: value})
  old = dict(TINY, **{"optimizer.learning_rate": 1e-3, "seed": 0, "optimizer.name": "adam"})[key]
  msg = str(e.value)
  assert f"{key}: {io.to_python(old)!r} -> {io.to_python(value)!r}" in msg, msg
  assert "--allow_config_change" in msg and "another --workdir" in msg
  assert _snapshot(copy) == before  # nothing written, nothing deleted


def test_progress_may_change_on_resume(copy):
  run.run(SPEC, copy, {**TINY, "train.progress": True})
  assert io.read_json(os.path.join(copy, "config.json"))["train"]["progress"] is True


def test_continue_flag_extends_a_run_and_records_the_change(copy):
  old_rows = _rows(copy)
  summary = run.run(SPEC, copy, {**TINY, "train.num_steps": 60}, allow_config_change=True)
  assert summary["num_steps"] == 60
  rows = _rows(copy)
  assert [r["step"] for r in rows] == list(range(5, 65, 5))
  changes = io.read_jsonl(os.path.join(copy, "config_changes.jsonl"))
  assert changes[-1]["changes"] == {"train.num_steps": [40, 60]}
  assert io.read_json(os.path.join(copy, "config.json"))["train"]["num_steps"] == 60
  assert rows[:8] == old_rows  # the first 40 steps are the old run's rows, untouched


def test_continue_flag_with_another_model_stops_on_the_checkpoint_structure(copy):
  before = _snapshot(copy)
  with pytest.raises(errors.CheckpointError) as e:
    run.run(SPEC, copy, {**TINY, "model.hidden_sizes": (32, 16)}, allow_config_change=True)
  assert "params/dense_0/kernel: checkpoint float32[40, 16], run float32[40, 32]" in str(e.value)
  after = _snapshot(copy)
  for name, content in before.items():  # no file was deleted or changed but the config records
    if name not in ("config.json", "config_changes.jsonl"):
      assert after[name] == content, name


def test_second_process_is_refused_naming_the_holder_and_a_stale_lock_is_taken(copy):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jaxlab.train import workdir as w\n"
       "with w.lock(sys.argv[1]):\n  print('locked', flush=True); time.sleep(120)", copy],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.WorkdirBusyError) as e:
      run.run(SPEC, copy, TINY)
    assert f"pid {holder.pid}" in str(e.value)
    out = _cli(f"--config={SPEC}", f"--workdir={copy}", *_overrides(TINY))
    assert out.returncode == errors.WorkdirBusyError.exit_code
    assert out.stderr.strip().splitlines() == [l for l in out.stderr.strip().splitlines()
                                               if l.startswith("error:")][:1]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
  # The holder died without unlocking: its pid is still in the file, the lock is free.
  with open(os.path.join(copy, ".lock")) as f:
    assert f"pid {holder.pid}" in f.read()
  assert run.run(SPEC, copy, TINY)["num_steps"] == 40


def _damage(workdir, step, how):
  """Damages every array-data file of a step (orbax's OCDBT chunks live in .../d/):
  one byte flipped in the middle of each, or each truncated to half."""
  state = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs
           if os.path.basename(r) == "d"]
  assert files
  for path in files:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if how == "flip":
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x01]))
      else:
        f.truncate(size // 2)


def _forge_digest(workdir, step):
  """Makes one array's stored SHA-256 disagree with its data, as a flipped byte
  that the reader decodes without complaint does (deterministically)."""
  path = os.path.join(workdir, "checkpoints", str(step), "integrity", "metadata")
  with open(path) as f:
    record = json.load(f)
  leaf = "params/dense_0/kernel"
  record["leaves"][leaf]["sha256"] = "0" * 64
  with open(path, "w") as f:
    json.dump(record, f)
  return leaf


# The damaged-checkpoint runs go through the command line in a fresh process:
# TensorStore's in-process cache would otherwise serve the bytes this test
# process read earlier from the same-named data files of the copied workdir.
@pytest.mark.parametrize("how", ["flip", "truncate", "digest"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_step(finished, copy, how):
  if how == "digest":
    leaf = _forge_digest(copy, 40)
  else:
    _damage(copy, 40, how)
  rows_before = _rows(copy)
  out = _cli(f"--config={SPEC}", f"--workdir={copy}", *_overrides(TINY))
  assert out.returncode == 0, out.stderr[-3000:]
  warning = [ln for ln in out.stderr.splitlines() if "did not restore" in ln]
  assert len(warning) == 1, out.stderr[-3000:]
  assert os.path.join(copy, "checkpoints", "40") in warning[0]
  assert "resuming from step 30" in warning[0]
  if how == "digest":  # data that reads back without error but is not what was saved
    assert f"checksum mismatch in 1 array(s): {leaf}" in warning[0]
  rejected = os.listdir(os.path.join(copy, "checkpoints.rejected"))
  assert len(rejected) == 1 and rejected[0].startswith("40.")  # kept aside, not deleted
  assert _rows(copy) == rows_before == _rows(finished)
  assert _summary(copy) == _summary(finished)
  ref = _final_params(finished)
  for path, x in _final_params(copy).items():
    np.testing.assert_array_equal(x, ref[path], err_msg=path)


def _final_params(workdir):
  """The newest checkpoint's params, read with orbax directly."""
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mgr:
    tree = mgr.restore(mgr.latest_step(),
                       args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


def test_nothing_restores_is_a_clear_error_and_nothing_moves(copy):
  for step in (30, 40):
    _damage(copy, step, "truncate")
  before = _snapshot(copy)
  out = _cli(f"--config={SPEC}", f"--workdir={copy}", *_overrides(TINY))
  assert out.returncode == errors.CheckpointError.exit_code, out.stderr[-3000:]
  # orbax's reader threads may still print "Event loop is closed" tracebacks
  # around it after a failed read (not ours to silence); the error is one line.
  errors_printed = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
  assert len(errors_printed) == 1 and errors_printed[0].startswith("error: no checkpoint in ")
  for step in (30, 40):
    assert os.path.join(copy, "checkpoints", str(step)) + ":" in out.stderr
  assert _snapshot(copy) == before


def test_torn_last_metrics_row_is_dropped_on_resume(finished, copy):
  with open(os.path.join(copy, "metrics.jsonl"), "a") as f:
    f.write('{"step": 45, "loss": 0.')
  run.run(SPEC, copy, TINY)
  assert _rows(copy) == _rows(finished)
  with open(os.path.join(copy, "metrics.jsonl"), "rb") as f:
    assert f.read().endswith(b"}\n")


def test_damaged_row_in_the_middle_names_the_file_and_line(copy):
  path = os.path.join(copy, "metrics.jsonl")
  with open(path) as f:
    lines = f.readlines()
  lines[2] = lines[2][:10] + "\n"
  with open(path, "w") as f:
    f.writelines(lines)
  with pytest.raises(errors.WorkdirError, match="metrics.jsonl, line 3"):
    run.run(SPEC, copy, TINY)


def _one_error_line(out, code):
  assert out.returncode == code, (out.returncode, out.stderr[-2000:])
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  return lines[0]


def test_workdir_errors_are_one_line_with_their_exit_codes(tmp_path, copy):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  line = _one_error_line(_cli(f"--config={SPEC}", f"--workdir={a_file}", *_overrides(TINY)),
                         errors.WorkdirError.exit_code)
  assert str(a_file) in line and "not a directory" in line
  # checkpoints/ replaced by a file: the error names it and metrics.jsonl survives.
  shutil.rmtree(os.path.join(copy, "checkpoints"))
  with open(os.path.join(copy, "checkpoints"), "w") as f:
    f.write("not a directory")
  before = _snapshot(copy)
  out = _cli(f"--config={SPEC}", f"--workdir={copy}", *_overrides(TINY))
  line = _one_error_line(out, errors.WorkdirError.exit_code)
  assert "checkpoints" in line
  assert _snapshot(copy) == before


def test_config_change_and_non_finite_are_one_line_with_their_exit_codes(copy, tmp_path):
  out = _cli(f"--config={SPEC}", f"--workdir={copy}", *_overrides({**TINY, "seed": 3}))
  assert out.returncode == errors.ConfigChangedError.exit_code
  assert out.stderr.startswith("error: ") and "seed: 0 -> 3" in out.stderr
  nan_dir = str(tmp_path / "nan")
  out = _cli(f"--config={SPEC}", f"--workdir={nan_dir}",
             *_overrides({**TINY, "train.inject_nan_at_step": 23}))
  line = _one_error_line(out, 7)
  assert "step 23" in line and "step 20" in line  # the bad step and the checkpoint kept
  assert os.path.isdir(os.path.join(nan_dir, "checkpoints", "20"))


def test_default_workdir_is_derived_from_the_config_name():
  assert run.default_workdir("experiments/configs/mlp_mnist1d.py:quick") == \
      os.path.join("runs", "mlp_mnist1d_quick")
  assert run.default_workdir("experiments/configs/icl_linreg.py") == \
      os.path.join("runs", "icl_linreg")
  assert run.default_workdir("icl_linreg:quick,d=10") == os.path.join("runs", "icl_linreg_quick_d=10")


def test_lock_file_with_a_dead_pid_is_taken_over(copy):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(os.path.join(copy, ".lock"), "w") as f:
    f.write(f"pid {dead.pid} on this host\n")
  assert run.run(SPEC, copy, TINY)["num_steps"] == 40


def test_inject_nan_at_step_zero_is_a_config_error_before_anything_is_written(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"'train.inject_nan_at_step': 0; allowed: -1"):
    run.run(SPEC, workdir, {**TINY, "train.inject_nan_at_step": 0})
  assert not os.path.exists(workdir)


def test_an_optimizer_the_generic_loop_cannot_drive_is_a_config_error(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"'optimizer.name'.*needs margins="):
    run.run(SPEC, workdir, {**TINY, "optimizer.name": "normalized_gd"})
  assert not os.path.exists(workdir)
