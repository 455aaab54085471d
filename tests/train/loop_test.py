"""Train loop: resume after a crash, NaN guard, sharding, metrics, no recompiles."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jaxlab import train
from jaxlab.train import io

sys.path.insert(0, os.path.dirname(__file__))
import tiny_run  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "tiny_run.py")


def _subprocess(tmp_path, *args):
  out = tmp_path / f"out_{len(list(tmp_path.iterdir()))}.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, SCRIPT, str(out), *map(str, args)], env=env,
                        capture_output=True, text=True, timeout=300)
  return proc, (json.loads(out.read_text()) if out.exists() else None)


def test_resume_after_crash_is_bit_identical(tmp_path):
  workdir = tmp_path / "crashed"
  proc, _ = _subprocess(tmp_path, "--workdir", workdir, "--exit-at", 13)
  assert proc.returncode == 17, proc.stderr  # it really died mid-run
  ckpt = train.Checkpointer(str(workdir / "checkpoints"), 5)
  # Saves are async: the step-10 save may or may not have finished before the crash.
  assert ckpt.latest_step() in (5, 10)
  ckpt.close()
  resumed, resumed_leaves = tiny_run.run(str(workdir))
  _, straight_leaves = tiny_run.run(str(tmp_path / "straight"))
  for a, b in zip(resumed_leaves, straight_leaves, strict=True):
    np.testing.assert_array_equal(a, b)  # bit-identical on CPU
  rows = io.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 31))  # no duplicated or lost rows


@pytest.mark.parametrize("bad_step", [11, 12])  # between log steps (found at 12) and on one
def test_nan_stops_run_names_step_and_keeps_checkpoint(tmp_path, bad_step):
  with pytest.raises(train.NonFiniteError,
                     match=rf"step {bad_step}\b.*loss=nan.*checkpoint is step 10"):
    tiny_run.run(str(tmp_path), inject_nan_at_step=bad_step, log_every=4)
  ckpt = train.Checkpointer(str(tmp_path / "checkpoints"), 5)
  assert ckpt.latest_step() == 10
  like, _ = tiny_run.run(None, num_steps=1)
  state = ckpt.restore(like.state)
  ckpt.close()
  assert int(state.step) == 10
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_four_devices_match_one_device(tmp_path):
  _, one = _subprocess(tmp_path, "--devices", 1)
  _, four = _subprocess(tmp_path, "--devices", 4)
  assert one["device_count"] == 1 and four["device_count"] == 4
  # Float32 reductions are split differently over 4 shards: rounding-level drift only.
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)
  for a, b in zip(four["params"], one["params"], strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batch_not_divisible_by_devices_is_a_value_error(tmp_path):
  _, out = _subprocess(tmp_path, "--devices", 4, "--batch-size", 30)
  assert out["device_count"] == 4
  assert "batch_size=30" in out["error"] and "multiple of 4" in out["error"]


def test_metrics_rows_eval_and_hooks(tmp_path):
  class Probe:
    every_steps = 10

    def __call__(self, step, state):
      return {"probe_step": step, "probe_state_step": int(state.step)}

  calls = []

  def eval_fn(params):
    calls.append(1)
    return {"eval_metric": 1.5}

  params = {"w": np.ones((3,), np.float32)}
  batch_fn = lambda step: {"x": np.full((4, 3), step, np.float32)}
  loss_fn = lambda p, b, k: ((b["x"] @ p["w"]).mean() ** 2 * 1e-3, {"aux": p["w"].sum()})
  sched = optax.linear_schedule(0.1, 0.0, 20)
  result = train.train(loss_fn, params, optax.sgd(sched), batch_fn, num_steps=20,
                       key=jax.random.key(0), workdir=str(tmp_path), log_every=5,
                       eval_every=10, eval_fn=eval_fn, hooks=(Probe(),), lr_schedule=sched,
                       progress=False)
  rows = io.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert rows == result.history
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  for key in ("loss", "aux", "grad_norm", "param_norm", "update_norm", "learning_rate"):
    assert all(key in r for r in rows), key
  np.testing.assert_allclose([r["learning_rate"] for r in rows],
                             [sched(s - 1) for s in (5, 10, 15, 20)], rtol=1e-6)
  assert len(calls) == 2 and "eval_metric" in rows[1] and "eval_metric" not in rows[0]
  assert rows[1]["probe_step"] == 10 and rows[1]["probe_state_step"] == 10
  # update norm of plain SGD is lr × grad norm.
  for r in rows:
    np.testing.assert_allclose(r["update_norm"], r["learning_rate"] * r["grad_norm"], rtol=1e-5)


def test_train_step_compiles_once():
  params = {"w": np.ones((3,), np.float32)}
  tx = optax.adam(1e-2)
  loss_fn = lambda p, b, k: (((b["x"] @ p["w"]) ** 2).mean(), {})
  step = train.make_train_step(loss_fn, tx)
  state = jax.device_put(train.init_state(params, tx, jax.random.key(0)))
  for i in range(3):
    state, _ = step(state, jax.device_put({"x": np.full((4, 3), i, np.float32)}))
  assert step._cache_size() == 1


def test_loop_compiles_the_same_for_3_and_30_steps(compiles):
  def count(num_steps):
    compiles.clear()
    loss_fn = lambda p, b, k: (((b["x"] @ p["w"]) ** 2).mean(), {})
    train.train(loss_fn, {"w": np.ones((3,), np.float32)}, optax.adam(1e-2),
                lambda s: {"x": np.full((4, 3), s, np.float32)}, num_steps=num_steps,
                key=jax.random.key(0), log_every=1, progress=False)
    return len(compiles)

  count(2)  # warm the caches of helpers that run once
  assert count(30) == count(3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_steps=0), "num_steps=0"),
    (dict(num_steps=5, log_every=-1), "log_every=-1"),
    (dict(num_steps=5, checkpoint_every=2), "needs a workdir"),
])
def test_bad_loop_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.train(lambda p, b, k: (p["w"].sum(), {}), {"w": np.ones(2, np.float32)},
                optax.sgd(0.1), lambda s: {"x": np.ones((2, 1))}, key=jax.random.key(0),
                progress=False, **kwargs)


def test_hook_that_updates_state_sets_injected_learning_rate():
  class SetLR:
    every_steps = 5
    updates_state = True

    def __call__(self, step, state):
      hp = dict(state.opt_state.hyperparams)
      hp["learning_rate"] = jax.numpy.asarray(0.01 * step, hp["learning_rate"].dtype)
      return {"lr_set": 0.01 * step}, state._replace(
          opt_state=state.opt_state._replace(hyperparams=hp))

  params = {"w": np.ones((3,), np.float32)}
  batch_fn = lambda step: {"x": np.full((4, 3), 1.0 + step, np.float32)}
  loss_fn = lambda p, b, k: ((b["x"] @ p["w"]).mean() ** 2 * 1e-3, {})
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)
  result = train.train(loss_fn, params, tx, batch_fn, num_steps=15, key=jax.random.key(0),
                       log_every=1, hooks=(SetLR(),), progress=False)
  rows = result.history
  # Steps 1-5 ran at 0.5; the hook after step 5 set 0.05 for steps 6-10, after 10 set 0.1.
  for r in rows:
    lr = 0.5 if r["step"] <= 5 else 0.01 * 5 * ((r["step"] - 1) // 5)
    np.testing.assert_allclose(r["update_norm"], lr * r["grad_norm"], rtol=1e-5)
  assert rows[4]["lr_set"] == pytest.approx(0.05) and "lr_set" not in rows[5]
  np.testing.assert_allclose(float(result.state.opt_state.hyperparams["learning_rate"]), 0.15,
                             rtol=1e-6)
  # The hook's state (placed like the loop's) reuses the one compiled step.
  assert train.loop._train_step(loss_fn, tx, None, None)._cache_size() == 1


@pytest.mark.parametrize("ret, match", [
    (lambda s: {"x": 1.0}, "must return"),
    (lambda s: ({}, s._replace(step=s.step.astype(np.float32))), "same shape and dtype"),
    (lambda s: ({}, s._replace(params={"v": s.params["w"]})), "structure"),
])
def test_state_hook_bad_return_is_a_value_error(ret, match):
  class Bad:
    every_steps = 2
    updates_state = True

    def __call__(self, step, state):
      return ret(state)

  with pytest.raises(ValueError, match=match):
    train.train(lambda p, b, k: ((p["w"] ** 2).sum(), {}), {"w": np.ones(2, np.float32)},
                optax.sgd(0.1), lambda s: {"x": np.ones((2, 1))}, num_steps=4,
                key=jax.random.key(0), hooks=(Bad(),), progress=False)
