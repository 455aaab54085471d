"""hessian_vp / ggn_vp with compute_dtype="bfloat16" against the dense float64 Hessian and GGN.

A bfloat16 product is a float32 product of rounded operands, rounded again: each
rounding errs by at most u/2 = 2^-9 relative (u = 2^-8, bfloat16's 8 significant
bits). Entry by entry the error of ``Hv`` has no useful relative bound (entries
cancel), so the tests bound it in norm, relative to the operator's scale:
``‖Hv_bf16 − Hv‖ ≤ c · u · ‖H‖₂ ‖v‖``.
"""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.models import mlp, precision
from jaxlab.spectral import ggn_vp, hessian_vp
from jaxlab.train import recipes

U = precision.BF16_EPS  # 2^-8


def _problem():
  model = mlp(6, (8,), 3, activation="tanh")
  params = model.init(jax.random.key(0))
  kx, ky = jax.random.split(jax.random.key(1))
  batch = {"x": jax.random.normal(kx, (32, 6)), "y": jax.random.randint(ky, (32,), 0, 3)}
  return model, params, batch


def _dense64(model, params, batch, kind):
  """The dense float64 Hessian (or GGN) of the mean cross-entropy, by jax.hessian."""
  with jax.enable_x64(True):
    flat, unravel = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda a: np.asarray(a, np.float64), params))
    x = jnp.asarray(np.asarray(batch["x"], np.float64))
    y = jnp.asarray(batch["y"])
    if kind == "hvp":
      def loss(w):
        logits, _ = model.apply(unravel(w), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      m = jax.hessian(loss)(flat)
    else:  # G = (1/N) Σ_i J_iᵀ H_i J_i (Schraudolph 2002, eq. 7)
      j = jax.jacobian(lambda w: model.apply(unravel(w), x)[0])(flat)  # (N, C, P)
      p = jax.nn.softmax(model.apply(unravel(flat), x)[0])
      h = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
      m = jnp.einsum("ncp,ncd,ndq->pq", j, h, j) / x.shape[0]
    return np.asarray(m), unravel


def _operator(kind, model, params, batch, compute_dtype):
  if kind == "hvp":
    return hessian_vp(recipes.classification_loss(model.apply), params, batch,
                      compute_dtype=compute_dtype)
  ce = optax.softmax_cross_entropy_with_integer_labels
  return ggn_vp(model.apply, ce, params, batch, compute_dtype=compute_dtype)


@pytest.mark.parametrize("kind", ["hvp", "ggn"])
def test_bf16_product_within_stated_tolerance_of_dense_float64(kind):
  model, params, batch = _problem()
  m64, _ = _dense64(model, params, batch, kind)
  norm_m = np.abs(np.linalg.eigvalsh(m64)).max()
  mv16 = _operator(kind, model, params, batch, "bfloat16")
  mv32 = _operator(kind, model, params, batch, None)
  flat = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0], np.float64)  # noqa: E731
  for seed in range(3):
    flat0, unravel = jax.flatten_util.ravel_pytree(params)
    v = unravel(jax.random.normal(jax.random.key(10 + seed), flat0.shape))
    exact = m64 @ flat(v)
    out16 = mv16(v)
    assert {str(a.dtype) for a in jax.tree.leaves(out16)} == {"float32"}
    err16 = np.linalg.norm(flat(out16) - exact) / (norm_m * np.linalg.norm(flat(v)))
    err32 = np.linalg.norm(flat(mv32(v)) - exact) / (norm_m * np.linalg.norm(flat(v)))
    # float32: ≈ 1e-7 per rounding, a few dozen roundings deep: ≤ 1e-5.
    assert err32 <= 1e-5, err32
    # bfloat16: the product passes the tanh net forward, backward and the tangent
    # (about 6 matmuls deep, 3 roundings each: inputs, weights, output), errors adding
    # like a random walk: √18 · u/2 ≈ 2.1 u; bound 4 u ≈ 1.6% of ‖H‖‖v‖. And it is
    # really bfloat16: more than 100× float32's error.
    assert 100 * err32 < err16 <= 4 * U, (err16, err32)


def test_bad_compute_dtype_refused_before_compiling(compiles):
  model, params, batch = _problem()
  loss = recipes.classification_loss(model.apply)
  with pytest.raises(ValueError, match=r"compute_dtype='float16'; allowed: one of \('float32', "
                                       r"'bfloat16'\)"):
    hessian_vp(loss, params, batch, compute_dtype="float16")
  with pytest.raises(ValueError, match=r"compute_dtype='half'; allowed"):
    ggn_vp(model.apply, optax.softmax_cross_entropy_with_integer_labels, params, batch,
           compute_dtype="half")
  assert compiles == []
