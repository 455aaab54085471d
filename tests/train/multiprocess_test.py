"""Multi-process runs on one machine: 2 processes with 2 forced host devices each
(CPU collectives over gloo) against 1 process with 4, through `experiments.run`.

One test drives two launches of tests/train/multiprocess_worker.py:
  A. the 1-process reference (mlp_mnist1d and a short icl_linreg) beside the
     2-process job: the same two runs, then a third mlp run whose process 1
     SIGKILLs itself after its second checkpoint; process 0 must then stop by
     itself (no hang);
  B. both processes restarted on the killed workdir (it resumes), a checkpoint
     of an array sharded across the processes, and a run with a NaN injected
     (both processes stop with exit code 7).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import run
from jaxlab.train import Checkpointer, io, multihost

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "multiprocess_worker.py")
MLP = ["--config=experiments/configs/mlp_mnist1d.py:quick", "--config.train.num_steps=30",
       "--config.train.eval_every_steps=15", "--config.train.checkpoint_every_steps=10",
       "--config.train.log_every_steps=5", "--config.train.progress=False",
       "--config.data.num_samples=600", "--config.model.hidden_sizes=(32,)"]
ICL = ["--config=experiments/configs/icl_linreg.py:quick", "--config.task.dim=3",
       "--config.task.n_points=6", "--config.model.num_layers=2", "--config.model.num_heads=2",
       "--config.model.width=16", "--config.arms.noiseless=20", "--config.arms.noisy=0",
       "--config.arms.ill_conditioned=0", "--config.train.log_every_steps=5",
       "--config.train.checkpoint_every_steps=10", "--config.train.progress=False",
       "--config.train.batch_size=16", "--config.optimizer.warmup_steps=5",
       "--config.eval.num_prompts=64", "--config.eval.probe_prompts=64",
       "--config.eval.newton_steps=(0, 1)", "--config.eval.gd_steps=(0, 1)",
       "--config.eval.weight_contexts=()", "--config.train.candidates=1"]
TIMING_KEYS = ("steps_per_sec", "wall_time_s", "train_seconds")
# The 2-process all-reduce adds the per-device gradients in another order than
# the 1-process one: float32 rounding, amplified a little by 30 Adam steps.
RTOL, ATOL = 1e-5, 1e-6


def _gloo_missing() -> str | None:
  try:
    from jax._src.lib import _jax
  except ImportError as e:
    return f"jaxlib internals changed ({e}); cannot tell whether gloo is built in"
  if not hasattr(_jax, "make_gloo_tcp_collectives"):
    return "this jaxlib has no gloo CPU collectives (make_gloo_tcp_collectives)"
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(spec: dict, tmp, name: str, num_processes: int, devices: int) -> list:
  path = tmp / f"{name}.json"
  path.write_text(json.dumps(spec))
  # The launches share a persistent compilation cache: the restarted processes
  # reuse what the first ones compiled (the same programs, so the same numbers).
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("JAXLAB_FAULT", None)
  procs = []
  port = _free_port()
  for i in range(num_processes):
    flags = [] if num_processes == 1 else [
        f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
        f"--process_id={i}", "--heartbeat_timeout_seconds=10"]
    log = open(tmp / f"{name}_{i}.log", "w")  # noqa: SIM115 - closed in _wait
    procs.append((subprocess.Popen([sys.executable, WORKER, str(path), *flags], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs: list, deadline: float) -> list[int]:
  codes = []
  for p, log in procs:
    try:
      codes.append(p.wait(timeout=max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      raise
    finally:
      log.close()
  return codes


def _log(tmp, name: str) -> str:
  return (tmp / f"{name}.log").read_text()


def _rows(workdir) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def _numbers(tree, prefix=""):
  """{path: value} of the numeric leaves of a JSON tree, timings left out."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k not in TIMING_KEYS:
        out.update(_numbers(v, f"{prefix}/{k}"))
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      out.update(_numbers(v, f"{prefix}/{i}"))
  else:
    out[prefix] = tree
  return out


