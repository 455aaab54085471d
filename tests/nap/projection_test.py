"""nap_project: norms restored, other leaves untouched, scale invariance, composition."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import models, optim
from jaxlab.nap import group_norms, nap_mask, nap_project, resolve_groups


def _mlp(normalize=True, sizes=(32, 16)):
  model = models.mlp(12, sizes, 5, normalize=normalize)
  return model, model.init(jax.random.key(0))


def _grads(params, seed):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])


def _run(tx, params, steps=5, **extra):
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(lambda g: g * (1.0 + i), GRADS[0])
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  for i in range(steps):
    params, state = step(params, state, jnp.float32(i))
  return params, state


GRADS = []


@pytest.fixture(autouse=True)
def _fixed_grads():
  if not GRADS:
    GRADS.append(_grads(_mlp()[1], 1))
  yield


def test_projected_groups_keep_initial_norm():
  _, params = _mlp()
  init = group_norms(params, nap_mask)
  assert sorted(init) == ["dense_0", "dense_1"]
  # lr 0.3 moves the weights far: without projection the norms change by > 10%.
  free, _ = _run(optax.adam(0.3), params)
  moved = group_norms(free, nap_mask)
  assert all(abs(float(moved[g] / init[g]) - 1) > 0.1 for g in init)
  out, _ = _run(optax.chain(optax.adam(0.3), nap_project()), params)
  after = group_norms(out, nap_mask)
  for g in init:  # float32: the norm of ~600 rounded entries is exact to ~1e-7 relative
    assert abs(float(after[g] / init[g]) - 1) < 1e-6, g


def test_leafwise_labels_each_leaf_keeps_its_norm():
  _, params = _mlp()
  labels = {k: {n: (n == "kernel" and k.startswith("dense")) for n in v} for k, v in params.items()}
  out, _ = _run(optax.chain(optax.sgd(0.5), nap_project(labels)), params)
  for k in ("dense_0", "dense_1"):
    ratio = float(jnp.linalg.norm(out[k]["kernel"]) / jnp.linalg.norm(params[k]["kernel"]))
    assert abs(ratio - 1) < 1e-6


def test_matches_numpy_reference_and_leaves_others_untouched():
  _, params = _mlp()
  grads = GRADS[0]
  base = optax.adam(0.3)
  u_ref, _ = base.update(grads, base.init(params), params)
  tx = optax.chain(optax.adam(0.3), nap_project())
  u, _ = tx.update(grads, tx.init(params), params)
  labels = nap_mask(params)
  for k in params:
    for n in params[k]:
      if labels[k][n] is None:  # readout, last LayerNorm: bit-identical to Adam's update
        np.testing.assert_array_equal(u[k][n], u_ref[k][n])
  # The group dense_1 = (kernel, bias), projected jointly, in float64 numpy.
  p = [np.asarray(params["dense_1"][n], np.float64) for n in ("kernel", "bias")]
  d = [np.asarray(u_ref["dense_1"][n], np.float64) for n in ("kernel", "bias")]
  rho = np.sqrt(sum((x ** 2).sum() for x in p))
  new = [x + y for x, y in zip(p, d, strict=True)]
  scale = rho / np.sqrt(sum((x ** 2).sum() for x in new))
  for n, _, y in zip(("kernel", "bias"), p, new, strict=True):
    np.testing.assert_allclose(params["dense_1"][n] + u["dense_1"][n], y * scale, atol=2e-6)


def test_output_invariant_to_rescaling_projected_groups():
  model, params = _mlp()
  x = jax.random.normal(jax.random.key(3), (64, 12))
  # Train a little so biases are non-zero and the check is not trivial.
  params, _ = _run(optax.chain(optax.adam(0.05), nap_project()), params)
  y, _ = model.apply(params, x)
  for group, c in (("dense_0", 3.7), ("dense_1", 0.2)):
    scaled = dict(params, **{group: jax.tree.map(lambda w, c=c: c * w, params[group])})
    y2, _ = model.apply(scaled, x)
    # LayerNorm eps=1e-6 against pre-activation variances O(1): ~1e-5 relative.
    np.testing.assert_allclose(y2, y, rtol=1e-4, atol=1e-4)
  # The free groups are not scale-invariant (so the check above can fail).
  for group in ("readout", "norm_1"):
    scaled = dict(params, **{group: jax.tree.map(lambda w: 3.7 * w, params[group])})
    assert float(jnp.max(jnp.abs(model.apply(scaled, x)[0] - y))) > 1e-2
  plain, pp = _mlp(normalize=False)
  scaled = dict(pp, dense_0=jax.tree.map(lambda w: 3.7 * w, pp["dense_0"]))
  assert float(jnp.max(jnp.abs(plain.apply(scaled, x)[0] - plain.apply(pp, x)[0]))) > 1e-2


def test_scale_offset_pair_is_jointly_invariant_with_relu():
  model, params = _mlp()  # at init the next layer's bias is 0: the symmetry is exact
  x = jax.random.normal(jax.random.key(4), (64, 12))
  params = dict(params, norm_0={"scale": params["norm_0"]["scale"] * 1.3 + 0.1,
                                "bias": params["norm_0"]["bias"] + 0.2})
  scaled = dict(params, norm_0=jax.tree.map(lambda w: 2.5 * w, params["norm_0"]))
  np.testing.assert_allclose(model.apply(scaled, x)[0], model.apply(params, x)[0],
                             rtol=1e-4, atol=1e-4)


def test_gradient_orthogonal_to_projected_groups():
  # Scale invariance implies <∇_θ L, θ> = 0 for each projected group (the
  # reason the unprojected norm can only grow under SGD).
  model, params = _mlp()
  x = jax.random.normal(jax.random.key(5), (64, 12))
  y = jnp.arange(64) % 5
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[0], y).mean()
  g = jax.jit(jax.grad(loss))(params)
  for group in ("dense_0", "dense_1"):
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g[group]),
                                             jax.tree.leaves(params[group]), strict=True))
    gn = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(g[group])))
    pn = group_norms(params, nap_mask)[group]
    assert abs(float(dot / (gn * pn))) < 1e-4
  dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g["readout"]),
                                           jax.tree.leaves(params["readout"]), strict=True))
  assert abs(float(dot)) > 1e-3


@pytest.mark.parametrize("name", optim.NAMES)
def test_composes_with_every_registered_optimizer_under_jit(name):
  _, params = _mlp()
  # normalized_gd reads per-example margins as an extra argument of update.
  needs = optim.registry.EXTRA_ARGS.get(name, ())
  base = optim.get(name, learning_rate=1e-2, **({"extra_args": needs} if needs else {}))
  extra = {"margins": jnp.ones(8)} if "margins" in needs else {}
  out, _ = _run(optax.chain(base, nap_project()), params, steps=3, **extra)
  init, after = group_norms(params, nap_mask), group_norms(out, nap_mask)
  for g in init:
    assert abs(float(after[g] / init[g]) - 1) < 1e-6, (name, g)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


def test_inject_hyperparams_and_no_recompile():
  _, params = _mlp()
  tx = optax.inject_hyperparams(
      lambda learning_rate: optax.chain(optax.adam(learning_rate), nap_project()))(
          learning_rate=0.1)
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(GRADS[0], state, params)
    return optax.apply_updates(params, updates), state

  p1, state = step(params, state)
  state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
  p2, state = step(p1, state)
  assert len(traces) == 1
  # lr 0 after a projected step: the params stay (already on the sphere).
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  init, after = group_norms(params, nap_mask), group_norms(p1, nap_mask)
  assert all(abs(float(after[g] / init[g]) - 1) < 1e-6 for g in init)


def test_bad_input():
  _, params = _mlp()
  tx = nap_project()
  with pytest.raises(ValueError, match="update needs params.*got params=None"):
    tx.update(GRADS[0], tx.init(params), None)
  with pytest.raises(ValueError, match="labels: structure"):
    nap_project({"dense_0": "a"}).init(params)
  with pytest.raises(ValueError, match=r"labels: leaf 3 \(int\); allowed"):
    resolve_groups(params, jax.tree.map(lambda _: 3, params))
  _, plain = _mlp(normalize=False)
  with pytest.raises(ValueError, match="no norm_i layers.*normalize=True"):
    nap_mask(plain)
  with pytest.raises(ValueError, match=r"unknown modules \['conv'\]"):
    nap_mask(dict(params, conv={"kernel": jnp.ones(3)}))
  zero = {"w": jnp.zeros(3), "v": jnp.ones(2)}
  with pytest.raises(ValueError, match="group 'z' has initial norm 0.0"):
    nap_project({"w": "z", "v": None}).init(zero)


def test_sgd_on_projected_group_never_leaves_sphere_while_unprojected_grows():
  # Unprojected SGD on a scale-invariant group grows its norm every step
  # (‖θ − ηg‖² = ‖θ‖² + η²‖g‖² since g ⊥ θ); NaP holds it.
  model, params = _mlp()
  x = jax.random.normal(jax.random.key(6), (64, 12))
  y = jnp.arange(64) % 5
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[0], y).mean()
  for tx, grows in ((optax.sgd(0.5), True), (optax.chain(optax.sgd(0.5), nap_project()), False)):

    @jax.jit
    def step(p, s, tx=tx):
      u, s = tx.update(jax.grad(loss)(p), s, p)
      p = optax.apply_updates(p, u)
      return p, s, group_norms(p, nap_mask)["dense_1"]

    p, s = params, tx.init(params)
    norms = [float(group_norms(p, nap_mask)["dense_1"])]
    for _ in range(5):
      p, s, n = step(p, s)
      norms.append(float(n))
    if grows:
      assert all(b > a for a, b in zip(norms, norms[1:], strict=False))
    else:
      assert max(abs(n / norms[0] - 1) for n in norms) < 1e-6
