"""NaP on flax models with no hand-written labels: linen SmallCNN, an nnx CNN, misuse caught."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlab import models, nap, train
from jaxlab.models.cnn import SmallCNN, linen_classifier_loss, linen_init, nnx_classifier_loss
from jaxlab.models.transformer import ICLTransformer
from jaxlab.nap import PerChannel

X = jax.random.normal(jax.random.key(1), (32, 8, 8, 1))
Y = jnp.arange(32) % 10


class NnxCNN(nnx.Module):
  """Conv → BatchNorm → ReLU twice, then a Sequential (Linear → LayerNorm → ReLU), a readout."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(16, rngs=rngs)
    self.mlp = nnx.Sequential(nnx.Linear(16, 12, rngs=rngs), nnx.LayerNorm(12, rngs=rngs),
                              nnx.relu)
    self.head = nnx.Linear(12, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return self.head(self.mlp(x.mean(axis=(1, 2))))


def _linen():
  module = SmallCNN(features=(8, 16))
  params, state = linen_init(module, jax.random.key(0), X)
  return linen_classifier_loss(module), params, state


def _nnx():
  graphdef, params, state = nnx.split(NnxCNN(nnx.Rngs(0)), nnx.Param, ...)
  return nnx_classifier_loss(graphdef), params, state


def _train(loss_fn, params, state, tx, steps=5):
  batch = {"x": X, "y": Y}

  @jax.jit
  def step(p, s, o, k):
    (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, batch, k, state=s, train=True)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), aux["state"], o

  opt_state = tx.init(params)
  for i in range(steps):
    params, state, opt_state = step(params, state, opt_state, jax.random.key(i))
  return params, state, opt_state


def _np_module(params, *path):
  """{leaf: float64 array} of one module, nnx Variables unwrapped."""
  sub = params
  for k in path:
    sub = sub[k]
  return {n: np.asarray(v[...] if isinstance(v, nnx.Variable) else v, np.float64)
          for n, v in sub.items()}


def _np_channel_norms(mod):
  """Per output channel: sqrt(Σ_{h,w,i} kernel² + bias²), the numpy reference."""
  k = mod["kernel"]
  return np.sqrt((k.reshape(-1, k.shape[-1]) ** 2).sum(0) + mod["bias"] ** 2)


def _np_layer_norm(mod):
  return np.sqrt(sum((v ** 2).sum() for v in mod.values()))


def _flat_labels(labels):
  return {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_flatten_with_path(labels, is_leaf=lambda x: x is None)[0]}


def test_labels_derived_for_linen_smallcnn():
  _, params, _ = _linen()
  labels = nap.default_labels(params)
  assert labels == {
      "Conv_0": {"kernel": PerChannel("Conv_0"), "bias": PerChannel("Conv_0")},
      "Conv_1": {"kernel": PerChannel("Conv_1"), "bias": PerChannel("Conv_1")},
      "BatchNorm_0": {"scale": None, "bias": None},
      "BatchNorm_1": {"scale": None, "bias": None},
      "Dense_0": {"kernel": None, "bias": None}}  # the readout feeds no normalization: free
  assert nap.flax_labels({"params": params}) == {"params": labels}
  per_layer = nap.flax_labels(params, per_channel=False)
  assert per_layer["Conv_1"] == {"kernel": "Conv_1", "bias": "Conv_1"}
  norms = nap.group_norms(params, labels)
  assert {g: n.shape for g, n in norms.items()} == {"Conv_0": (8,), "Conv_1": (16,)}
  np.testing.assert_allclose(norms["Conv_1"], _np_channel_norms(_np_module(params, "Conv_1")),
                             rtol=1e-6)  # float32 sums of ≤ 73 squares


def test_labels_derived_for_nnx_cnn():
  _, params, _ = _nnx()
  flat = {k: v for k, v in _flat_labels(nap.default_labels(params)).items() if v is not None}
  assert flat == {
      "['conv1']['bias'].value": PerChannel("conv1"),
      "['conv1']['kernel'].value": PerChannel("conv1"),
      "['conv2']['bias'].value": PerChannel("conv2"),
      "['conv2']['kernel'].value": PerChannel("conv2"),
      # nnx.Sequential: the Linear is followed by a LayerNorm: one group per layer.
      "['mlp']['layers'][0]['bias'].value": "mlp/layers/0",
      "['mlp']['layers'][0]['kernel'].value": "mlp/layers/0"}


def test_existing_jaxlab_labels_unchanged():
  mlp = models.mlp(12, (32, 16), 5, normalize=True)
  p = mlp.init(jax.random.key(0))
  assert nap.default_labels(p) == nap.nap_mask(p)
  assert nap.flax_labels(p) == nap.nap_mask(p)  # the generic rule agrees on the MLP
  m = ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=5, normalize="nap")
  tp = m.init(jax.random.key(0), jnp.ones((2, 5, 3)), jnp.ones((2, 5)))
  assert nap.default_labels(tp) == nap.nap_mask(tp)
  assert nap.default_labels(tp["params"]) == nap.nap_mask(tp["params"])


