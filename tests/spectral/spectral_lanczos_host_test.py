"""The host path of Lanczos (NumPy float64 algebra, only the operator product compiled)
against dense eigendecompositions, and against the device path (jitted float32 steps)."""

import functools
import importlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spectral_models as sm

from jaxlab.spectral import eigen, lanczos_host
from jaxlab.spectral import operators as ops
from jaxlab.spectral.density import spectral_density
from jaxlab.spectral.lanczos import lanczos, tridiagonal

EPS32 = float(np.finfo(np.float32).eps)
lz = importlib.import_module("jaxlab.spectral.lanczos")  # the package attribute is the function


@functools.lru_cache(maxsize=None)
def _problem():
  """(params, batch, dense float64 Hessian, its eigh) of the small test MLP (299 parameters)."""
  params, batch = sm.mlp_init(0, sizes=(5, 16, 10, 3)), sm.mlp_data(1, n=32)
  with jax.enable_x64(True):
    H = np.asarray(sm.dense_hessian(sm.mlp_loss, sm.to64(params), sm.to64(batch)))
  return params, batch, H, np.linalg.eigh(H)


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


def test_both_paths_match_the_dense_hessian():
  """60 steps on 299 parameters: the top 3 (gaps ≥ 0.12, 11% of λ_max) converge to the float32
  rounding of the product (~eps·‖H‖ ≈ 1e-7 relative to λ_max; 1e-5 allowed)."""
  params, batch, H, (lam, U) = _problem()
  mv = ops.hessian_vp(sm.mlp_loss, params, batch)
  out = {h: eigen.top_eigenpairs(mv, params, 3, jax.random.key(0), num_iters=60, host=h)
         for h in (True, False)}
  scale = np.abs(lam).max()
  for h, pairs in out.items():
    np.testing.assert_allclose(pairs.eigenvalues, lam[::-1][:3], rtol=0, atol=1e-5 * scale,
                               err_msg=f"host={h}")
    # eigenvectors: the dense ones up to sign; the angle to the eigenvector is at most
    # residual / gap (gap: distance to the nearest other eigenvalue; Davis-Kahan /
    # Parlett Thm 11.7.1), so 1 − cos ≤ (residual / gap)², plus float32 rounding of y
    gaps = np.array([np.sort(np.abs(lam - t))[1] for t in lam[::-1][:3]])
    print("host", h, pairs.eigenvalues, "gaps", gaps, "residuals", pairs.residuals)
    leaves = jax.tree_util.tree_leaves(pairs.eigenvectors)
    assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 and x.shape[0] == 3
               for x in leaves)
    Y = np.stack([_flat(jax.tree.map(lambda a, i=i: a[i], pairs.eigenvectors)) for i in range(3)])
    cos = np.abs(np.sum(Y * U[:, ::-1][:, :3].T, axis=1))
    assert np.all(1 - cos <= (pairs.residuals / gaps) ** 2 + 1e-6), (cos, gaps)
    # explicit residuals: the product's float32 floor, not an exact-arithmetic 0
    assert np.all(pairs.residuals <= 1e-5 * scale) and np.all(pairs.residuals > 0)
  np.testing.assert_allclose(out[True].eigenvalues, out[False].eigenvalues, rtol=0,
                             atol=1e-5 * scale)


def test_coefficients_and_basis_agree_with_the_device_path():
  """Same start vector, same recurrence: α, β agree over the first steps to float32
  rounding (a few eps of ‖H‖, before the recurrence amplifies rounding); the host basis
  satisfies VᵀHV = T and VVᵀ = I with H dense; the same with a given v0."""
  params, batch, H, (lam, _) = _problem()
  mv = ops.hessian_vp(sm.mlp_loss, params, batch)
  scale = np.abs(lam).max()
  v0 = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape),
                    params)
  for start in (None, v0):
    h = lanczos(mv, params, 12, jax.random.key(1), return_basis=True, v0=start, host=True)
    d = lanczos(mv, params, 12, jax.random.key(1), return_basis=True, v0=start, host=False)
    np.testing.assert_allclose(h.alphas[:8], d.alphas[:8], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(h.betas[:8], d.betas[:8], rtol=0, atol=1e-5 * scale)
    V = np.asarray(h.basis, np.float64)
    assert h.basis.dtype == jnp.float32 and V.shape == (12, lam.size)
    # the float64 basis rounded to float32 once: orthonormal to a few float32 eps
    assert np.abs(V @ V.T - np.eye(12)).max() <= 1e-6
    T = tridiagonal(h.alphas, h.betas)
    assert np.abs(V @ H @ V.T - T).max() <= 1e-5 * scale
  # the same row 0 as the device path: the hashed start vector, normalized
  np.testing.assert_allclose(np.asarray(h.basis[0]), np.asarray(d.basis[0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.key(7), jax.random.PRNGKey(3)])
def test_start_vectors_are_the_device_paths(key):
  spec = ops.flat_spec(jnp.zeros(1000, jnp.float32))
  for salt in (0, 5):
    for dist in ("uniform", "rademacher"):
      x_dev, s_dev = jax.jit(lambda k, salt=salt, dist=dist: lz._start_vector(
          k, salt, None, spec, jnp.float32, dist))(key)
      x_host, s_host = lanczos_host._start(key, salt, None, spec, dist)
      assert int(s_dev) == int(s_host)  # the restart seed
      # bit for bit (one ulp allowed should XLA contract the scale and shift into an FMA)
      np.testing.assert_array_max_ulp(x_host.astype(np.float32), np.asarray(x_dev), maxulp=1)
      assert np.all(x_host != 0) and np.all(np.abs(x_host) <= 1)


def test_breakdown_restarts_on_the_host():
  """Three distinct eigenvalues: the Krylov space closes after 3 steps; the host path
  records β = 0 there (its test uses float32's eps, the product's rounding) and restarts
  with a vector orthogonal to the basis, as the device path does."""
  d = jnp.asarray(np.repeat(np.float32([1.0, 2.0, 5.0]), 10))
  res = lanczos(lambda v: d * v, jnp.zeros(30, jnp.float32), 9, jax.random.key(2),
                return_basis=True, host=True)
  assert np.flatnonzero(res.betas == 0).tolist() == [2, 5]
  V = np.asarray(res.basis, np.float64)
  assert np.abs(V @ V.T - np.eye(9)).max() <= 1e-6
  th = np.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))
  assert np.abs(th[:, None] - np.array([1.0, 2.0, 5.0])).min(axis=1).max() <= 10 * 5 * EPS32


