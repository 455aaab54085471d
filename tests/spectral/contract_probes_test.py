"""The spectral probes read the model contract: a BatchNorm/dropout CNN (linen and nnx) at
fixed state, batches in every accepted form, one compile reused at new params and data.

Every reference is a dense float64 `jax.hessian` over the flattened params of the same
loss at the same state and mode, diagonalized by `numpy.linalg.eigvalsh`.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

from jaxlab import data
from jaxlab.models import cnn, contract
from jaxlab.spectral import callbacks
from jaxlab.spectral import operators as ops
from jaxlab.spectral.eigen import top_eigenpairs
from jaxlab.spectral.trace import trace

FEATURES = (4, 4)  # 254 parameters: the dense Hessian is 254 x 254


@functools.lru_cache(maxsize=None)
def _digits(n=96):
  d = load_digits()
  x = (d.images[:n, :, :, None] / 16.0).astype(np.float32)
  return x, d.target[:n].astype(np.int32)


def _batch(lo, hi):
  x, y = _digits()
  return {"x": jnp.asarray(x[lo:hi]), "y": jnp.asarray(y[lo:hi])}


@functools.lru_cache(maxsize=None)
def _linen():
  """(loss_fn, params, state, trained_state): state is the initial BatchNorm statistics,
  trained_state that after two train-mode passes (so the two differ)."""
  model = cnn.SmallCNN(features=FEATURES, dropout_rate=0.5)
  x, _ = _digits()
  params, state = cnn.linen_init(model, jax.random.key(0), jnp.asarray(x[:2]))
  loss_fn = cnn.linen_classifier_loss(model)
  s = state
  for i in range(2):
    _, _, s = contract.call(loss_fn, params, _batch(0, 64), key=jax.random.key(i), state=s,
                            train=True)
  return loss_fn, params, state, s


def _to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                      if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def _dense_hessian(loss_fn, params, batch, *, state=None, key=None, train=False, x64=True):
  """(n, n) Hessian of the contract loss in params only (state and key fixed), in float64
  unless x64=False (dropout masks are drawn from uniforms of the default float dtype, so a
  train-mode reference with dropout must stay in float32 to see the same masks)."""
  with jax.enable_x64(x64):
    cast = _to64 if x64 else (lambda t: t)
    p64, s64, b64 = cast(params), cast(state), cast(batch)
    flat, unravel = ravel_pytree(p64)
    f = lambda w: contract.call(loss_fn, unravel(w), b64, key=key, state=s64, train=train)[0]
    return np.asarray(jax.jit(jax.hessian(f))(flat), np.float64)


def _top(H, k=3):
  return np.sort(np.linalg.eigvalsh(H))[::-1][:k]


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree_util.tree_leaves(tree)])


def _apply_dense(mv, params, seed=0, num=4):
  """(M P, P) for random probe columns P: equality on random vectors certifies M."""
  n = _flat(params).size
  P = np.random.default_rng(seed).standard_normal((n, num)).astype(np.float32)
  unravel = ravel_pytree(params)[1]
  cols = [_flat(mv(unravel(jnp.asarray(P[:, i])))) for i in range(num)]
  return np.stack(cols, 1), P.astype(np.float64)


# float32 products and a float32 Lanczos basis: the top Ritz values of a 254-dimensional
# operator after 60 steps are exact up to rounding, ~eps * ||H|| * sqrt(steps) ~ 1e-6 ||H||;
# 2e-5 ||H|| leaves room for the spread of float32 sums.
EIG_TOL = 2e-5


def _check_top3(mv, params, H):
  pairs = top_eigenpairs(mv, params, k=3, key=jax.random.key(1))
  ref = _top(H)
  np.testing.assert_allclose(pairs.eigenvalues, ref, rtol=0, atol=EIG_TOL * abs(ref[0]))
  # eigenvectors live in params' pytree only: no batch_stats leaves
  assert jax.tree_util.tree_structure(jax.tree.map(lambda a: a[0], pairs.eigenvectors)) == \
      jax.tree_util.tree_structure(params)
  return pairs


def test_linen_cnn_top3_at_fixed_statistics_matches_dense():
  loss_fn, params, state, trained = _linen()
  batch = _batch(0, 64)
  H = _dense_hessian(loss_fn, params, batch, state=trained)
  _check_top3(ops.hessian_vp(loss_fn, params, batch, state=trained), params, H)
  # A different state is a different operator, each equal to its dense reference.
  H0 = _dense_hessian(loss_fn, params, batch, state=state)
  assert abs(_top(H0)[0] - _top(H)[0]) > 100 * EIG_TOL * abs(_top(H)[0])
  _check_top3(ops.hessian_vp(loss_fn, params, batch, state=state), params, H0)


def test_linen_cnn_train_mode_uses_batch_statistics_without_differentiating_state():
  loss_fn, params, _, trained = _linen()
  batch, key = _batch(0, 64), jax.random.key(7)
  H = _dense_hessian(loss_fn, params, batch, state=trained, key=key, train=True, x64=False)
  mv = ops.hessian_vp(loss_fn, params, batch, state=trained, key=key, train=True)
  MP, P = _apply_dense(mv, params)
  # float32 forward-over-reverse against a float32 dense Hessian: ~1e-6 relative
  np.testing.assert_allclose(MP, H @ P, rtol=0, atol=1e-5 * np.abs(H @ P).max())
  # batch statistics differ from the running ones: a different operator than eval mode
  H_eval = _dense_hessian(loss_fn, params, batch, state=trained)
  assert np.abs(H - H_eval).max() > 1e-3 * np.abs(H).max()


def test_variables_dict_as_params_is_refused():
  loss_fn, params, state, _ = _linen()
  with pytest.raises(ValueError, match=r"batch_stats.*state="):
    ops.hessian_vp(loss_fn, {"params": params, **state}, _batch(0, 8))
  two_arg = lambda p, b: jnp.sum(jax.tree.leaves(p)[0])
  with pytest.raises(ValueError, match="takes no `state`"):
    ops.hessian_vp(two_arg, params, _batch(0, 8), state=state)


class NnxCNN(nnx.Module):
  def __init__(self, rngs):
    self.c1 = nnx.Conv(1, 4, (3, 3), padding="SAME", rngs=rngs)
    self.b1 = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (3, 3), padding="SAME", rngs=rngs)
    self.b2 = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(4, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.b1(self.c1(x)))
    x = nnx.relu(self.b2(self.c2(x)))
    return self.out(self.drop(x.mean(axis=(1, 2))))


def test_nnx_cnn_top3_matches_dense():
  model = NnxCNN(nnx.Rngs(0))
  graphdef, params, state = nnx.split(model, nnx.Param, ...)
  loss_fn = cnn.nnx_classifier_loss(graphdef)
  _, _, state = contract.call(loss_fn, params, _batch(0, 64), state=state, train=True)
  batch = _batch(0, 64)
  H = _dense_hessian(loss_fn, params, batch, state=state)
  _check_top3(ops.hessian_vp(loss_fn, params, batch, state=state), params, H)
  # the whole nnx state (BatchStat, rng variables) as params is refused
  _, everything = nnx.split(model)
  with pytest.raises(ValueError, match="non-parameter variables"):
    ops.hessian_vp(loss_fn, everything, batch)


def test_batches_forms_and_example_weighting():
  """Batches of 40, 16 and 8 examples: every form gives the dense Hessian of all 64."""
  loss_fn, params, _, trained = _linen()
  H = _dense_hessian(loss_fn, params, _batch(0, 64), state=trained)
  parts = [_batch(0, 40), _batch(40, 56), _batch(56, 64)]
  # unweighted averaging of the batch Hessians would be wrong by far more than rounding
  Hs = [_dense_hessian(loss_fn, params, b, state=trained) for b in parts]
  assert np.abs(np.mean(Hs, axis=0) - H).max() > 1e-2 * np.abs(H).max()
  for form in (parts, tuple(parts), lambda: iter(parts)):
    mv = ops.hessian_vp(loss_fn, params, form, state=trained)
    assert isinstance(mv, ops.DataSetOperator)
    MP, P = _apply_dense(mv, params)
    np.testing.assert_allclose(MP, H @ P, rtol=0, atol=1e-5 * np.abs(H @ P).max())


def test_data_batches_equal_the_list_of_the_same_batches():
  loss_fn, params, _, trained = _linen()
  x, y = _digits()
  src = data.Batches({"x": x, "y": y}, batch_size=24, seed=3)
  mv = ops.hessian_vp(loss_fn, params, src, state=trained, num_batches=3)
  ref = ops.hessian_vp(loss_fn, params, [src(s) for s in range(3)], state=trained)
  v = jax.tree.map(lambda a: jnp.full(a.shape, 0.1, a.dtype), params)
  np.testing.assert_allclose(_flat(mv(v)), _flat(ref(v)), rtol=0, atol=1e-6 * np.abs(_flat(ref(v))).max())
  with pytest.raises(ValueError, match=r"num_batches=.*steps_per_epoch|one epoch is num_batches=4"):
    ops.hessian_vp(loss_fn, params, src, state=trained)
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError, match="num_batches is"):
      ops.hessian_vp(loss_fn, params, src, state=trained, num_batches=bad)
  with pytest.raises(ValueError, match="takes an argument"):
    ops.hessian_vp(loss_fn, params, data.full_batch({"x": x, "y": y}), state=trained)
  full = ops.hessian_vp(loss_fn, params, data.full_batch({"x": x[:8], "y": y[:8]}), state=trained,
                        num_batches=1)
  assert isinstance(full, ops.DataSetOperator)
  with pytest.raises(ValueError, match="not a step -> batch function"):
    ops.hessian_vp(loss_fn, params, [src(0)], state=trained, num_batches=2)


def test_tuple_rule_and_batch_leaves():
  x = jnp.ones((6, 3))
  y = jnp.zeros((6,), jnp.int32)
  assert ops._classify((x, y), None)[0] == "one"
  assert ops._classify(((x, x), y), None)[0] == "one"  # mixed: one batch with nested inputs
  assert ops._classify({"x": x, "y": y}, None)[0] == "one"
  assert ops._classify(((x, y), (x[:2], y[:2])), None)[0] == "many"
  assert ops._classify([(x, y)], None)[0] == "many"
  with pytest.raises(ValueError, match="ambiguous"):
    ops._classify(({"x": x}, (x, y)), None)
  # a dropout key and a scalar ride along in a batch
  assert ops.batch_size({"x": x, "key": jax.random.key(0), "t": jnp.float32(1.0)}) == 6
  with pytest.raises(ValueError, match="only scalar"):
    ops.batch_size({"key": jax.random.key(0)})
  with pytest.raises(ValueError, match="key="):
    ops.batch_size({"x": x, "key": jax.random.PRNGKey(0)})


def test_key_in_batch_and_aux_returning_loss():
  """A loss reading its dropout key from the batch, returning (loss, aux), in train mode."""
  def loss_fn(p, b):
    mask = jax.random.bernoulli(b["key"], 0.5, b["x"].shape)
    z = (b["x"] * mask) @ p["w"]
    return jnp.mean((z - b["y"]) ** 2), {"z": z.mean()}

  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
  batch = {"x": jnp.asarray(rng.standard_normal((12, 5)), jnp.float32),
           "y": jnp.asarray(rng.standard_normal(12), jnp.float32), "key": jax.random.key(3)}
  mv = ops.hessian_vp(loss_fn, params, batch)
  H = _dense_hessian(loss_fn, params, batch, x64=False)  # the same float32 dropout mask
  MP, P = _apply_dense(mv, params)
  np.testing.assert_allclose(MP, H @ P, rtol=0, atol=1e-5 * np.abs(H @ P).max())


def test_ggn_with_state_and_dict_batches_matches_dense():
  """ggn_vp: a contract model apply_fn(params, x, *, state, train) -> (logits, aux) on dict
  batches of unequal sizes equals (1/N) Σ J_iᵀ (diag p_i − p_i p_iᵀ) J_i of all N examples."""
  model = cnn.SmallCNN(features=FEATURES)
  _, params, _, trained = _linen()

  def apply_fn(p, x, *, state, train=False):
    return model.apply({"params": p, **state}, x, train=False), {"unused": 0.0}

  xent = lambda z, y: jax.nn.logsumexp(z) - z[y]
  parts = [_batch(0, 20), _batch(20, 32)]
  mv = ops.ggn_vp(apply_fn, xent, params, parts, state=trained)
  with jax.enable_x64(True):
    p64, s64 = _to64(params), _to64(trained)
    x = _to64(_batch(0, 32))["x"]
    flat, unravel = ravel_pytree(p64)
    J = np.asarray(jax.jacobian(lambda w: apply_fn(unravel(w), x, state=s64)[0])(flat))
    z = np.asarray(apply_fn(p64, x, state=s64)[0])
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  G = sum(J[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ J[i] for i in range(32)) / 32
  MP, P = _apply_dense(mv, params)
  np.testing.assert_allclose(MP, G @ P, rtol=0, atol=1e-5 * np.abs(G @ P).max())
  with pytest.raises(ValueError, match="keys 'x' and 'y'"):
    ops.ggn_vp(apply_fn, xent, params, {"x": x}, state=trained)


def test_second_call_at_new_params_and_data_compiles_nothing(compiles):
  """One compile per (loss, shapes, num_iters): a probe at new params, a new batch and a new
  state of the same shapes reuses every compiled program (Lanczos, trace, the product)."""
  loss_fn, params, state, trained = _linen()
  b1, b2 = _batch(0, 32), _batch(32, 64)
  params2 = jax.tree.map(lambda a: a * 1.01, params)
  key = jax.random.key(0)
  for p, b, s in ((params, b1, state), (params, [b1, b2], state)):
    top_eigenpairs(ops.hessian_vp(loss_fn, p, b, state=s), p, k=1, key=key, num_iters=12)
    trace(ops.hessian_vp(loss_fn, p, b, state=s), p, 6, key)
  jax.block_until_ready((params2, trained))
  compiles.clear()
  for p, b, s in ((params2, b2, trained), (params2, [b2, b1], trained)):
    top_eigenpairs(ops.hessian_vp(loss_fn, p, b, state=s), p, k=1, key=key, num_iters=12)
    trace(ops.hessian_vp(loss_fn, p, b, state=s), p, 6, key)
  assert compiles == []


def test_restricted_contract_loss_keeps_its_form():
  loss_fn, params, _, trained = _linen()
  f, sub = ops.restrict_to_subtree(loss_fn, params, "Dense_0")
  assert contract.loss_spec(f) == contract.loss_spec(loss_fn)
  batch = _batch(0, 32)
  mv = ops.hessian_vp(f, sub, batch, state=trained)
  H = _dense_hessian(loss_fn, params, batch, state=trained)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  sizes = np.cumsum([0] + [a.size for _, a in leaves])
  idx = np.concatenate([np.arange(sizes[i], sizes[i + 1]) for i, (path, _) in enumerate(leaves)
                        if "Dense_0" in jax.tree_util.keystr(path)])
  Hs = H[np.ix_(idx, idx)]
  v = np.random.default_rng(0).standard_normal(idx.size).astype(np.float32)
  hv = _flat(mv(ravel_pytree(sub)[1](jnp.asarray(v))))
  np.testing.assert_allclose(hv, Hs @ v, rtol=0, atol=1e-5 * np.abs(Hs @ v).max())



class _TrainState(NamedTuple):
  params: Any
  model_state: Any


def test_sharpness_callback_reads_the_train_states_model_state():
  loss_fn, params, _, trained = _linen()
  batch = _batch(0, 64)
  hook = callbacks.sharpness_callback(loss_fn, batch, every_steps=1, num_iters=60)
  lam = hook(0, _TrainState(params, trained))["sharpness"]
  ref = _top(_dense_hessian(loss_fn, params, batch, state=trained), 1)[0]
  assert abs(lam - ref) <= EIG_TOL * abs(ref)
  # a loss without state ignores the train state's model_state
  plain = lambda p, b: contract.call(loss_fn, p, b, state=trained, train=False)[0]
  hook2 = callbacks.sharpness_callback(plain, batch, every_steps=1, num_iters=60)
  assert abs(hook2(0, _TrainState(params, trained))["sharpness"] - ref) <= EIG_TOL * abs(ref)


def test_training_form_loss_is_a_probe_loss():
  """The README's training loss `loss_fn(params, batch, key) -> (loss, metrics)` goes into
  hessian_vp unchanged (eval mode: a fixed key, metrics ignored)."""
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)}
  batch = (jnp.asarray(rng.standard_normal((10, 4)), jnp.float32),
           jnp.asarray(rng.integers(0, 3, 10)))

  def train_loss(p, b, key):
    del key
    z = b[0] @ p["w"]
    loss = jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, b[1][:, None], 1)[:, 0])
    return loss, {"accuracy": jnp.mean(z.argmax(1) == b[1])}

  H = _dense_hessian(train_loss, params, batch)
  MP, P = _apply_dense(ops.hessian_vp(train_loss, params, batch), params)
  np.testing.assert_allclose(MP, H @ P, rtol=0, atol=1e-5 * np.abs(H @ P).max())
