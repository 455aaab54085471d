"""The model contract in training: a flax CNN with BatchNorm and dropout (linen
and nnx) trains with `train.train`, its running statistics change, a crashed
run resumes bit-identically, and `load_state` reads params and statistics back
without the optimizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from jaxlab import data, models, train

NUM_STEPS = 30


@pytest.fixture(scope="module")
def digits():
  d = load_digits()
  x = (d.images[:512, :, :, None] / 16.0).astype(np.float32)
  return {"x": x, "y": d.target[:512].astype(np.int32)}


class _Crash:
  """A hook that raises at one step, as a crash would (after the checkpoint before it)."""

  every_steps = 10

  def __init__(self, at):
    self.at = at

  def __call__(self, step, state):
    if step == self.at:
      raise RuntimeError(f"crash at step {step}")
    return {}


def _leaves(tree):
  def host(x):  # an nnx state carries typed rng keys: compare their data
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)
  return [host(x) for x in jax.tree.leaves(tree)]


def _assert_equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _linen_setup(digits):
  module = models.SmallCNN(features=(8, 8), dropout_rate=0.2)
  params, state = models.linen_init(module, jax.random.key(0), digits["x"][:2])
  return models.linen_classifier_loss(module), params, state, module


def _nnx_setup(digits):
  class CNN(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)
      self.out = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(self.drop(nnx.relu(self.bn(self.conv(x))).mean((1, 2))))

  graphdef, params, state = nnx.split(CNN(nnx.Rngs(0, dropout=1)), nnx.Param, ...)
  return models.nnx_classifier_loss(graphdef), params, state, graphdef


def _batch_stats(state):
  """The running mean/var leaves of a linen or nnx state (not rng counters or keys)."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return [np.asarray(x) for p, x in flat
          if any(s in jax.tree_util.keystr(p) for s in ("mean", "var"))]


@pytest.mark.parametrize("setup", [_linen_setup, _nnx_setup], ids=["linen", "nnx"])
def test_cnn_with_batchnorm_and_dropout_trains_and_resumes_bit_identically(
    digits, tmp_path, setup):
  loss_fn, params, state, _ = setup(digits)
  batches = data.Batches(digits, 64, seed=1)
  evaluated = []

  def eval_fn(p, s):
    evaluated.append(s)
    loss, metrics, _ = models.contract.call(loss_fn, p, digits, state=s, train=False)
    return {"eval_loss": loss, **{f"eval_{k}": v for k, v in metrics.items()}}

  kw = dict(num_steps=NUM_STEPS, key=jax.random.key(2), log_every=5, checkpoint_every=5,
            eval_every=10, eval_fn=eval_fn, progress=False, model_state=state)
  straight = train.train(loss_fn, params, optax.adam(3e-3), batches,
                         workdir=str(tmp_path / "straight"), **kw)
  # The running statistics moved; the loss fell; eval saw the carried state.
  before, after = _batch_stats(state), _batch_stats(straight.state.model_state)
  assert before and all(np.abs(a - b).max() > 1e-3 for a, b in zip(after, before, strict=True))
  assert straight.history[-1]["loss"] < straight.history[0]["loss"]
  assert evaluated and jax.tree.structure(evaluated[-1]) == jax.tree.structure(state)

  crashed = str(tmp_path / "crashed")
  with pytest.raises(RuntimeError, match="crash at step 20"):
    train.train(loss_fn, params, optax.adam(3e-3), batches, workdir=crashed,
                hooks=(_Crash(20),), **kw)
  resumed = train.train(loss_fn, params, optax.adam(3e-3), batches, workdir=crashed, **kw)
  _assert_equal_trees(resumed.state.params, straight.state.params)
  _assert_equal_trees(resumed.state.model_state, straight.state.model_state)
  _assert_equal_trees(resumed.state.opt_state, straight.state.opt_state)
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]
  assert strip(resumed.history) == strip(straight.history)

  loaded_params, loaded_state = train.load_state(str(tmp_path / "straight"))
  for x, y in zip(_leaves(loaded_params), _leaves(straight.state.params), strict=True):
    np.testing.assert_array_equal(x, y)
  assert [np.asarray(x) for x in _batch_stats(loaded_state)] == [] or all(
      np.array_equal(x, y) for x, y in zip(_batch_stats(loaded_state), after, strict=True))


def test_dropout_uses_the_step_key_and_eval_mode_is_deterministic(digits):
  loss_fn, params, state, _ = _linen_setup(digits)
  call = models.contract.call
  a = call(loss_fn, params, digits, key=jax.random.key(1), state=state, train=True)[0]
  b = call(loss_fn, params, digits, key=jax.random.key(2), state=state, train=True)[0]
  assert float(a) != float(b)  # dropout masks differ
  e1 = call(loss_fn, params, digits, key=jax.random.key(1), state=state, train=False)
  e2 = call(loss_fn, params, digits, key=jax.random.key(2), state=state, train=False)
  assert float(e1[0]) == float(e2[0])
  _assert_equal_trees(e1[2], state)  # eval mode leaves the state as it was


def test_a_state_with_a_loss_that_cannot_take_it_is_refused_before_compiling(digits, compiles):
  params = {"w": jnp.zeros((64, 10))}

  def loss_fn(p, batch, key):
    logits = batch["x"].reshape(len(batch["x"]), -1) @ p["w"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

  batches, key, state = data.Batches(digits, 32, seed=0), jax.random.key(0), {"m": jnp.zeros(3)}
  before = len(compiles)
  with pytest.raises(ValueError, match="takes no `state` argument"):
    train.train(loss_fn, params, optax.sgd(0.1), batches, num_steps=2, key=key,
                progress=False, model_state={"batch_stats": state})
  assert len(compiles) == before


def test_a_loss_that_needs_a_state_without_one_is_refused_before_compiling(digits, compiles):
  # A user's loss whose `state` is a required keyword: without model_state it used to fail
  # inside the trace with "missing 1 required keyword-only argument: 'state'".
  _, params, state, module = _linen_setup(digits)

  def loss_fn(p, batch, key, *, state, train=True):
    logits, new = module.apply({"params": p, **state}, batch["x"], train=train,
                               rngs={"dropout": key}, mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), \
        {"state": dict(new)}

  batches, key = data.Batches(digits, 32, seed=0), jax.random.key(0)
  before = len(compiles)
  with pytest.raises(ValueError, match="requires a `state` argument.*model_state"):
    train.train(loss_fn, params, optax.sgd(0.1), batches, num_steps=2, key=key, progress=False)
  assert len(compiles) == before
  # with the state it trains
  train.train(loss_fn, params, optax.sgd(0.1), batches, num_steps=2, key=key, progress=False,
              model_state=state)


def test_load_state_names_the_runs_under_a_study_workdir(tmp_path, digits):
  loss_fn, params, state, _ = _linen_setup(digits)
  train.train(loss_fn, params, optax.sgd(0.1), data.Batches(digits, 64, seed=0), num_steps=2,
              key=jax.random.key(0), workdir=str(tmp_path / "arm_a"), checkpoint_every=1,
              progress=False, model_state=state)
  with pytest.raises(train.CheckpointError, match=r"arm_a"):
    train.load_params(str(tmp_path))
  with pytest.raises(train.CheckpointError, match=r"step 7.*\[1, 2\]"):
    train.load_params(str(tmp_path / "arm_a"), step=7)
