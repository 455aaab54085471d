"""hessian_vp / ggn_vp / restrict_to_subtree against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spectral_models as sm

from jaxlab.spectral import operators as ops


@pytest.fixture(scope="module")
def mlp64():
  with jax.enable_x64(True):
    params = sm.mlp_init(0, sizes=(4, 8, 6, 3), dtype=np.float64)
    batch = sm.mlp_data(1, n=21, d=4, dtype=np.float64)
    H = sm.dense_hessian(sm.mlp_loss, params, batch)
  return params, batch, H


def _probe(matvec, params, num=6, seed=0):
  """(M P, P) for random probes P (n, num): equality on random vectors certifies M
  equals a reference almost surely, at a fraction of the cost of all n columns."""
  n = sm.flat(params).size
  P = np.random.default_rng(seed).standard_normal((n, num))
  cols = [sm.flat(matvec(sm.unflat_like(P[:, i], params))) for i in range(num)]
  return np.stack(cols, axis=1), P


def test_hvp_matches_dense_hessian_float64(mlp64):
  params, batch, H = mlp64
  with jax.enable_x64(True):
    mv = ops.hessian_vp(sm.mlp_loss, params, batch)
    rng = np.random.default_rng(0)
    for _ in range(3):
      v = rng.standard_normal(H.shape[0])
      hv = sm.flat(mv(sm.unflat_like(v, params)))
      # forward-over-reverse is exact up to float64 rounding
      np.testing.assert_allclose(hv, H @ v, rtol=1e-10, atol=1e-12 * np.abs(H).max())


def test_full_dataset_operator_equals_full_batch_hessian(mlp64):
  """21 examples as batches of 8, 8, 5: the per-example weighting must give the full Hessian."""
  params, (x, y), H = mlp64
  with jax.enable_x64(True):
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    for src in (batches, lambda: iter(batches), lambda: ((a, b) for a, b in batches)):
      mv = ops.hessian_vp(sm.mlp_loss, params, src)
      assert isinstance(mv, ops.DataSetOperator)
      MP, P = _probe(mv, params)
      np.testing.assert_allclose(MP, H @ P, rtol=0, atol=1e-11 * np.abs(H).max())
    # Unweighted averaging of the three batch Hessians would be wrong by O(1):
    Hs = [sm.dense_hessian(sm.mlp_loss, params, b) for b in batches]
    assert np.abs(np.mean(Hs, axis=0) - H).max() > 1e-3 * np.abs(H).max()


def _dense_ggn(params, x):
  """(1/B) Σ_i J_iᵀ (diag(p_i) − p_i p_iᵀ) J_i with dense Jacobians (softmax cross-entropy)."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  J = np.asarray(jax.jacobian(lambda f: sm.mlp_apply(unravel(f), x))(flat))  # (B, C, n)
  z = np.asarray(sm.mlp_apply(params, x))
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  # closed-form softmax cross-entropy output Hessian: diag(p) - p p^T
  return sum(J[i].T @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ J[i] for i in range(x.shape[0])) / x.shape[0]


def test_ggn_matches_dense_jt_h_j(mlp64):
  params, (x, y), _ = mlp64
  with jax.enable_x64(True):
    mv = ops.ggn_vp(sm.mlp_apply, sm.xent, params, (x, y))
    G = _dense_ggn(params, x)
    MP, P = _probe(mv, params)
    np.testing.assert_allclose(MP, G @ P, rtol=0, atol=1e-11 * np.abs(G).max())
    # multi-batch GGN with a smaller last batch equals the full one
    mv2 = ops.ggn_vp(sm.mlp_apply, sm.xent, params, [(x[:16], y[:16]), (x[16:], y[16:])])
    MP, P = _probe(mv2, params)
    np.testing.assert_allclose(MP, G @ P, rtol=0, atol=1e-11 * np.abs(G).max())
    # The GGN is PSD while the Hessian is not (a check that they differ):
    assert np.linalg.eigvalsh(G).min() > -1e-10