@pytest.mark.parametrize("make", [_linen, _nnx], ids=["linen", "nnx"])
def test_adam_with_nap_keeps_every_group_norm(make):
  loss_fn, params, state = make()
  labels = nap.default_labels(params)
  groups = sorted(nap.group_norms(params, labels))
  init = {g: _ref_norms(params, g) for g in groups}
  free, _, _ = _train(loss_fn, params, state, optax.adam(0.05))
  out, _, opt_state = _train(loss_fn, params, state, nap.with_projection(optax.adam(0.05)))
  for g in groups:
    moved = _ref_norms(free, g)
    assert np.max(np.abs(moved / init[g] - 1)) > 0.05, g  # without NaP the norms move
    # float32: each channel's norm is restored to ~1e-7 relative, the update rounded after.
    np.testing.assert_allclose(_ref_norms(out, g), init[g], rtol=1e-5, err_msg=g)
  # The free leaves (readout, normalizations' scale/offset) were trained.
  flat_lab = jax.tree.leaves(labels, is_leaf=lambda x: x is None or isinstance(x, PerChannel))
  changed = [bool(np.any(np.asarray(a) != np.asarray(b))) for lab, a, b in
             zip(flat_lab, jax.tree.leaves(params), jax.tree.leaves(out), strict=True)
             if lab is None and np.asarray(a).size > 1]
  assert all(changed)
  drift = nap.check_projected(opt_state, out)
  assert max(drift.values()) < 1e-5


def _ref_norms(params, group):
  """numpy norms of a derived group: per channel for the convs, per layer otherwise."""
  path = group.split("/")
  path = [int(k) if k.isdigit() else k for k in path]
  mod = _np_module(params, *path)
  return _np_channel_norms(mod) if path[0].lower().startswith("conv") else _np_layer_norm(mod)


def test_per_channel_projection_matches_numpy():
  loss_fn, params, state = _linen()
  (_, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, {"x": X, "y": Y},
                                                        jax.random.key(0), state=state)
  u_ref, _ = optax.adam(0.3).update(g, optax.adam(0.3).init(params), params)
  tx = nap.with_projection(optax.adam(0.3))
  u, _ = tx.update(g, tx.init(params), params)
  for name in ("Conv_0", "Conv_1"):
    p, d = _np_module(params, name), _np_module(u_ref, name)
    rho = _np_channel_norms(p)
    new = {n: p[n] + d[n] for n in p}
    scale = rho / _np_channel_norms(new)  # (C,), broadcast over the kernel's H, W, I
    for n in ("kernel", "bias"):
      np.testing.assert_allclose(params[name][n] + u[name][n], new[n] * scale, atol=2e-6)
  for name in ("Dense_0", "BatchNorm_0"):  # free: bit-identical to Adam's update
    for n in u[name]:
      np.testing.assert_array_equal(u[name][n], u_ref[name][n])


def test_derived_groups_are_symmetries_and_readout_is_not():
  module = SmallCNN(features=(8, 16))
  loss_fn, params, state = _linen()
  params, state, _ = _train(loss_fn, params, state, nap.with_projection(optax.adam(0.05)), 3)

  def fn(p):  # train mode: batch statistics (BatchNorm is scale-invariant only there)
    variables = {"params": p, **state}
    return module.apply(variables, X, train=True, rngs={"dropout": jax.random.key(0)},
                        mutable=["batch_stats"])[0]

  # BatchNorm eps=1e-5 against channel variances ≥ ~1e-2: ≤ 1e-3 relative.
  out = nap.check_scale_invariance(fn, params)
  assert sorted(out) == ["Conv_0", "Conv_1"]
  wrong = jax.tree.map(lambda _: None, params)
  wrong["Dense_0"] = {"kernel": "readout", "bias": "readout"}
  with pytest.raises(ValueError, match=r"groups \['readout'\] changes the output"):
    nap.check_scale_invariance(fn, params, wrong)


