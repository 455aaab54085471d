"""top_eigenpairs(quick_compile=True): a single-batch operator's products from a program XLA:CPU
compiles fast (operators.quick_call), against the dense Hessian and the default program."""

import collections
import functools
import types

import jax
import numpy as np
import pytest
import spectral_models as sm

from jaxlab.spectral import eigen
from jaxlab.spectral import operators as ops

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's quick program")


@functools.lru_cache(maxsize=None)
def _problem():
  """(params, batch, dense float64 Hessian) of the small test MLP (299 parameters)."""
  params, batch = sm.mlp_init(0, sizes=(5, 16, 10, 3)), sm.mlp_data(1, n=32)
  with jax.enable_x64(True):
    H = np.asarray(sm.dense_hessian(sm.mlp_loss, sm.to64(params), sm.to64(batch)))
  return params, batch, H


def _quick_loss(p, batch):  # its own function: a signature no other test has used
  return sm.mlp_loss(p, batch)


@pytest.fixture
def fresh_cache(monkeypatch):
  cache = collections.OrderedDict()
  monkeypatch.setattr(ops, "_quick", cache)
  return cache


@cpu_only
def test_quick_product_matches_the_dense_hessian(fresh_cache, compiles):
  params, batch, H = _problem()
  op = ops.hessian_vp(_quick_loss, params, batch)
  v = sm.unflat_like(np.linspace(-1.0, 1.0, H.shape[0]).astype(np.float32), params)
  ref = H @ sm.flat(v)
  quick = op.quick(v)
  (compiled,) = fresh_cache.values()
  assert compiled is not False  # an executable was built with QUICK_CPU_OPTIONS
  v2 = jax.block_until_ready(jax.tree.map(lambda a: 2 * a, v))
  del compiles[:]
  again = op.quick(v2)  # same signature: nothing new
  assert compiles == [] and len(fresh_cache) == 1
  # float32 products: within ~eps·‖H‖‖v‖ per entry; 1e-5 of the largest entry allowed
  scale = np.abs(ref).max()
  np.testing.assert_allclose(sm.flat(quick), ref, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(sm.flat(again), 2 * ref, rtol=0, atol=2e-5 * scale)
  # the default program: the same product up to rounding (about 1e-7 relative here)
  np.testing.assert_allclose(sm.flat(quick), sm.flat(op(v)), rtol=0, atol=1e-6 * scale)


_PHASES = {"/jax/core/compile/jaxpr_trace_duration": "trace",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
           "/jax/core/compile/backend_compile_duration": "compile"}


@functools.cache
def _phases() -> collections.Counter:
  """Counts of jax's trace / lowering / backend-compile events from the first call on."""
  seen = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: seen.update([_PHASES[name]]) if name in _PHASES else None)
  return seen


@cpu_only
@pytest.mark.parametrize("quick_first", [True, False])
def test_quick_program_shares_trace_and_lowering(fresh_cache, quick_first):
  """quick_call's docstring: the quick and default programs of one signature come from one
  trace and one lowering (jit's caches); whichever runs second costs only a backend compile."""
  params, batch, _ = _problem()
  traced = []

  def loss(p, b):  # a new function: a signature nothing has traced yet
    traced.append(1)
    return sm.mlp_loss(p, b)

  op = ops.hessian_vp(loss, params, batch)
  v = jax.block_until_ready(jax.tree.map(lambda a: a + 1, params))
  seen = _phases()
  seen.clear()
  for quick in (quick_first, not quick_first, quick_first, not quick_first):
    jax.block_until_ready(op.quick(v) if quick else op(v))
  assert len(fresh_cache) == 1 and len(traced) == 1
  assert dict(seen) == {"trace": 1, "lower": 1, "compile": 2}, dict(seen)


@cpu_only
def test_top_eigenpairs_quick_compile(fresh_cache):
  """The host path's m steps and k residual products all go through the quick program."""
  params, batch, H = _problem()
  lam = np.linalg.eigvalsh(H)
  mv = ops.hessian_vp(_quick_loss, params, batch)
  key = jax.random.key(0)
  quick = eigen.top_eigenpairs(mv, params, 2, key, num_iters=30, host=True, quick_compile=True)
  assert len(fresh_cache) == 1
  plain = eigen.top_eigenpairs(mv, params, 2, key, num_iters=30, host=True)
  # float32 products, gap-separated top pairs: ~1e-6 relative; 1e-5 allowed
  np.testing.assert_allclose(quick.eigenvalues, lam[::-1][:2], rtol=0, atol=1e-5 * lam[-1])
  np.testing.assert_allclose(quick.eigenvalues, plain.eigenvalues, rtol=0, atol=1e-5 * lam[-1])
  assert np.all(quick.residuals <= 1e-4 * lam[-1])
  with pytest.raises(ValueError, match="quick_compile is 'yes'; allowed: True or False"):
    eigen.top_eigenpairs(mv, params, 1, key, num_iters=5, quick_compile="yes")


def test_no_quick_program_off_the_cpu():
  """Leaves on an accelerator or split over devices keep the default program."""
  leaf = lambda *platforms: types.SimpleNamespace(sharding=types.SimpleNamespace(
      device_set=tuple(types.SimpleNamespace(platform=p, id=i) for i, p in enumerate(platforms))))
  assert not ops.on_one_cpu_device(leaf("gpu"))
  assert not ops.on_one_cpu_device(leaf("cpu", "cpu"))
  assert ops.on_one_cpu_device(leaf("cpu"))