def test_linearized_operators_match_dense_inside_jit(mlp64):
  """linearized(mv) (residuals computed once, tangent part per product) equals the dense
  Hessian and GGN inside a jitted loop; a plain callable passes through unchanged."""
  params, (x, y), H = mlp64
  with jax.enable_x64(True):
    G = _dense_ggn(params, x)
    P = np.random.default_rng(3).standard_normal((H.shape[0], 4))

    @jax.jit
    def apply_all(mv, vs):
      lin = ops.linearized(mv)
      return jax.lax.map(lin, vs)

    vs = jax.vmap(lambda p: sm.unflat_like(p, params))(jnp.asarray(P.T))
    for mv, M in ((ops.hessian_vp(sm.mlp_loss, params, (x, y)), H),
                  (ops.ggn_vp(sm.mlp_apply, sm.xent, params, (x, y)), G)):
      out = apply_all(mv, vs)
      MP = np.stack([sm.flat(jax.tree.map(lambda a, i=i: a[i], out)) for i in range(P.shape[1])], 1)
      np.testing.assert_allclose(MP, M @ P, rtol=0, atol=1e-11 * np.abs(M).max())
  plain = lambda v: v
  assert ops.linearized(plain) is plain


def test_restrict_to_subtree_is_a_hessian_block(mlp64):
  params, batch, H = mlp64
  with jax.enable_x64(True):
    f, sub = ops.restrict_to_subtree(sm.mlp_loss, params, "l1")
    assert jax.tree_util.tree_leaves(sub)[0].shape == params["l1"]["b"].shape
    leaves = jax.tree_util.tree_leaves(params)
    sizes = np.cumsum([0] + [a.size for a in leaves])
    # leaf order of the dict: l0/b, l0/w, l1/b, l1/w, l2/b, l2/w
    idx = np.r_[sizes[2]:sizes[4]]
    MP, P = _probe(ops.hessian_vp(f, sub, batch), sub)
    np.testing.assert_allclose(MP, H[np.ix_(idx, idx)] @ P, rtol=0, atol=1e-11 * np.abs(H).max())
    # same selection through a mask and a predicate
    mask = {k: {"w": k == "l1", "b": k == "l1"} for k in params}
    for where in (mask, lambda path, leaf: path[0] == "l1", ("l1",)):
      _, s2 = ops.restrict_to_subtree(sm.mlp_loss, params, where)
      assert jax.tree_util.tree_structure(s2) == jax.tree_util.tree_structure(sub)
    with pytest.raises(ValueError, match="selects no parameter"):
      ops.restrict_to_subtree(sm.mlp_loss, params, "l9")
    # prefix matching is per path component: "l" selects nothing
    with pytest.raises(ValueError, match="selects no parameter"):
      ops.restrict_to_subtree(sm.mlp_loss, params, "l")


def test_bad_inputs_raise_value_error():
  params = sm.mlp_init(0)
  x, y = sm.mlp_data(1)
  with pytest.raises(ValueError, match="batches is empty"):
    ops.hessian_vp(sm.mlp_loss, params, [])
  with pytest.raises(ValueError, match="batches is empty"):
    ops.hessian_vp(sm.mlp_loss, params, lambda: iter(()))
  with pytest.raises(ValueError, match="one-shot iterator"):
    ops.hessian_vp(sm.mlp_loss, params, iter([(x, y)]))
  with pytest.raises(ValueError, match="different leading"):
    ops.hessian_vp(sm.mlp_loss, params, (x, y[:3]))
  with pytest.raises(ValueError, match="pair"):
    ops.ggn_vp(sm.mlp_apply, sm.xent, params, {"x": x})
  mv = ops.hessian_vp(sm.mlp_loss, params, (x, y))
  with pytest.raises(ValueError, match="pytree structure"):
    mv({"l0": params["l0"]})
  bad = jax.tree.map(lambda a: a, params)
  bad["l0"]["w"] = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match="shape"):
    mv(bad)
  dmv = ops.hessian_vp(sm.mlp_loss, params, [(x, y), (x, y)])
  with pytest.raises(ValueError, match="pytree structure"):
    dmv([1.0])
