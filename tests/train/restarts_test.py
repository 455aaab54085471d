"""Best-of-k restarts (jaxlab.train.restarts) against plain train.train runs."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import train
from jaxlab.train import restarts


def _problem():
  # A small tanh regression: candidates started from different inits end at different losses.
  x = jax.random.normal(jax.random.key(1), (32, 3))
  y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))

  def loss_fn(params, batch, key):
    del key
    pred = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
    return jnp.mean((pred - batch["y"]) ** 2), {"mse": jnp.mean((pred - batch["y"]) ** 2)}

  def batches(step):
    i = (step * 8) % 32
    return {"x": x[i:i + 8], "y": y[i:i + 8]}

  def init(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w1": jax.random.normal(k1, (3, 4)) * (0.1 + seed), "w2": jax.random.normal(k2, (4,))}

  def score(params):
    return loss_fn(params, {"x": x, "y": y}, None)[0]

  return loss_fn, batches, init, score


def test_best_of_k_is_the_chosen_init_trained_alone(tmp_path):
  loss_fn, batches, init, score = _problem()
  sched = optax.cosine_decay_schedule(0.05, 12)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
  inits = [init(s) for s in range(3)]
  key = jax.random.key(0)
  wd = str(tmp_path / "run")
  kw = dict(num_steps=12, select_steps=5, score_fn=score, key=key, workdir=wd,
            checkpoint_every=4, log_every=1, lr_schedule=sched, progress=False)
  result, choice = restarts.train_best_of(loss_fn, inits, tx, batches, **kw)

  # The choice is the argmin of the score after 5 updates of each init trained alone.
  alone5 = [train.train(loss_fn, p, tx, batches, num_steps=5, key=key, progress=False)
            for p in inits]
  scores = [float(score(r.state.params)) for r in alone5]
  np.testing.assert_allclose(choice["scores"], scores, rtol=1e-5)
  assert choice["chosen"] == int(np.argmin(scores))
  assert len(set(np.round(scores, 4))) == 3  # the candidates differ: the choice is not vacuous
  with open(os.path.join(wd, "candidates", "choice.json")) as fh:
    assert json.load(fh)["chosen"] == choice["chosen"]

  # The kept run equals the chosen init trained alone for 12 steps (state and metrics rows).
  ref = train.train(loss_fn, inits[choice["chosen"]], tx, batches, num_steps=12, key=key,
                    log_every=1, lr_schedule=sched, progress=False)
  for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(ref.state.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(result.state.step) == 12
  assert [r["step"] for r in result.history] == list(range(1, 13))
  np.testing.assert_allclose([r["loss"] for r in result.history],
                             [r["loss"] for r in ref.history], rtol=1e-5)
  np.testing.assert_allclose(train.load_params(wd)["w1"], ref.state.params["w1"], rtol=1e-5,
                             atol=1e-6)

  # A re-run on the finished workdir, and one whose main checkpoints were lost after the
  # choice (a kill between the stages), give the same result.
  again, c2 = restarts.train_best_of(loss_fn, inits, tx, batches, **kw)
  assert c2 == choice
  shutil.rmtree(os.path.join(wd, "checkpoints"))
  os.remove(os.path.join(wd, "metrics.jsonl"))
  third, _ = restarts.train_best_of(loss_fn, inits, tx, batches, **kw)
  for a, b, c in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(again.state.params),
                     jax.tree.leaves(third.state.params), strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_bad_arguments_name_themselves(tmp_path):
  loss_fn, batches, init, score = _problem()
  tx = optax.adam(1e-2)
  kw = dict(score_fn=score, key=jax.random.key(0), workdir=str(tmp_path), checkpoint_every=2,
            progress=False)
  with pytest.raises(ValueError, match="select_steps=10"):
    restarts.train_best_of(loss_fn, [init(0), init(1)], tx, batches, num_steps=10,
                           select_steps=10, **kw)
  with pytest.raises(ValueError, match="checkpoint_every"):
    restarts.train_best_of(loss_fn, [init(0), init(1)], tx, batches, num_steps=10,
                           select_steps=5, **{**kw, "checkpoint_every": 0})
  with pytest.raises(ValueError, match=r"inits\[1\]"):
    restarts.train_best_of(loss_fn, [init(0), {"w1": jnp.zeros((3, 5)), "w2": jnp.zeros(5)}],
                           tx, batches, num_steps=10, select_steps=5, **kw)
  with pytest.raises(ValueError, match="inits="):
    restarts.train_best_of(loss_fn, [], tx, batches, num_steps=10, select_steps=5, **kw)


def test_batchnorm_and_dropout_model_carries_each_candidates_state(tmp_path):
  # A flax linen model with BatchNorm (state: batch_stats) and dropout (the step key): each
  # candidate carries its own running statistics, and the kept run is the chosen init trained
  # alone with its own state, statistics included.
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      # no bias before BatchNorm: its gradient is rounding noise, which Adam would amplify to
      # ±lr steps whose sign differs between the vmapped candidates and a run alone
      h = nn.Dense(8, use_bias=False)(x)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.8)(h)
      h = nn.Dropout(0.25, deterministic=not train)(nn.relu(h))
      return nn.Dense(1)(h)[:, 0]

  net = Net()
  x = jax.random.normal(jax.random.key(1), (32, 3))
  y = jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))

  def loss_fn(params, batch, key, *, state, train=True):
    pred, upd = net.apply({"params": params, **state}, batch["x"], train,
                          rngs={"dropout": key}, mutable=["batch_stats"])
    return jnp.mean((pred - batch["y"]) ** 2), {"state": dict(upd)}

  def batches(step):
    i = (step * 8) % 32
    return {"x": x[i:i + 8], "y": y[i:i + 8]}

  def score(params, state):
    pred = net.apply({"params": params, **state}, x, False)
    return jnp.mean((pred - y) ** 2)

  variables = [net.init(jax.random.key(10 + s), x[:2], False) for s in range(3)]
  inits = [v["params"] for v in variables]
  states = [{"batch_stats": v["batch_stats"]} for v in variables]
  tx = optax.adam(0.03)
  key = jax.random.key(0)
  wd = str(tmp_path / "bn")
  kw = dict(num_steps=10, select_steps=4, score_fn=score, key=key, workdir=wd,
            checkpoint_every=3, log_every=1, progress=False, model_states=states)
  result, choice = restarts.train_best_of(loss_fn, inits, tx, batches, **kw)

  alone4 = [train.train(loss_fn, p, tx, batches, num_steps=4, key=key, progress=False,
                        model_state=st) for p, st in zip(inits, states, strict=True)]
  scores = [float(score(r.state.params, r.state.model_state)) for r in alone4]
  np.testing.assert_allclose(choice["scores"], scores, rtol=1e-5)
  assert choice["chosen"] == int(np.argmin(scores))
  assert len(set(np.round(scores, 4))) == 3

  c = choice["chosen"]
  ref = train.train(loss_fn, inits[c], tx, batches, num_steps=10, key=key, log_every=1,
                    progress=False, model_state=states[c])
  for a, b in zip(jax.tree.leaves((result.state.params, result.state.model_state)),
                  jax.tree.leaves((ref.state.params, ref.state.model_state)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  moved = jax.tree.leaves(result.state.model_state)[0] - jax.tree.leaves(states[c])[0]
  assert float(jnp.max(jnp.abs(moved))) > 1e-3  # the running statistics did update
  np.testing.assert_allclose([r["loss"] for r in result.history],
                             [r["loss"] for r in ref.history], rtol=1e-5)

  # Resumed after the main checkpoints are lost: the same params and statistics, bit for bit.
  shutil.rmtree(os.path.join(wd, "checkpoints"))
  os.remove(os.path.join(wd, "metrics.jsonl"))
  again, _ = restarts.train_best_of(loss_fn, inits, tx, batches, **kw)
  for a, b in zip(jax.tree.leaves((result.state.params, result.state.model_state)),
                  jax.tree.leaves((again.state.params, again.state.model_state)), strict=True):
    np.testing.assert_array_equal(a, b)

  with pytest.raises(ValueError, match="model_states"):
    restarts.train_best_of(loss_fn, inits, tx, batches, **{**kw, "model_states": states[:2]})
  with pytest.raises(ValueError, match="requires a `state`"):  # a stateful loss, no states
    restarts.train_best_of(loss_fn, inits, tx, batches, **{**kw, "model_states": None,
                                                           "workdir": str(tmp_path / "x")})
