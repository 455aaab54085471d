"""Empirical NTK: Jacobian contraction and VJP/JVP products against a dense flat Jacobian."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxlab import ntk


def _coupled_model(p, x):
  # Two outputs mixed through a shared hidden layer: off-diagonal output blocks are nonzero.
  h = jnp.tanh(x @ p["w1"] + p["b1"][None, :])
  return h @ p["w2"] + jnp.sum(h * h, axis=1, keepdims=True) * p["c"][None, :]


def _params():
  k = jax.random.split(jax.random.key(0), 4)
  return {"w1": jax.random.normal(k[0], (3, 5)), "b1": jax.random.normal(k[1], (5,)),
          "w2": jax.random.normal(k[2], (5, 2)), "c": jax.random.normal(k[3], (2,))}


def _dense_reference(p, x1, x2):
  flat, unravel = ravel_pytree(p)
  j1 = np.asarray(jax.jacobian(lambda f: _coupled_model(unravel(f), x1))(flat))  # (N1, O, P)
  j2 = np.asarray(jax.jacobian(lambda f: _coupled_model(unravel(f), x2))(flat))
  return np.einsum("iop,jqp->ijoq", j1, j2)


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "auto"])
def test_matches_dense_reference_multi_output(method):
  p = _params()
  x1 = jax.random.normal(jax.random.key(1), (4, 3))
  x2 = jax.random.normal(jax.random.key(2), (3, 3))
  ref = _dense_reference(p, x1, x2)
  got = ntk.empirical_ntk(_coupled_model, p, x1, x2, method=method, trace_axes=())
  assert got.shape == (4, 3, 2, 2)
  assert np.abs(ref[:, :, 0, 1]).max() > 1e-2  # the test would miss output coupling otherwise
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)  # float32 sums of ~30 terms
  tr = ntk.empirical_ntk(_coupled_model, p, x1, x2, method=method)  # trace_axes=(-1,)
  np.testing.assert_allclose(tr, (ref[:, :, 0, 0] + ref[:, :, 1, 1]) / 2, rtol=2e-5, atol=2e-5)


def test_symmetric_when_x2_omitted_and_scalar_outputs():
  p = _params()
  x = jax.random.normal(jax.random.key(3), (5, 3))
  scalar = lambda q, x: _coupled_model(q, x)[:, 0]
  got = ntk.empirical_ntk(scalar, p, x, method="ntvp", output="full")  # legacy alias of ()
  assert got.shape == (5, 5, 1, 1)
  np.testing.assert_allclose(got[..., 0, 0], got[..., 0, 0].T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, ntk.empirical_ntk(scalar, p, x, method="jacobian", trace_axes=()),
                             rtol=2e-5, atol=2e-5)


def test_choose_method_and_bad_arguments():
  assert ntk.choose_method(10, 10, 1, 1000) == "jacobian"
  assert ntk.choose_method(10_000, 10_000, 10, 10**7) == "ntvp"
  p = _params()
  with pytest.raises(ValueError, match="method"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), method="svd")
  with pytest.raises(ValueError, match="output"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), output="diag")
  with pytest.raises(ValueError, match=r"trace_axes=\(0,\): allowed \(\)"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), trace_axes=(0,))
  np.testing.assert_array_equal(ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), trace_axes=1),
                                ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3))))
  with pytest.raises(ValueError, match="disagree"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), output="full", trace_axes=(1,))
  with pytest.raises(ValueError, match="batch_size=0: allowed None or an int >= 1"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), batch_size=0)
  with pytest.raises(ValueError, match="same example shape"):
    ntk.empirical_ntk(_coupled_model, p, jnp.ones((2, 3)), jnp.ones((2, 4)))
