"""Empirical NTK/NNGP of jaxlab and flax models: the model contract (state, (y, aux)),
trace_axes, batching, "auto", the Monte Carlo NNGP and GP prediction with user kernels."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

from jaxlab import models, ntk
from jaxlab.ntk import empirical


@functools.lru_cache(maxsize=None)
def _cnn(num_classes=3):
  module = models.SmallCNN(features=(4, 8), num_classes=num_classes)
  x1 = jax.random.normal(jax.random.key(1), (7, 8, 8, 1))
  x2 = jax.random.normal(jax.random.key(2), (5, 8, 8, 1))
  params, state = models.linen_init(module, jax.random.key(0), x1)
  # Running statistics away from their init values (mean 0, var 1), so a probe
  # that ignored the state (or used batch statistics) would fail.
  state = jax.tree_util.tree_map(
      lambda a: a + 0.5 * jax.random.uniform(jax.random.key(3), a.shape), state)

  def apply(p, x, *, state):
    return module.apply({"params": p, **state}, x, train=False)

  return apply, params, state, x1, x2


@functools.lru_cache(maxsize=None)
def _cnn_dense_ntk():
  """Independent reference: jax.jacobian over the flattened params, J1 J2^T (N1, N2, O, O)."""
  apply, params, state, x1, x2 = _cnn()
  flat, unravel = ravel_pytree(params)
  jac = jax.jit(jax.jacobian(lambda f, x: apply(unravel(f), x, state=state)))
  j1 = np.asarray(jac(flat, x1), np.float64)
  j2 = np.asarray(jac(flat, x2), np.float64)
  return np.einsum("iop,jqp->ijoq", j1, j2)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "auto"])
def test_small_cnn_eval_mode_matches_dense_jacobian(method):
  apply, params, state, x1, x2 = _cnn()
  ref = _cnn_dense_ntk()
  scale = np.abs(ref).max()
  assert np.abs(ref[:, :, 0, 1]).max() > 1e-2 * scale  # outputs are coupled: full != trace
  full = ntk.empirical_ntk(apply, params, x1, x2, state=state, method=method, trace_axes=())
  assert full.shape == (7, 5, 3, 3)
  # float32 sums over ~1,000 params of products of O(1) terms: 1e-5 of the scale.
  np.testing.assert_allclose(full, ref, rtol=0, atol=1e-5 * scale)
  tr = ntk.empirical_ntk(apply, params, x1, x2, state=state, method=method)
  assert tr.shape == (7, 5)
  np.testing.assert_allclose(tr, np.einsum("ijoo->ij", ref) / 3, rtol=0, atol=1e-5 * scale)
  # The state is read: the kernel at init-time batch_stats is a different one.
  _, init_state = models.linen_init(models.SmallCNN(features=(4, 8), num_classes=3),
                                    jax.random.key(0), x1)
  other = ntk.empirical_ntk(apply, params, x1, x2, state=init_state, method=method)
  assert np.abs(np.asarray(other) - np.asarray(tr)).max() > 1e-2 * scale


def test_apply_returning_y_aux_and_the_train_keyword():
  model = models.mlp(4, (16,), 3)
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 4))
  y_only = lambda p, x: model.apply(p, x)[0]
  want = ntk.empirical_ntk(y_only, params, x, trace_axes=())
  # models.mlp's apply returns (y, {"hidden": ...}): the NTK is of y.
  np.testing.assert_allclose(ntk.empirical_ntk(model.apply, params, x, trace_axes=()), want,
                             rtol=1e-6, atol=1e-6)
  seen = []

  def with_train(p, x, train=True):
    seen.append(train)
    return model.apply(p, x)

  np.testing.assert_allclose(ntk.empirical_ntk(with_train, params, x, trace_axes=()), want,
                             rtol=1e-6, atol=1e-6)
  assert seen and not any(seen)  # called at eval mode
  with pytest.raises(ValueError, match="tuple of 3; allowed"):
    ntk.empirical_ntk(lambda p, x: (y_only(p, x), 0, 0), params, x)
  with pytest.raises(ValueError, match=r"shape \(\d+, 3, 1\); allowed: \(N, O\) or \(N,\)"):
    ntk.empirical_ntk(lambda p, x: y_only(p, x)[..., None], params, x)
  with pytest.raises(ValueError, match="takes no `state` argument"):
    ntk.empirical_ntk(y_only, params, x, state={"batch_stats": {}})


@pytest.mark.parametrize("method", ["jacobian", "ntvp"])
def test_batching_gives_the_unbatched_kernel(method):
  apply, params, state, x1, x2 = _cnn()
  for trace_axes in ((), (-1,)):
    kw = dict(state=state, method=method, trace_axes=trace_axes)
    for a, b in ((x1, x2), (x1, None)):  # None: the mirrored upper blocks
      whole = np.asarray(ntk.empirical_ntk(apply, params, a, b, **kw))
      got = ntk.empirical_ntk(apply, params, a, b, batch_size=3, **kw)  # 7, 5 rows: ragged
      assert got.shape == whole.shape
      # The same products summed in another order: float32 rounding only.
      np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_auto_times_both_methods_once_and_caches_the_faster():
  cnn_apply, params, state, x1, x2 = _cnn()
  apply = lambda p, x, *, state: cnn_apply(p, x, state=state)  # a new object: not yet measured
  before = dict(empirical.auto_choices())
  got = ntk.empirical_ntk(apply, params, x1, x2, state=state)
  new = {k: v for k, v in empirical.auto_choices().items() if k not in before}
  assert len(new) == 1
  (choice, times), = new.values()
  assert set(times) == {"jacobian", "ntvp"} and choice == min(times, key=times.get)
  np.testing.assert_allclose(got, ntk.empirical_ntk(apply, params, x1, x2, state=state,
                                                    method=choice), rtol=1e-6, atol=1e-6)
  ntk.empirical_ntk(apply, params, x1, x2, state=state)
  assert len(empirical.auto_choices()) == len(before) + 1  # the second call measures nothing
  # Under jit the params are tracers: "auto" times zeros of their shapes instead.
  jitted = jax.jit(lambda p, s: ntk.empirical_ntk(apply, p, x1, None, state=s, batch_size=4))
  np.testing.assert_allclose(jitted(params, state),
                             ntk.empirical_ntk(apply, params, x1, state=state, method="jacobian"),
                             rtol=1e-5, atol=1e-6)


def test_nngp_monte_carlo_matches_fc_kernels():
  x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
  depth, sw, sb, width, draws, outputs = 2, 1.4, 0.3, 256, 400, 4
  model = models.mlp(5, (width,) * depth, outputs, parametrization="ntk", weight_std=sw,
                     bias_std=sb)
  got = np.asarray(ntk.empirical_nngp(model.init, model.apply, x, num_samples=draws,
                                      key=jax.random.key(0), batch_size=4), np.float64)
  want = np.asarray(ntk.fc_kernels(x, depth=depth, weight_std=sw, bias_std=sb,
                                   dtype=jnp.float64).nngp)
  d = np.diag(want)
  # Standard error of a Gaussian second moment over draws x independent outputs,
  # sqrt((K_ii K_jj + K_ij^2) / (S O)); 4 of them, plus 2% of the scale for the
  # O(1/width) finite-width bias of the NNGP.
  se = np.sqrt((np.outer(d, d) + want**2) / (draws * outputs))
  assert np.all(np.abs(got - want) <= 4 * se + 0.02 * np.sqrt(np.outer(d, d))), \
      np.max(np.abs(got - want) / se)
  # The wrong kernel fails: the NTK is ~2x larger here.
  ntk_k = np.asarray(ntk.fc_kernels(x, depth=depth, weight_std=sw, bias_std=sb,
                                    dtype=jnp.float64).ntk)
  assert np.abs(got - ntk_k).max() > 10 * se.max()


def test_nngp_full_output_axes_cross_inputs_and_state():
  apply, _, _, x1, x2 = _cnn(num_classes=2)
  module = models.SmallCNN(features=(4, 8), num_classes=2)
  init = lambda k: models.linen_init(module, k, x1[:1])  # (params, state)
  key = jax.random.key(5)
  full = ntk.empirical_nngp(init, apply, x1, x2, num_samples=6, key=key, trace_axes=(),
                            sample_chunk=4)  # 6 draws in chunks of 4: a padded chunk
  assert full.shape == (7, 5, 2, 2)
  # Independent reference: the draws one by one, in numpy.
  ref = np.zeros((7, 5, 2, 2))
  one = jax.jit(lambda k: (lambda p, s: (apply(p, x1, state=s), apply(p, x2, state=s)))(*init(k)))
  for k in jax.random.split(key, 6):
    y1, y2 = one(k)
    ref += np.einsum("io,jq->ijoq", y1, y2) / 6
  np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-6)
  tr = ntk.empirical_nngp(init, apply, x1, x2, num_samples=6, key=key, batch_size=3)
  np.testing.assert_allclose(tr, np.einsum("ijoo->ij", ref) / 2, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="num_samples=0: allowed an int >= 1"):
    ntk.empirical_nngp(init, apply, x1, num_samples=0, key=key)
  with pytest.raises(ValueError, match="init_fn"):
    ntk.empirical_nngp(None, apply, x1, num_samples=2, key=key)


def _linear():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 8)).astype(np.float32)
  y = rng.standard_normal((6, 2)).astype(np.float32)
  xs = rng.standard_normal((3, 8)).astype(np.float32)
  params = {"w": jnp.zeros((8, 2)), "b": jnp.zeros(2)}  # f_0 = 0: the GP mean is the network
  apply = lambda p, x: x @ p["w"] + p["b"][None, :]
  return x, y, xs, params, apply


def test_gp_predict_with_empirical_ntk_of_a_linear_model_is_kernel_regression():
  x, y, xs, params, apply = _linear()
  k_tr = ntk.empirical_ntk(apply, params, x)
  k_st = ntk.empirical_ntk(apply, params, xs, x)
  x64, xs64 = x.astype(np.float64), xs.astype(np.float64)
  # Closed form in numpy: the linear model's NTK is <x, x'> + 1 for each output.
  k_np, ks_np = x64 @ x64.T + 1, xs64 @ x64.T + 1
  np.testing.assert_allclose(k_tr, k_np, rtol=1e-5)
  gp = ntk.gp_predict(k_tr, k_st, k_tr, k_st, ntk.empirical_ntk(apply, params, xs), y)
  # float32 kernels, condition number ~1e2: 1e-4 relative.
  np.testing.assert_allclose(gp.mean, ks_np @ np.linalg.solve(k_np, y), rtol=1e-4, atol=1e-4)
  # Finite time, gradient flow: A = K_s K^-1 (I - expm(-eta K t)).
  lr, t = 0.01, 7.0
  gp_t = ntk.gp_predict(k_tr, k_st, k_tr, k_st, ntk.empirical_ntk(apply, params, xs), y, t=t,
                        learning_rate=lr)
  a = ks_np @ np.linalg.solve(k_np, np.eye(6) - scipy.linalg.expm(-lr * t * k_np))
  np.testing.assert_allclose(gp_t.mean, a @ y, rtol=1e-4, atol=1e-5)


def test_kernel_gp_with_empirical_ntk_equals_trained_linear_model():
  # A linear model is its own linearization: t steps of GD on 1/2 ||f(X) - Y||^2
  # from f_0 = 0 give exactly the discrete-GD GP mean with its empirical NTK.
  x, y, xs, params, apply = _linear()
  lr, steps = 0.01, 25
  w, b = np.zeros((8, 2)), np.zeros(2)
  for _ in range(steps):
    r = x @ w + b - y
    w, b = w - lr * x.T @ r, b - lr * r.sum(0)
  kernel_fn = lambda a, c: (ntk.empirical_ntk(apply, params, a, c),) * 2  # (nngp, ntk)
  gp = ntk.kernel_gp(kernel_fn, x, y, xs, t=steps, learning_rate=lr, discrete=True)
  np.testing.assert_allclose(gp.mean, xs @ w + b, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="kernel_fn returned"):
    ntk.kernel_gp(lambda a, c: a @ c.T, x, y, xs)