def test_misplaced_projection_is_caught():
  loss_fn, params, state = _linen()
  misuse = optax.chain(nap.nap_project(), optax.adam(1e-3))
  _, _, opt_state = _train(loss_fn, params, state, misuse, steps=3)
  with pytest.raises(ValueError, match=r"left the projection's sphere.*nap_project as the last"):
    nap.check_projected(opt_state)
  # The train loop's norms hook runs the same check on its log steps.
  p, _, opt_state = _train(loss_fn, params, state, misuse, steps=2)
  hook = nap.norms_hook(1, 1e-3)
  with pytest.raises(ValueError, match="left the projection's sphere"):
    hook(2, train.TrainState(p, opt_state, jnp.int32(2), jax.random.key(0), state))
  row = nap.norms_hook(1, 1e-3, labels=nap.default_labels, check_projection=False)(
      2, train.TrainState(p, opt_state, jnp.int32(2), jax.random.key(0), state))
  # A PerChannel group is logged as one norm: sqrt(Σ_c ‖θ_c‖²).
  assert row["norm/Conv_0"] == pytest.approx(
      np.sqrt(np.sum(_np_channel_norms(_np_module(p, "Conv_0")) ** 2)), rel=1e-6)
  # Outside jit, update itself raises at the first params off the sphere.
  tx = optax.chain(nap.nap_project(), optax.adam(1e-2))
  s = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  u, s = tx.update(g, s, params)
  with pytest.raises(ValueError, match="nap_project.update: the params left"):
    tx.update(g, s, optax.apply_updates(params, u))
  # The helpers refuse a projection placed before the optimizer.
  with pytest.raises(ValueError, match=r"transforms\[0\] is a nap_project"):
    nap.chain(nap.nap_project(), optax.adam(1e-3))
  with pytest.raises(ValueError, match="is a nap_project"):
    nap.with_projection(nap.nap_project())


def test_drift_seen_under_multisteps_and_inject_hyperparams_stays_small():
  loss_fn, params, state = _linen()
  tx = optax.MultiSteps(optax.inject_hyperparams(
      lambda learning_rate: nap.with_projection(optax.adam(learning_rate)))(learning_rate=0.05),
      every_k_schedule=2)
  out, _, opt_state = _train(loss_fn, params, state, tx, steps=4)
  assert max(nap.check_projected(opt_state, out).values()) < 1e-5


def test_bad_input():
  module = SmallCNN(batch_norm=False)
  params, _ = linen_init(module, jax.random.key(0), X)
  with pytest.raises(ValueError, match="no Dense/Conv layer feeds a normalization"):
    nap.nap_project().init(params)
  ambiguous = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
               "conv_0": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
               "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
  with pytest.raises(ValueError,
                     match=r"modules \['Conv_0', 'conv_0'\] could each feed \['BatchNorm_0'\]"):
    nap.flax_labels(ambiguous)
  with pytest.raises(ValueError, match=r"PerChannel group 'g' has leaves of shapes"):
    nap.group_norms({"a": jnp.ones((2, 3)), "b": jnp.ones(4)},
                    {"a": PerChannel("g"), "b": PerChannel("g")})
  with pytest.raises(ValueError, match="labelled both as a str and as PerChannel"):
    nap.group_norms({"a": jnp.ones((2, 3)), "b": jnp.ones(3)}, {"a": PerChannel("g"), "b": "g"})
  with pytest.raises(ValueError, match="in every channel"):
    nap.nap_project({"a": PerChannel("g")}).init({"a": jnp.ones((2, 3)).at[:, 1].set(0.0)})
  with pytest.raises(ValueError, match="holds no NapProjectState"):
    nap.check_projected(optax.adam(1e-3).init(params))
  with pytest.raises(ValueError, match="no transforms"):
    nap.chain()


def test_train_loop_stops_a_misplaced_projection():
  # The user's case: optax.chain(nap_project(), optimizer) in the jitted train loop;
  # norms_hook's check stops the run at its first log step instead of letting norms drift.
  loss_fn, params, state = _linen()
  batch_fn = lambda s: {"x": X, "y": Y}  # noqa: E731
  hook = nap.norms_hook(2, 1e-3, labels=nap.default_labels)
  with pytest.raises(ValueError, match=r"left the projection's sphere \(group 'Conv_\d'"):
    train.train(loss_fn, params, optax.chain(nap.nap_project(), optax.adam(1e-3)), batch_fn,
                num_steps=6, key=jax.random.key(0), log_every=2, hooks=(hook,),
                progress=False, model_state=state)
  result = train.train(loss_fn, params, nap.with_projection(optax.adam(1e-3)), batch_fn,
                       num_steps=6, key=jax.random.key(0), log_every=2, hooks=(hook,),
                       progress=False, model_state=state)
  for g in ("Conv_0", "Conv_1"):  # float32 per-channel norms, as above
    np.testing.assert_allclose(_ref_norms(result.state.params, g), _ref_norms(params, g),
                               rtol=1e-5)


