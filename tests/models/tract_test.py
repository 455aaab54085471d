"""TrActDense / TrActConv against nn.Dense / nn.Conv and a float64 numpy closed form.

Reference (Petersen et al. 2024): kernel gradient = (XᵀX/b + λI)⁻¹ Xᵀ∇z, X the
(b, d) rows of the batch (for a conv: the patches, b = batch × positions),
with the patches built here by a numpy loop, independently of lax.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import models
from jaxlab.models import tract

# float32 against float64: the solve's error is about cond(XᵀX/b + λI) · 1e-7;
# the test inputs keep cond below ~100, so 1e-4 relative is a 10x margin.
RTOL = 1e-4


def _grads(module, variables, x, r):
  """Gradients of <module(x), r> w.r.t. params and x: ∇z = r (one jitted call)."""
  def loss(v, x, r):
    return jnp.sum(module.apply(v, x) * r)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x, r)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _tract_ref(x_BxD, g_DxF, lam):
  x = np.asarray(x_BxD, np.float64)
  a = x.T @ x / x.shape[0] + lam * np.eye(x.shape[1])
  return np.linalg.solve(a, np.asarray(g_DxF, np.float64))


@pytest.mark.parametrize("b, d", [(32, 6), (3, 6)])  # d x d solve; b < d: the Woodbury branch
def test_dense_forward_and_gradients(b, d):
  kx, kr, ki = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, d))
  r = jax.random.normal(kr, (b, 4))
  layer, plain = models.TrActDense(4, lam=0.1), nn.Dense(4)
  v = jax.jit(layer.init)(ki, x)
  shape = lambda a: a.shape  # noqa: E731
  assert jax.tree.map(shape, v) == jax.tree.map(shape, jax.eval_shape(plain.init, ki, x))
  np.testing.assert_allclose(layer.apply(v, x), plain.apply(v, x), rtol=1e-6, atol=1e-6)
  (g, gx), (gp, gxp) = _grads(layer, v, x, r), _grads(plain, v, x, r)
  xn, rn = np.asarray(x, np.float64), np.asarray(r, np.float64)
  assert _rel(g["params"]["kernel"], _tract_ref(xn, xn.T @ rn, 0.1)) < RTOL
  np.testing.assert_allclose(gp["params"]["kernel"], xn.T @ rn, rtol=1e-5, atol=1e-5)
  # Bias and input gradients are the ordinary ones.
  np.testing.assert_allclose(g["params"]["bias"], gp["params"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(gx, gxp, rtol=1e-6, atol=1e-6)


def test_dense_leading_axes_count_into_b():
  x = jax.random.normal(jax.random.key(1), (4, 5, 3))
  r = jax.random.normal(jax.random.key(2), (4, 5, 2))
  layer = models.TrActDense(2, lam=0.3)
  v = layer.init(jax.random.key(3), x)
  g, _ = _grads(layer, v, x, r)
  xn, rn = np.asarray(x, np.float64).reshape(20, 3), np.asarray(r, np.float64).reshape(20, 2)
  assert _rel(g["params"]["kernel"], _tract_ref(xn, xn.T @ rn, 0.3)) < RTOL


def _np_patches(x, kh, kw, strides, padding):
  """(N·Ho·Wo, kh·kw·C) patches in the kernel's (kh, kw, C) order, by a loop."""
  n, h, w, c = x.shape
  sh, sw = strides
  if padding == "VALID":
    pads = ((0, 0), (0, 0))
  elif padding == "SAME":  # output ceil(in/stride); the odd pixel goes to the high side
    pads = []
    for size, k, s in ((h, kh, sh), (w, kw, sw)):
      total = max((-(-size // s) - 1) * s + k - size, 0)
      pads.append((total // 2, total - total // 2))
  else:
    pads = padding
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  rows = [xp[i, a * sh:a * sh + kh, bb * sw:bb * sw + kw, :].reshape(-1)
          for i in range(n) for a in range(ho) for bb in range(wo)]
  return np.stack(rows), (n, ho, wo)


@pytest.mark.parametrize("padding, strides", [
    ("SAME", (2, 2)), ("VALID", (2, 1)), (((1, 0), (2, 1)), (1, 2))])
def test_conv_forward_and_gradients(padding, strides):
  kx, kr, ki = jax.random.split(jax.random.key(4), 3)
  x = jax.random.uniform(kx, (3, 7, 6, 2))
  layer = models.TrActConv(5, (3, 2), lam=0.1, strides=strides, padding=padding)
  plain = nn.Conv(5, (3, 2), strides=strides, padding=padding)
  v = jax.jit(layer.init)(ki, x)
  y = jax.jit(layer.apply)(v, x)
  np.testing.assert_allclose(y, plain.apply(v, x), rtol=1e-6, atol=1e-6)
  xn = np.asarray(x, np.float64)
  p_BxD, out_shape = _np_patches(xn, 3, 2, strides, padding)
  w_DxF = np.asarray(v["params"]["kernel"], np.float64).reshape(-1, 5)
  assert y.shape == (*out_shape, 5)
  # The numpy patches reproduce the forward pass.
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5) - np.asarray(v["params"]["bias"]),
                             p_BxD @ w_DxF, rtol=1e-5, atol=1e-5)
  r = jax.random.normal(kr, y.shape)
  (g, gx), (gp, gxp) = _grads(layer, v, x, r), _grads(plain, v, x, r)
  rn = np.asarray(r, np.float64).reshape(-1, 5)
  std = p_BxD.T @ rn
  np.testing.assert_allclose(np.asarray(gp["params"]["kernel"]).reshape(-1, 5), std,
                             rtol=1e-4, atol=1e-5)
  assert _rel(np.asarray(g["params"]["kernel"]).reshape(-1, 5), _tract_ref(p_BxD, std, 0.1)) < RTOL
  np.testing.assert_allclose(g["params"]["bias"], gp["params"]["bias"], rtol=1e-5)
  np.testing.assert_allclose(gx, gxp, rtol=1e-5, atol=1e-6)


def test_conv_one_and_three_spatial_axes():
  for shape, ks in (((4, 9, 3), (3,)), ((2, 4, 4, 3, 2), (2, 2, 2))):
    x = jax.random.normal(jax.random.key(5), shape)
    layer, plain = models.TrActConv(3, ks, padding="VALID"), nn.Conv(3, ks, padding="VALID")
    v = layer.init(jax.random.key(6), x)
    np.testing.assert_allclose(layer.apply(v, x), plain.apply(v, x), rtol=1e-5, atol=1e-5)
    r = jnp.ones_like(layer.apply(v, x))
    g, _ = _grads(layer, v, x, r)
    gp, _ = _grads(plain, v, x, r)
    k = np.asarray(gp["params"]["kernel"])
    # Channel-major patch rows (C, *ks) from lax; kernel rows are (*ks, C).
    p = np.asarray(tract.patches(x, ks, (1,) * len(ks), "VALID"), np.float64)
    perm = (len(ks), *range(len(ks)), len(ks) + 1)
    ref = _tract_ref(p, np.transpose(k, perm).reshape(-1, 3), 0.1)
    got = np.transpose(np.asarray(g["params"]["kernel"]), perm).reshape(-1, 3)
    assert _rel(got, ref) < RTOL


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_large_lambda_is_plain_gradient_over_lambda(kind):
  x = jax.random.uniform(jax.random.key(7), (4, 6, 6, 2))
  layer = (models.TrActDense(3, lam=1e4) if kind == "dense"
           else models.TrActConv(3, (3, 3), lam=1e4))
  plain = nn.Dense(3) if kind == "dense" else nn.Conv(3, (3, 3))
  v = layer.init(jax.random.key(8), x)
  r = jax.random.normal(jax.random.key(9), layer.apply(v, x).shape)
  g, _ = _grads(layer, v, x, r)
  gp, _ = _grads(plain, v, x, r)
  # λ·(XᵀX/b + λI)⁻¹ = I − XᵀX/(bλ) + O(λ⁻²): relative deviation ≤ ‖XᵀX/b‖/λ
  # (inputs in [0, 1): ‖XᵀX/b‖ ≤ d ≤ 18, so ≤ 2e-3).
  assert _rel(1e4 * g["params"]["kernel"], np.asarray(gp["params"]["kernel"], np.float64)) < 3e-3
  # ... and at λ = 0.1 it is a different direction (the test can fail).
  layer_small = layer.clone(lam=0.1)
  g_small, _ = _grads(layer_small, v, x, r)
  a = np.asarray(g_small["params"]["kernel"]).ravel()
  b = np.asarray(gp["params"]["kernel"]).ravel()
  assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) < 0.99


def test_activation_step_does_not_scale_with_contrast():
  # The paper's motivation: with small λ, the first-layer activation change of one
  # step, ΔZ = X ΔW, is the same for inputs X and 0.1 X (≈ b · projection of ∇z);
  # for the plain gradient it shrinks by 0.1² = 0.01.
  x = jax.random.normal(jax.random.key(10), (64, 5))
  r = jax.random.normal(jax.random.key(11), (64, 3))
  v = nn.Dense(3).init(jax.random.key(12), x)

  def delta_z(module, xs):
    g, _ = _grads(module, v, xs, r)
    return np.asarray(xs @ g["params"]["kernel"])

  tract_ratio = (np.linalg.norm(delta_z(models.TrActDense(3, lam=1e-4), 0.1 * x))
                 / np.linalg.norm(delta_z(models.TrActDense(3, lam=1e-4), x)))
  plain_ratio = (np.linalg.norm(delta_z(nn.Dense(3), 0.1 * x))
                 / np.linalg.norm(delta_z(nn.Dense(3), x)))
  assert abs(tract_ratio - 1) < 0.02, tract_ratio   # λ/eig(0.01·XᵀX/b) ≈ 1e-2 at most
  np.testing.assert_allclose(plain_ratio, 0.01, rtol=1e-4)


def test_jit_and_vmap_over_independent_problems():
  # vmap over 3 independent batches: each gets its own (XᵀX/b + λI)⁻¹.
  xs = jax.random.normal(jax.random.key(13), (3, 16, 4))
  rs = jax.random.normal(jax.random.key(14), (3, 16, 2))
  layer = models.TrActDense(2, lam=0.2)
  v = layer.init(jax.random.key(15), xs[0])
  grad_fn = jax.jit(jax.vmap(lambda x, r: _grads(layer, v, x, r)[0]["params"]["kernel"]))
  got = np.asarray(grad_fn(xs, rs))
  for i in range(3):
    xn, rn = np.asarray(xs[i], np.float64), np.asarray(rs[i], np.float64)
    assert _rel(got[i], _tract_ref(xn, xn.T @ rn, 0.2)) < RTOL
  convs = models.TrActConv(2, (2, 2), lam=0.2)
  xi = jax.random.uniform(jax.random.key(16), (3, 2, 5, 5, 1))
  vc = convs.init(jax.random.key(17), xi[0])
  one = jax.grad(lambda p, x: jnp.sum(convs.apply(p, x) ** 2))
  batched = jax.jit(jax.vmap(one, in_axes=(None, 0)))(vc, xi)
  looped = [jax.jit(one)(vc, x) for x in xi]
  for i in range(3):
    # Same float32 math batched or not: equal to rounding (relative to the norm).
    assert _rel(batched["params"]["kernel"][i], np.asarray(looped[i]["params"]["kernel"])) < 1e-5


def test_nnx_layer_through_the_functions():
  from flax import nnx

  class First(nnx.Module):
    def __init__(self, rngs):
      self.kernel = nnx.Param(jax.random.normal(rngs.params(), (4, 3)))

    def __call__(self, x):
      return tract.tract_dense(x, self.kernel[...], 0.1)

  x = jax.random.normal(jax.random.key(18), (10, 4))
  model = First(nnx.Rngs(0))
  g = nnx.grad(lambda m: jnp.sum(m(x)))(model)
  xn = np.asarray(x, np.float64)
  assert _rel(g.kernel[...], _tract_ref(xn, xn.T @ np.ones((10, 3)), 0.1)) < RTOL


@pytest.mark.parametrize("build, match", [
    (lambda: models.TrActDense(3, lam=0.0), r"lam=0.0; allowed: a finite number > 0"),
    (lambda: models.TrActDense(3, lam=float("nan")), r"lam=nan"),
    (lambda: models.TrActConv(3, (3, 3), padding="CIRCULAR"), r"padding='CIRCULAR'.*'SAME'"),
    (lambda: models.TrActConv(3, (3, 3), strides=0), r"strides=0"),
    (lambda: models.TrActConv(3, (3, 3, 3, 3)), r"kernel_size=\(3, 3, 3, 3\); allowed: 1-3"),
    (lambda: models.TrActConv(3, (3,)), r"input of shape \(2, 6, 6, 1\).*1 spatial axes"),
])
def test_bad_input_is_a_value_error(build, match):
  with pytest.raises(ValueError, match=match):
    build().init(jax.random.key(0), jnp.zeros((2, 6, 6, 1)))


def test_mlp_option_preconditions_only_the_input_layer():
  x = jax.random.normal(jax.random.key(19), (32, 6))
  plain, tr = models.mlp(6, (8, 8), 3), models.mlp(6, (8, 8), 3, tract_lam=0.1)
  params = plain.init(jax.random.key(20))
  assert jax.tree.map(jnp.shape, tr.init(jax.random.key(20))) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(tr.apply(params, x)[0], plain.apply(params, x)[0], rtol=1e-6)

  def grad(model):
    return jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x)[0] ** 2)))(params)

  gp, gt = grad(plain), grad(tr)
  xn = np.asarray(x, np.float64)
  assert _rel(gt["dense_0"]["kernel"], _tract_ref(xn, gp["dense_0"]["kernel"], 0.1)) < RTOL
  for name in ("dense_1", "readout"):  # later layers: the ordinary gradient
    np.testing.assert_allclose(gt[name]["kernel"], gp[name]["kernel"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"tract_lam=-1.0; allowed: a finite number > 0"):
    models.mlp(6, (8,), 3, tract_lam=-1.0)


def test_small_cnn_option_keeps_the_parameter_tree():
  x = jax.random.uniform(jax.random.key(21), (8, 8, 8, 1))
  y = jnp.arange(8) % 10
  plain, tr = models.SmallCNN(features=(4, 8)), models.SmallCNN(features=(4, 8), tract_lam=0.1)
  params, state = jax.jit(lambda k: models.linen_init(plain, k, x))(jax.random.key(22))
  assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1", "Dense_0"]
  params_t, _ = jax.eval_shape(lambda k: models.linen_init(tr, k, x), jax.random.key(22))
  shape = lambda a: a.shape  # noqa: E731
  assert jax.tree.map(shape, params_t) == jax.tree.map(shape, params)
  batch = {"x": x, "y": y}

  def grad(module):
    loss = models.linen_classifier_loss(module)
    return jax.jit(jax.grad(lambda p: loss(p, batch, jax.random.key(0), state=state)[0]))(params)

  gp, gt = grad(plain), grad(tr)
  p_BxD = np.asarray(tract.patches(x, (3, 3), (1, 1), "SAME"), np.float64)  # C = 1: (kh, kw) order
  ref = _tract_ref(p_BxD, np.asarray(gp["Conv_0"]["kernel"]).reshape(9, 4), 0.1)
  assert _rel(np.asarray(gt["Conv_0"]["kernel"]).reshape(9, 4), ref) < RTOL
  np.testing.assert_allclose(gt["Conv_1"]["kernel"], gp["Conv_1"]["kernel"], rtol=1e-5, atol=1e-6)