def _fresh_loss(p, batch):  # its own jitted product: no other test compiles it
  return sm.mlp_loss(p, batch)


def test_host_path_compiles_only_the_product(compiles):
  """A cold call compiles one program, the product (the device path compiled four more:
  start vector, step, Ritz vectors, residual norms); a second call at new params and data,
  with another num_iters, compiles nothing."""
  params, batch, _, _ = _problem()
  key = jax.random.key(0)
  batch2 = sm.mlp_data(2, n=32)
  params2 = jax.tree.map(lambda a: 1.1 * a, params)
  jax.block_until_ready((params2, batch2))
  del compiles[:]
  eigen.top_eigenpairs(ops.hessian_vp(_fresh_loss, params, batch), params, 2, key, num_iters=20,
                       host=True)
  assert len(compiles) == 1, compiles
  del compiles[:]
  eigen.top_eigenpairs(ops.hessian_vp(_fresh_loss, params2, batch2), params2, 2, key,
                       num_iters=24, host=True)
  assert compiles == []


def test_density_moments_equal_the_dense_ones_on_both_paths():
  """SLQ with m steps integrates polynomials of degree ≤ 2m − 1 exactly:
  Σ_j τ_j θ_j^p = v̂ᵀ H^p v̂ for the (Rademacher) start vector v̂, a closed form here."""
  params, batch, H, (lam, _) = _problem()
  n, m = lam.size, 10
  mv = ops.hessian_vp(sm.mlp_loss, params, batch)
  key = jax.random.key(4)
  s = lanczos_host._key_seed(key, 1)  # draw 1: salt 1
  v = np.where(lanczos_host._uniform(lanczos_host._mix(s ^ np.uint32(1)), n) < 0, -1.0, 1.0)
  v /= np.sqrt(n)
  exact = [v @ np.linalg.matrix_power(H, p) @ v for p in range(1, 5)]
  scale = np.abs(lam).max()
  for h in (True, False):
    dens = spectral_density(mv, params, m, 2, key, host=h)
    quad = [np.sum(dens.weights[1] * dens.nodes[1] ** p) for p in range(1, 5)]
    print("host", h, "moments", quad, "exact", exact)
    # float32 products: each moment to ~1e-5 of its scale ‖H‖^p
    assert np.all(np.abs(np.subtract(quad, exact)) <= 1e-5 * scale ** np.arange(1, 5)), h


def _leaf(platforms):
  devices = tuple(types.SimpleNamespace(platform=p, id=i) for i, p in enumerate(platforms))
  return types.SimpleNamespace(sharding=types.SimpleNamespace(device_set=devices))


def test_auto_rule_and_bad_values(monkeypatch):
  params, batch, _, _ = _problem()
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))
  cpu = jax.default_backend() == "cpu"
  assert lanczos_host.choose_host(None, params, n, 20) == cpu
  assert lanczos_host.choose_host(None, jax.tree.map(np.asarray, params), n, 20) == cpu
  assert not lanczos_host.choose_host(None, [_leaf(["cpu", "cpu"])], n, 20)  # sharded
  assert not lanczos_host.choose_host(None, [_leaf(["gpu"])], n, 20)
  assert lanczos_host.choose_host(None, [_leaf(["cpu"])], n, 20)
  assert lanczos_host.choose_host(True, [_leaf(["gpu"])], n, 20)
  assert not lanczos_host.choose_host(False, params, n, 20)
  # the float64 basis (num_iters + 1)·n·8 bytes must stay below the limit
  monkeypatch.setattr(lanczos_host, "HOST_BASIS_BYTES", 21 * n * 8)
  assert not lanczos_host.choose_host(None, params, n, 20)
  assert lanczos_host.choose_host(None, params, n, 19) == cpu
  mv = ops.hessian_vp(sm.mlp_loss, params, batch)
  key = jax.random.key(0)
  for call in (lambda: eigen.top_eigenpairs(mv, params, 1, key, num_iters=5, host="yes"),
               lambda: lanczos(mv, params, 5, key, host=1),
               lambda: spectral_density(mv, params, 5, 1, key, host="host")):
    with pytest.raises(ValueError, match=r"host is .*; allowed: None .*True or False"):
      call()
