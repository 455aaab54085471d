"""top_eigenpairs' compiled pieces: shared across nearby num_iters; early stop at a tolerance."""

import functools
import sys

import jax
import numpy as np
import pytest
import spectral_models as sm
from jax.tree_util import Partial

from jaxlab.spectral import eigen
from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import basis_rows, lanczos


@functools.lru_cache(maxsize=None)
def _problem():
  """(loss, params, batch, dense float64 eigenvalues) of the small test MLP (~250 parameters)."""
  params, batch = sm.mlp_init(0, sizes=(5, 16, 10, 3)), sm.mlp_data(1, n=32)
  with jax.enable_x64(True):
    H = sm.dense_hessian(sm.mlp_loss, sm.to64(params), sm.to64(batch))
  return sm.mlp_loss, params, batch, np.linalg.eigvalsh(H)


def test_basis_rows_buckets():
  assert [basis_rows(m) for m in (1, 7, 8, 15, 20, 24, 31, 32, 60, 63, 64, 80)] == [
      8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 96, 96]


# The tests of compiled pieces and basis buckets pin the device path (host=False): the host
# path (tests/spectral/spectral_lanczos_host_test.py) compiles only the product.


def test_nearby_num_iters_compile_nothing_new(compiles):
  loss, params, batch, evals = _problem()
  key = jax.random.key(0)
  first = eigen.top_eigenpairs(ops.hessian_vp(loss, params, batch), params, 1, key, num_iters=20,
                               host=False)
  assert compiles  # sanity: the fixture sees this session's compiles
  del compiles[:]
  second = eigen.top_eigenpairs(ops.hessian_vp(loss, params, batch), params, 1, key, num_iters=24,
                                host=False)
  assert compiles == [], compiles
  # both converged (gap-separated top eigenvalue): float32 operator, ~1e-6 relative
  for pairs in (first, second):
    assert abs(pairs.eigenvalues[0] - evals[-1]) <= 1e-5 * evals[-1], (pairs.eigenvalues, evals[-1])
  assert (first.num_iters, second.num_iters) == (20, 24)
  # an early-stopping run starts with the same 32-row basis: nothing new either
  third = eigen.top_eigenpairs(ops.hessian_vp(loss, params, batch), params, 1, key, num_iters=60,
                               tol=1e-3, host=False)
  assert third.num_iters < 31 and compiles == [], (third.num_iters, compiles)


def test_tol_run_grows_the_basis_past_32_rows():
  """Three close outliers: tol=1e-6 is not reached in 100 steps, so the 32-row basis of a
  tol run grows to 128 rows on the way; it ends where the plain 100-step run ends."""
  lam = np.concatenate([[10.0, 9.99, 9.98], np.linspace(0.0, 9.9, 997)]).astype(np.float32)
  d = jax.numpy.asarray(lam)
  x = jax.numpy.zeros(lam.size, np.float32)
  plain = eigen.top_eigenpairs(lambda v: d * v, x, 1, jax.random.key(0), num_iters=100, host=False)
  grown = eigen.top_eigenpairs(lambda v: d * v, x, 1, jax.random.key(0), num_iters=100, tol=1e-6,
                               host=False)
  assert grown.num_iters == plain.num_iters == 100
  # same recurrence on a different bucket: equal to float32 rounding, ~eps relative
  np.testing.assert_allclose(grown.eigenvalues, plain.eigenvalues, rtol=1e-6)
  assert abs(plain.eigenvalues[0] - 10.0) <= plain.residuals[0] + 1e-5


def test_bucket_leaves_the_recurrence_unchanged():
  """The same key gives the same first steps, in one bucket bit for bit, across buckets
  to float32 rounding (the zero rows add exact zeros; only XLA's summation order may differ)."""
  loss, params, batch, _ = _problem()
  mv = ops.hessian_vp(loss, params, batch)
  key = jax.random.key(1)
  a20, a24, a40 = (lanczos(mv, params, m, key, host=False).alphas for m in (20, 24, 40))
  np.testing.assert_array_equal(a20, a24[:20])
  # float32 steps: agreement to a few eps of |α| over the first steps, before rounding
  # differences are amplified by the recurrence
  np.testing.assert_allclose(a20[:8], a40[:8], rtol=1e-5)


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_tol_stops_early_within_tolerance(tol):
  loss, params, batch, evals = _problem()
  mv = ops.hessian_vp(loss, params, batch)
  full = eigen.top_eigenpairs(mv, params, 1, jax.random.key(0), num_iters=60)
  pairs = eigen.top_eigenpairs(mv, params, 1, jax.random.key(0), num_iters=60, tol=tol)
  print("tol", tol, "iters", pairs.num_iters, "lam", pairs.eigenvalues, "exact", evals[-1])
  assert full.num_iters == 60
  assert pairs.num_iters < 60
  # the stopping rule: Ritz residual estimate |β_j u_j| ≤ tol·|θ|, and an eigenvalue of A lies
  # within the residual of θ (Parlett Thm 4.5.1); the top one, as the gap here is large
  assert pairs.ritz_residuals[0] <= tol * abs(pairs.eigenvalues[0])
  assert abs(pairs.eigenvalues[0] - evals[-1]) <= tol * evals[-1]
  # the explicit residual agrees with the estimate to float32 rounding of the product
  assert pairs.residuals[0] <= tol * evals[-1] + 1e-5 * evals[-1]
  # the same steps as a run of that length (another bucket: equal to float32 rounding)
  shorter = eigen.top_eigenpairs(mv, params, 1, jax.random.key(0), num_iters=pairs.num_iters)
  np.testing.assert_allclose(shorter.eigenvalues, pairs.eigenvalues, rtol=1e-5)


