"""NaP on ICLTransformer(normalize="nap"): the mask's groups, norms kept, scale invariance."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.models.transformer import ICLTransformer
from jaxlab.nap import group_norms, nap_mask, nap_project

B, N, D = 4, 5, 3


def _setup(normalize="nap"):
  m = ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=N, normalize=normalize)
  k1, k2 = jax.random.split(jax.random.key(7))
  xs, ys = jax.random.normal(k1, (B, N, D)), jax.random.normal(k2, (B, N))
  return m, m.init(jax.random.key(0), xs, ys), xs, ys


def _loss(m, xs, ys):
  return lambda p: jnp.mean((m.apply(p, xs, ys)[0] - ys) ** 2)


def _train(m, params, tx, xs, ys, steps=4):
  loss = _loss(m, xs, ys)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  s = tx.init(params)
  for _ in range(steps):
    params, s = step(params, s)
  return params


@pytest.fixture(scope="module")
def trained():
  """(model, init params, NaP-trained params, xs, ys), built once for the module."""
  m, params, xs, ys = _setup()
  return m, params, _train(m, params, optax.chain(optax.adam(0.05), nap_project()), xs, ys), xs, ys


def test_mask_groups():
  _, params, _, _ = _setup()
  labels = nap_mask(params)
  flat = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_flatten_with_path(labels, is_leaf=lambda x: x is None)[0]}
  projected = {k: v for k, v in flat.items() if v is not None}
  res = sorted(k for k, v in projected.items() if v == "residual")
  assert res == sorted(
      [f"['params']['{b}']['{m}']['{n}']" for b in ("block_0", "block_1")
       for m in ("fc_out",) for n in ("bias", "kernel")]
      + [f"['params']['{b}']['attn']['proj']['{n}']" for b in ("block_0", "block_1")
         for n in ("bias", "kernel")]
      + ["['params']['pos_embedding']", "['params']['read_in']['bias']",
         "['params']['read_in']['kernel']"])
  for b in ("block_0", "block_1"):
    assert labels["params"][b]["fc"] == {"kernel": f"{b}/fc", "bias": f"{b}/fc"}
    assert set(jax.tree.leaves(labels["params"][b]["attn"]["qkv"], is_leaf=lambda x: x is None)) \
        == {None}
  assert len(projected) == len(res) + 4  # + (kernel, bias) of two fc layers; nothing else
  no_res = nap_mask(params["params"], residual=False)
  assert sorted(set(jax.tree.leaves(no_res))) == ["block_0/fc", "block_1/fc"]


def test_projection_keeps_group_norms_and_leaves_free_leaves_to_adam(trained):
  m, params, out, xs, ys = trained
  init = group_norms(params, nap_mask)
  assert sorted(init) == ["block_0/fc", "block_1/fc", "residual"]
  free = _train(m, params, optax.adam(0.05), xs, ys)
  moved = group_norms(free, nap_mask)
  assert all(abs(float(moved[g] / init[g]) - 1) > 0.05 for g in init)  # so the check can fail
  after = group_norms(out, nap_mask)
  for g in init:  # float32 norms of ≤ 2k entries: ~1e-7 relative
    assert abs(float(after[g] / init[g]) - 1) < 1e-6, g
  # One step from the same point: leaves outside every group get exactly Adam's update.
  g = jax.grad(_loss(m, xs, ys))(params)
  u_ref, _ = optax.adam(0.05).update(g, optax.adam(0.05).init(params), params)
  tx = optax.chain(optax.adam(0.05), nap_project())
  u, _ = tx.update(g, tx.init(params), params)
  lab = jax.tree.leaves(nap_mask(params), is_leaf=lambda x: x is None)
  for la, a, b in zip(lab, jax.tree.leaves(u), jax.tree.leaves(u_ref), strict=True):
    if la is None:
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("group", ["block_0/fc", "block_1/fc", "residual"])
def test_output_invariant_to_rescaling_a_projected_group(trained, group):
  m, _, params, xs, ys = trained
  labels = jax.tree.leaves(nap_mask(params), is_leaf=lambda x: x is None)
  leaves, treedef = jax.tree.flatten(params)

  def rescale(target, c):
    return treedef.unflatten([c * x if la == target else x
                              for la, x in zip(labels, leaves, strict=True)])

  y = np.asarray(m.apply(params, xs, ys)[0])
  scale = float(np.max(np.abs(y)))
  # Exact up to LayerNorm's eps = 1e-5 against the normalized inputs' variance (≥ 1e-3
  # here): the relative error is ≤ eps/(2·var) ≈ 5e-3 of the output scale at worst.
  for c in (0.5, 3.0):
    np.testing.assert_allclose(m.apply(rescale(group, c), xs, ys)[0], y, atol=5e-3 * scale)
  # A free leaf is not scale-invariant: rescaling the read-out by 3 moves the output ×3.
  q = jax.tree.map(lambda x: x, params)
  q["params"]["read_out"] = jax.tree.map(lambda w: 3.0 * w, params["params"]["read_out"])
  assert np.max(np.abs(np.asarray(m.apply(q, xs, ys)[0]) - y)) > 0.5 * scale


def test_bad_params():
  _, params, _, _ = _setup(normalize=True)
  with pytest.raises(ValueError, match="no ln_mlp layers.*normalize='nap'"):
    nap_mask(params)
  _, params, _, _ = _setup()
  with pytest.raises(ValueError, match="scale_offset=True; allowed only for ReLU MLP"):
    nap_mask(params, scale_offset=True)
  bad = dict(params["params"], block_0=dict(params["params"]["block_0"], conv={"w": 1.0}))
  with pytest.raises(ValueError, match=r"modules \['block_0/conv'\]"):
    nap_mask(bad)