def test_model_state_tells_batchnorm_whatever_its_name():
  class Named(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
      self.norm = nnx.BatchNorm(4, rngs=rngs)  # "norm": read as per layer from the name alone
      self.out = nnx.Linear(4, 2, rngs=rngs)

  _, params, state = nnx.split(Named(nnx.Rngs(0)), nnx.Param, ...)
  by_name = {v for v in _flat_labels(nap.flax_labels(params)).values() if v is not None}
  assert by_name == {"conv"}
  with_state = _flat_labels(nap.flax_labels(params, state=state))
  assert {v for v in with_state.values() if v is not None} == {PerChannel("conv")}
  # linen: batch_stats mark BatchNorm_i; a LayerNorm has none.
  _, lp, ls = _linen()
  assert nap.flax_labels(lp, state=ls) == nap.flax_labels(lp)
  assert nap.flax_labels(lp, state={"batch_stats": {}})["Conv_0"]["kernel"] == "Conv_0"


def test_bfloat16_rounding_is_not_drift_but_misuse_is():
  # A bfloat16 channel of 10 entries: rounding the projected params moves its norm by
  # up to ~6e-3 (measured), above DRIFT_RTOL; the allowance of 4·eps absorbs it.
  k = jax.random.key(0)
  params = {"Conv_0": {"kernel": (0.3 * jax.random.normal(k, (3, 3, 1, 16))).astype(jnp.bfloat16),
                       "bias": jnp.zeros(16, jnp.bfloat16)},
            "BatchNorm_0": {"scale": jnp.ones(16, jnp.bfloat16), "bias": jnp.zeros(16, jnp.bfloat16)}}

  def run(tx, steps):
    @jax.jit
    def step(p, s, i):
      g = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype), p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for i in range(steps):
      p, s = step(p, s, i)
    return p, s

  p, s = run(nap.with_projection(optax.adam(1e-2)), 100)
  assert nap.check_projected(s, p) == {"Conv_0": 0.0}
  assert p["Conv_0"]["kernel"].dtype == jnp.bfloat16
  _, s = run(optax.chain(nap.nap_project(), optax.adam(1e-2)), 5)
  with pytest.raises(ValueError, match="left the projection's sphere"):
    nap.check_projected(s)


class LinenMixed(nn.Module):
  """Embed, Dense → LayerNorm twice, fc_out → rms_out (RMSNorm), a Dense readout."""

  @nn.compact
  def __call__(self, tok):
    x = nn.Embed(20, 16)(tok).mean(axis=1)
    x = nn.relu(nn.LayerNorm()(nn.Dense(16)(x)))
    x = nn.relu(nn.LayerNorm()(nn.Dense(16)(x)))
    x = nn.relu(nn.RMSNorm(name="rms_out")(nn.Dense(24, name="fc_out")(x)))
    return nn.Dense(5)(x)


def test_linen_embed_layernorm_rmsnorm_per_layer_groups():
  module = LinenMixed()
  tok = jax.random.randint(jax.random.key(2), (32, 6), 0, 20)
  y = jnp.arange(32) % 5
  params = module.init(jax.random.key(0), tok)["params"]
  labels = nap.default_labels(params)
  flat = {k: v for k, v in _flat_labels(labels).items() if v is not None}
  assert flat == {f"['{m}']['{n}']": m for m in ("Dense_0", "Dense_1", "fc_out")
                  for n in ("kernel", "bias")}  # Embed_0, the norms and Dense_2 free

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(module.apply({"params": p}, tok),
                                                           y).mean()

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  tx = nap.with_projection(optax.adam(0.05))
  p, s = params, tx.init(params)
  for _ in range(5):
    p, s = step(p, s)
  for m in ("Dense_0", "Dense_1", "fc_out"):  # float32 norms of ≤ 400 entries
    np.testing.assert_allclose(_np_layer_norm(_np_module(p, m)),
                               _np_layer_norm(_np_module(params, m)), rtol=1e-5)
  # LayerNorm/RMSNorm eps (1e-6) against pre-activation variances O(1e-2): ≤ 1e-3 relative.
  nap.check_scale_invariance(lambda q: module.apply({"params": q}, tok), p)
  # Mixed auto-names whose indices do not line up are refused, not guessed.
  bad = dict(params, RMSNorm_0={"scale": params["LayerNorm_0"]["scale"]})
  with pytest.raises(ValueError, match=r"module 'Dense_0' could feed each of"):
    nap.flax_labels(bad)


def test_nnx_derived_groups_are_symmetries():
  graphdef, params, state = nnx.split(NnxCNN(nnx.Rngs(0)), nnx.Param, ...)
  loss_fn = nnx_classifier_loss(graphdef)
  params, state, _ = _train(loss_fn, params, state, nap.with_projection(optax.adam(0.05)), 3)

  def fn(p):  # train mode: BatchNorm on batch statistics
    model = nnx.merge(graphdef, p, state)
    model.train()
    return model(X)

  # BatchNorm/LayerNorm eps (1e-5, 1e-6) against variances ≥ ~1e-2: ≤ 1e-3 relative.
  assert sorted(nap.check_scale_invariance(fn, params)) == ["conv1", "conv2", "mlp/layers/0"]
