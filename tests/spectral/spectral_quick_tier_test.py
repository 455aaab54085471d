"""The host path's quick tier of the product (operators.tiered_call): a signature's first
products come from a quick-to-compile program, then the default one; both give Hv."""

import collections
import functools
import types

import jax
import numpy as np
import pytest
import spectral_models as sm

from jaxlab.spectral import eigen
from jaxlab.spectral import operators as ops


@functools.lru_cache(maxsize=None)
def _problem():
  """(params, batch, dense float64 Hessian) of the small test MLP (299 parameters)."""
  params, batch = sm.mlp_init(0, sizes=(5, 16, 10, 3)), sm.mlp_data(1, n=32)
  with jax.enable_x64(True):
    H = np.asarray(sm.dense_hessian(sm.mlp_loss, sm.to64(params), sm.to64(batch)))
  return params, batch, H


def _tier_loss(p, batch):  # its own function: a signature no other test has used
  return sm.mlp_loss(p, batch)


def _lanczos_loss(p, batch):
  return sm.mlp_loss(p, batch)


@pytest.fixture
def fresh_tiers(monkeypatch):
  tiers = collections.OrderedDict()
  monkeypatch.setattr(ops, "_quick", tiers)
  return tiers


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the quick tier is XLA:CPU's")
def test_quick_products_then_the_default_program(fresh_tiers, monkeypatch, compiles):
  params, batch, H = _problem()
  op = ops.hessian_vp(_tier_loss, params, batch)
  v = sm.unflat_like(np.linspace(-1.0, 1.0, H.shape[0]).astype(np.float32), params)
  ref = H @ sm.flat(v)
  # float32 products: each entry within ~eps·‖H‖‖v‖; 1e-5 of the largest entry allowed
  close = lambda hv: np.abs(sm.flat(hv) - ref).max() <= 1e-5 * np.abs(ref).max()

  first = op.tiered(v)
  (tier,) = fresh_tiers.values()
  assert tier.compiled is not None and 0 < tier.flops < np.inf and tier.spent == tier.flops
  monkeypatch.setattr(ops, "QUICK_FLOPS", 2.5 * tier.flops)  # room for two quick products
  second = op.tiered(v)
  (tier,) = fresh_tiers.values()
  assert tier.compiled is not None and tier.spent == 2 * tier.flops
  del compiles[:]
  third = op.tiered(v)  # 3 x flops > the budget: the default program is compiled now
  (tier,) = fresh_tiers.values()
  assert tier.compiled is None
  assert compiles, "the switch to the default program compiled nothing"
  del compiles[:]
  fourth = op.tiered(v)
  assert compiles == []
  assert all(close(hv) for hv in (first, second, third, fourth))
  # the two programs differ only by rounding (about 1e-7 relative here)
  np.testing.assert_allclose(sm.flat(first), sm.flat(op(v)), rtol=0,
                             atol=1e-6 * np.abs(ref).max())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the quick tier is XLA:CPU's")
def test_host_lanczos_runs_on_the_quick_tier(fresh_tiers):
  """top_eigenpairs(host=True): m steps and k residual products, all quick (tiny flops)."""
  params, batch, H = _problem()
  lam = np.linalg.eigvalsh(H)
  pairs = eigen.top_eigenpairs(ops.hessian_vp(_lanczos_loss, params, batch), params, 2,
                               jax.random.key(0), num_iters=30, host=True)
  (tier,) = fresh_tiers.values()
  assert tier.compiled is not None and tier.spent == (30 + 2) * tier.flops
  # float32 products, gap-separated top pair: ~1e-6 relative; 1e-5 allowed
  np.testing.assert_allclose(pairs.eigenvalues, lam[::-1][:2], rtol=0, atol=1e-5 * lam[-1])


def test_no_tier_off_the_cpu():
  """Leaves on an accelerator or split over devices get the default program, no quick compile."""
  leaf = lambda *platforms: types.SimpleNamespace(sharding=types.SimpleNamespace(
      device_set=tuple(types.SimpleNamespace(platform=p, id=i) for i, p in enumerate(platforms))))
  assert not ops._on_cpu([leaf("gpu")])
  assert not ops._on_cpu([leaf("cpu", "cpu")])
  assert ops._on_cpu([leaf("cpu")])