def test_tol_with_several_pairs_and_a_plain_matvec():
  """k = 3 on a known diagonal spectrum, a plain callable (driven step by step under tol)."""
  lam = np.concatenate([[10.0, 8.0, 6.0], np.linspace(0.0, 1.0, 297)]).astype(np.float32)
  d = jax.numpy.asarray(lam)
  x = jax.numpy.zeros(lam.size, np.float32)
  pairs = eigen.top_eigenpairs(lambda v: d * v, x, 3, jax.random.key(0), num_iters=80, tol=1e-4)
  print("iters", pairs.num_iters, pairs.eigenvalues)
  assert pairs.num_iters < 80
  # each within tol relative (plus float32 rounding, eps·10 ≈ 1e-6) of its eigenvalue
  np.testing.assert_allclose(pairs.eigenvalues, [10.0, 8.0, 6.0], rtol=1e-4 + 1e-6)


def test_bad_tol_raises():
  loss, params, batch, _ = _problem()
  mv = ops.hessian_vp(loss, params, batch)
  for tol in (0.0, -1e-3, float("nan")):
    with pytest.raises(ValueError, match="tol is"):
      eigen.top_eigenpairs(mv, params, 1, jax.random.key(0), tol=tol)


def test_large_basis_grows_by_buckets_with_the_same_recurrence(monkeypatch):
  """A basis above the size threshold is driven from Python and grows 8 -> 16 -> 32 -> 64;
  the recurrence is the one-bucket run's, step for step (other buckets: float32 rounding)."""
  mod = sys.modules["jaxlab.spectral.lanczos"]
  rng = np.random.default_rng(0)
  lam = np.concatenate([[10.0, 8.0, 6.0], rng.uniform(0.0, 1.0, 997)]).astype(np.float32)
  d = jax.numpy.asarray(lam)
  x = jax.numpy.zeros(lam.size, np.float32)
  plain = lanczos(lambda v: d * v, x, 40, jax.random.key(0), return_basis=True, host=False)
  sizes = []
  grow = mod._grow
  monkeypatch.setattr(mod, "_grow", lambda V, c, rows: (sizes.append(rows), grow(V, c, rows))[1])
  monkeypatch.setattr(mod, "_GROW_BYTES", 1)
  grown = lanczos(lambda v: d * v, x, 40, jax.random.key(0), return_basis=True, host=False)
  assert sizes == [16, 32, 64], sizes
  np.testing.assert_allclose(grown.alphas, plain.alphas, rtol=1e-5)
  np.testing.assert_allclose(grown.betas, plain.betas, rtol=1e-4)
  G = np.asarray(grown.basis, np.float64)
  assert np.abs(G @ G.T - np.eye(40)).max() <= 1e-6


def _scaled(d, v):
  return d * v


def test_plain_partial_matvec_compiles_once_per_shape(compiles):
  """A plain ``Partial`` matvec is driven from Python like the operators (its product one
  compiled program, its data an argument): new data of the same shape compiles nothing."""
  x = jax.numpy.zeros(300, np.float32)
  d1 = jax.numpy.linspace(0.0, 1.0, 300, dtype=np.float32)
  d2 = 2 * d1  # (an op-by-op multiply compiles too)
  first = lanczos(Partial(_scaled, d1), x, 20, jax.random.key(0))
  del compiles[:]
  second = lanczos(Partial(_scaled, d2), x, 20, jax.random.key(0))
  assert compiles == [], compiles
  np.testing.assert_allclose(second.alphas, 2 * first.alphas, rtol=1e-5)