def _assert_close(ref, got, what):
  a, b = _numbers(ref), _numbers(got)
  assert a.keys() == b.keys(), what
  for k in a:
    if isinstance(a[k], float) or isinstance(b[k], float):
      np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}{k}")
    else:
      assert b[k] == a[k], f"{what}{k}: {b[k]!r} != {a[k]!r}"


def _final_state(workdir) -> dict:
  """{leaf path: numpy array} of the newest checkpoint, keys as their data."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 1, read_only=True)
  try:
    step, tree = ckpt.restore_raw()
  finally:
    ckpt.manager.close()
  out = {"step": np.asarray(step)}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    out[jax.tree_util.keystr(path)] = np.asarray(x)
  return out


def test_two_processes_match_one_resume_after_a_kill_and_stop_together(tmp_path):
  reason = _gloo_missing()
  if reason:
    pytest.skip(reason)
  # A guard against a hang only (the test takes ~N s on an idle 2-core machine).
  deadline = time.time() + 900
  ref, mp = tmp_path / "ref", tmp_path / "mp"
  # A: the reference and the 2-process job side by side.
  ref_procs = _launch({"report": str(tmp_path), "runs": [
      {"argv": [*MLP, f"--workdir={ref / 'mlp'}"]},
      {"argv": [*ICL, f"--workdir={ref / 'icl'}"]}]}, tmp_path, "ref", 1, 4)
  (tmp_path / "mp_report").mkdir()
  mp_procs = _launch({"report": str(tmp_path / "mp_report"), "runs": [
      {"argv": [*MLP, f"--workdir={mp / 'mlp'}"]},
      {"argv": [*ICL, f"--workdir={mp / 'icl'}"]},
      {"argv": [*MLP, f"--workdir={mp / 'killed'}"], "fault": "checkpoint.save.after:2",
       "fault_process": 1}]}, tmp_path, "a", 2, 2)
  assert _wait(ref_procs, deadline) == [0], _log(tmp_path, "ref_0")
  codes = _wait(mp_procs, deadline)
  logs = _log(tmp_path, "a_0") + _log(tmp_path, "a_1")
  assert codes[1] == -9, logs  # the fault: SIGKILL after the step-20 checkpoint
  assert codes[0] != 0, logs  # process 0 stopped by itself, without its peer
  killed = mp / "killed"
  assert sorted(os.listdir(killed / "checkpoints"))[:2] == ["10", "20"]
  assert not (killed / "checkpoints" / "30").exists()
  inode_20 = os.stat(killed / "checkpoints" / "20").st_ino

  # 2 processes = 1 process with the same 4 devices, to float32 tolerance.
  for name in ("mlp", "icl/noiseless"):
    r, m = _rows(ref / name), _rows(mp / name)
    assert [x["step"] for x in m] == [x["step"] for x in r]
    _assert_close(r, m, f"{name}/metrics.jsonl")
  for name in ("mlp", "icl"):
    _assert_close(io.read_json(str(ref / name / "summary.json")),
                  io.read_json(str(mp / name / "summary.json")), f"{name}/summary.json")
  assert (mp / "icl" / "plots" / "error_curves.png").exists()
  assert (mp / "mlp" / "plots" / "loss.png").exists()

  # Only process 0 wrote the records; process 1 only its lock file and its
  # checkpoint shards' metadata.
  writes_1 = json.loads((tmp_path / "mp_report" / "writes_1.json").read_text())
  other = [p for p in writes_1 if not (p.endswith("/.lock.1") or "/checkpoints/" in p
                                       or p.startswith(str(tmp_path / "mp_report")))]
  assert other == [], other
  writes_0 = json.loads((tmp_path / "mp_report" / "writes_0.json").read_text())
  for f in ("mlp/metrics.jsonl", "mlp/summary.json", "mlp/config.json", "mlp/plots/loss.png",
            "icl/noiseless/metrics.jsonl", "icl/summary.json", "icl/noiseless/eval.json"):
    assert str(mp / f) in writes_0, f

  # B: restart both on the killed workdir, then a sharded checkpoint, then a NaN run.
  procs = _launch({"report": str(tmp_path / "mp_report"), "runs": [
      {"argv": [*MLP, f"--workdir={killed}"]},
      {"sharded_checkpoint": str(tmp_path / "sharded")},
      {"argv": [*MLP, f"--workdir={mp / 'nan'}", "--config.train.inject_nan_at_step=25"]}]},
      tmp_path, "b", 2, 2)
  codes = _wait(procs, deadline)
  logs = _log(tmp_path, "b_0") + _log(tmp_path, "b_1")
  assert codes == [7, 7], logs  # both stopped at the non-finite step, neither hung
  assert logs.count("non-finite value at step 25") == 2, logs
  assert logs.count("sharded checkpoint ok") == 2, logs

  # The resumed run equals the uninterrupted one bit for bit, from step 20's checkpoint.
  assert os.stat(killed / "checkpoints" / "20").st_ino == inode_20
  assert _rows(killed) == _rows(mp / "mlp")
  strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
  assert strip(io.read_json(str(killed / "summary.json"))) == \
      strip(io.read_json(str(mp / "mlp" / "summary.json")))
  want, got = _final_state(mp / "mlp"), _final_state(killed)
  assert got.keys() == want.keys()
  for k in want:  # params, optimizer state, step and key, bit for bit
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # A checkpoint written by 2 processes, its array split across them, reads
  # and verifies (whole-array checksums) in this 1-device process.
  ckpt = Checkpointer(str(tmp_path / "sharded"), 1, read_only=True)
  try:
    record = ckpt._record(5)
    step, tree = ckpt.restore_raw()
  finally:
    ckpt.manager.close()
  assert all(r["sha256"] for r in record["leaves"].values()), record
  np.testing.assert_array_equal(np.asarray(tree["params"]["w"]),
                                np.arange(24, dtype=np.float32).reshape(8, 3) / 7)


@pytest.mark.parametrize("argv, match", [
    (["--num_processes=2"], r"--coordinator_address: missing"),
    (["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
     r"--process_id: 2; allowed: an integer in \[0, 1\]"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
     r"--coordinator_address: 'localhost'; allowed: HOST:PORT"),
    (["--coordinator_address=localhost:1234", "--num_processes=0", "--process_id=0"],
     r"--num_processes: 0; allowed: an integer ≥ 1"),
])
def test_bad_distributed_flags_are_refused_before_anything_starts(tmp_path, argv, match):
  with pytest.raises(ValueError, match=match):
    run.main([f"--config={MLP[0].split('=', 1)[1]}", f"--workdir={tmp_path}", *argv])
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("environ, cluster", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "slurm"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://h:1", "OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "h0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, "tpu"),
])
def test_launcher_detection(environ, cluster):
  assert multihost.detected_cluster(environ) == cluster


def test_one_process_agrees_by_raising_its_own_error():
  multihost.agree(None)
  with pytest.raises(KeyError, match="x"):
    multihost.agree(KeyError("x"))


def test_readme_scaling_out_commands_parse(tmp_path, monkeypatch):
  """The launches of the README's "Scaling out" pass the launcher's checks: one
  process, N local devices, N processes on one machine (the launch the test
  above makes), several hosts, the FSDP example and the bfloat16 example (one process)."""
  text = open(os.path.join(ROOT, "README.md")).read().split("## Scaling out")[1]
  text = text.split("\n## ")[0]
  commands = re.findall(r"python -m experiments\.run (.+)", text)
  assert len(commands) == 6, commands
  seen = []
  monkeypatch.setattr(multihost, "initialize", lambda *a, **k: seen.append(a))
  monkeypatch.setattr(run, "run", lambda *a, **k: {})
  for command in commands:
    argv = command.rstrip(" &").replace("$i", "1").replace("HOST0", "10.0.0.1").replace("=N", "=4")
    argv = re.sub(r"--workdir=\S+", f"--workdir={tmp_path}", argv.replace("=k", "=3")).split()
    run.main(argv)
  assert seen == [(None, None, None), (None, None, None), ("localhost:12355", 2, 1),
                  ("10.0.0.1:12355", 4, 3), (None, None, None), (None, None, None)]
