"""lanczos / top_eigenpairs against dense jax.hessian + numpy.linalg.eigh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spectral_models as sm

from jaxlab.spectral import eigen
from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import lanczos, tridiagonal


@functools.lru_cache(maxsize=None)
def _problem(name, dtype):
  """(loss, params, batch, dense float64 Hessian at the same params)."""
  with jax.enable_x64(dtype == np.float64):
    if name == "mlp":
      params, loss = sm.mlp_init(0, dtype=dtype), sm.mlp_loss
      batch = sm.mlp_data(1, n=32, dtype=dtype)
    else:
      _, params, batch, loss = sm.transformer_setup(0, dtype=dtype)
  with jax.enable_x64(True):
    H = sm.dense_hessian(loss, sm.to64(params), sm.to64(batch))
  return loss, params, batch, H


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_top5_float64_and_float32(name):
  for dtype, num_iters, tol in ((np.float64, 60, 1e-8), (np.float32, 60, 1e-4)):
    loss, params, batch, H = _problem(name, dtype)
    evals, evecs = np.linalg.eigh(H)
    n = H.shape[0]
    assert 200 <= n <= 1000  # "a few hundred parameters"
    with jax.enable_x64(dtype == np.float64):
      mv = ops.hessian_vp(loss, params, batch)
      res = eigen.top_eigenpairs(mv, params, 5, jax.random.key(0), num_iters=num_iters)
      v0 = sm.flat(jax.tree.map(lambda a: a[0], res.eigenvectors)).astype(np.float64)
    top = evals[::-1][:5]
    rel = np.abs(res.eigenvalues - top) / np.abs(top)
    print(name, np.dtype(dtype).name, "n", n, "rel err", rel, "residuals", res.residuals)
    assert rel.max() <= tol, (name, dtype, rel)
    # eigenvectors: aligned with the dense ones for the (simple) top eigenvalue
    assert abs(v0 @ evecs[:, -1]) >= 1 - (1e-10 if dtype == np.float64 else 1e-4)
    # explicit residuals (products in the params' dtype) against the dense float64
    # ‖H y − θ y‖ of the returned vectors: equal up to the products' rounding
    scale = np.abs(top).max()
    for i in range(5):
      y = sm.flat(jax.tree.map(lambda a, i=i: a[i], res.eigenvectors)).astype(np.float64)
      r_dense = np.linalg.norm(H @ y - res.eigenvalues[i] * y)
      eps = 1e-12 if dtype == np.float64 else 1e-5
      assert abs(res.residuals[i] - r_dense) <= eps * scale, (i, res.residuals[i], r_dense)


def test_smallest_and_magnitude_against_dense():
  loss, params, batch, H = _problem("mlp", np.float64)
  evals = np.linalg.eigvalsh(H)
  with jax.enable_x64(True):
    mv = ops.hessian_vp(loss, params, batch)
    n = H.shape[0]
    # the full Krylov space (m = n) makes every Ritz value exact
    small = eigen.top_eigenpairs(mv, params, 3, jax.random.key(1), num_iters=n, which="smallest")
    mag = eigen.top_eigenpairs(mv, params, 3, jax.random.key(1), num_iters=n, which="magnitude")
  assert evals.min() < -1e-6  # the Hessian is indefinite, so the two orders differ
  np.testing.assert_allclose(small.eigenvalues, evals[:3], rtol=0, atol=1e-10 * abs(evals).max())
  by_mag = evals[np.argsort(-np.abs(evals))][:3]
  np.testing.assert_allclose(mag.eigenvalues, by_mag, rtol=0, atol=1e-10 * abs(evals).max())


def _ritz(res):
  return np.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))


def test_ghost_eigenvalues_without_reorthogonalization():
  """Known spectrum {100, 50, 25} ∪ 197 values in [0, 1]: plain Lanczos repeats the outliers."""
  lam = np.concatenate([[100.0, 50.0, 25.0], np.linspace(0.0, 1.0, 197)])
  with jax.enable_x64(True):
    d = jnp.asarray(lam)
    mv = lambda v: d * v
    counts = {}
    for reorth in (False, True):
      res = lanczos(mv, jnp.zeros(lam.size), 120, jax.random.key(0), reorthogonalize=reorth)
      th = _ritz(res)
      counts[reorth] = [int(np.sum(np.abs(th - t) < 1e-6 * t)) for t in (100.0, 50.0, 25.0)]
  print("copies of 100, 50, 25:", counts)
  assert min(counts[False]) >= 2  # ghosts: each converged outlier appears again
  assert counts[True] == [1, 1, 1]


def test_breakdown_restarts_and_basis_is_orthonormal():
  """Three distinct eigenvalues: the Krylov space closes after 3 steps, Lanczos restarts."""
  lam = np.repeat([1.0, 2.0, 5.0], 10)
  with jax.enable_x64(True):
    d = jnp.asarray(lam)
    res = lanczos(lambda v: d * v, jnp.zeros(30), 9, jax.random.key(2), return_basis=True)
    V = np.asarray(res.basis)
  np.testing.assert_allclose(V @ V.T, np.eye(9), atol=1e-12)
  assert np.sum(res.betas == 0) == 2  # restarts after steps 3 and 6
  th = _ritz(res)
  assert np.abs(th[:, None] - np.array([1.0, 2.0, 5.0])[None, :]).min(axis=1).max() < 1e-12


def test_float64_scope_leaves_global_flag_and_dataset_path_agrees():
  loss, params, batch, H = _problem("mlp", np.float32)
  x, y = batch
  assert not jax.config.jax_enable_x64
  mv = ops.hessian_vp(loss, params, batch)
  res = lanczos(mv, params, 30, jax.random.key(3), dtype=jnp.float64, return_basis=True)
  assert not jax.config.jax_enable_x64
  assert res.alphas.dtype == np.float64 and res.basis.dtype == jnp.float64
  # the host-driven data-set operator (batches 20 + 12) follows the same recurrence
  dmv = ops.hessian_vp(loss, params, [(x[:20], y[:20]), (x[20:], y[20:])])
  res2 = lanczos(dmv, params, 30, jax.random.key(3), dtype=jnp.float64)
  top = np.linalg.eigvalsh(H)[-1]
  # float32 HVPs: agreement to float32 rounding of the operator
  assert abs(_ritz(res)[-1] - top) / top < 1e-5
  assert abs(_ritz(res2)[-1] - top) / top < 1e-5
  # the explicit residuals of top_eigenpairs go through the same host loop (2 more passes)
  pairs = eigen.top_eigenpairs(dmv, params, 2, jax.random.key(3), num_iters=30, dtype=jnp.float64)
  assert not jax.config.jax_enable_x64
  for i in range(2):
    y = sm.flat(jax.tree.map(lambda a, i=i: a[i], pairs.eigenvectors)).astype(np.float64)
    r_dense = np.linalg.norm(H @ y - pairs.eigenvalues[i] * y)
    # float32 HVPs of a unit vector: rounding ≈ 1e-6 relative to ‖H‖
    assert abs(pairs.residuals[i] - r_dense) <= 1e-5 * top, (i, pairs.residuals[i], r_dense)


def test_bad_inputs_raise_value_error():
  params = sm.mlp_init(0, sizes=(2, 3, 1))  # 13 parameters
  mv = lambda v: v
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="num_iters is 14"):
    lanczos(mv, params, 14, key)
  with pytest.raises(ValueError, match="num_iters is 0"):
    lanczos(mv, params, 0, key)
  with pytest.raises(ValueError, match="k is 0"):
    eigen.top_eigenpairs(mv, params, 0, key)
  with pytest.raises(ValueError, match="k is -2"):
    eigen.top_eigenpairs(mv, params, -2, key)
  with pytest.raises(ValueError, match="k is 6"):
    eigen.top_eigenpairs(mv, params, 6, key, num_iters=5)
  with pytest.raises(ValueError, match="which"):
    eigen.top_eigenpairs(mv, params, 1, key, which="top")
  with pytest.raises(ValueError, match="dtype"):
    lanczos(mv, params, 5, key, dtype=jnp.float16)
  with pytest.raises(ValueError, match="v0"):
    lanczos(mv, params, 5, key, v0=[jnp.ones(13)])
