"""ICLTransformer: shapes, tokenization, causality, per-layer hidden states."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.models.transformer import Block, ICLTransformer, interleave

B, N, D = 3, 6, 4


def _model(**kw):
  args = dict(num_layers=2, num_heads=2, width=16, max_points=N)
  args.update(kw)
  return ICLTransformer(**args)


def _data(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (B, N, D)), jax.random.normal(k2, (B, N))


def test_interleave_is_garg_tokenization():
  xs, ys = _data()
  tok = np.asarray(interleave(xs, ys))
  assert tok.shape == (B, 2 * N, D)
  np.testing.assert_array_equal(tok[:, 0::2], xs)
  np.testing.assert_array_equal(tok[:, 1::2, 0], ys)
  assert np.all(tok[:, 1::2, 1:] == 0)


@pytest.mark.parametrize("normalize", [True, False])
def test_shapes_and_hidden_states(normalize):
  m = _model(normalize=normalize)
  xs, ys = _data()
  params = m.init(jax.random.key(1), xs, ys)
  preds, hidden = m.apply(params, xs, ys)
  assert preds.shape == (B, N) and hidden.shape == (3, B, 2 * N, 16)
  has_ln = any("LayerNorm" in k or "ln" in k for k in str(jax.tree_util.tree_structure(params)).split("'"))
  assert has_ln == normalize
  # The last hidden state read out through the module's head reproduces the prediction.
  again = m.apply(params, hidden[-1], method=ICLTransformer.readout)
  np.testing.assert_allclose(again, preds, rtol=1e-6, atol=1e-6)
  # hidden[l] really is layer l's output: perturbing block 1's weights leaves hidden[0:2] alone.
  p2 = jax.tree_util.tree_map(lambda x: x, params)
  p2["params"]["block_1"]["fc_out"]["bias"] = p2["params"]["block_1"]["fc_out"]["bias"] + 1.0
  _, h2 = m.apply(p2, xs, ys)
  np.testing.assert_allclose(h2[:2], hidden[:2], rtol=0, atol=0)
  assert np.max(np.abs(h2[2] - hidden[2])) > 0.5


def test_causality_prediction_i_ignores_later_tokens():
  m = _model()
  xs, ys = _data()
  params = m.init(jax.random.key(1), xs, ys)
  preds, hidden = m.apply(params, xs, ys)
  i = 3
  # Change y_i (token 2i+1) and everything after: predictions 0..i unchanged.
  xs2 = xs.at[:, i + 1:].add(5.0)
  ys2 = ys.at[:, i:].add(5.0)
  preds2, hidden2 = m.apply(params, xs2, ys2)
  np.testing.assert_allclose(preds2[:, : i + 1], preds[:, : i + 1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(hidden2[:, :, : 2 * i + 1], hidden[:, :, : 2 * i + 1],
                             rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(preds2[:, i + 1:] - preds[:, i + 1:])) > 1e-3
  # Jacobian check: d pred_i / d y_j = 0 for j >= i, nonzero for some j < i.
  jac = jax.jacrev(lambda y: m.apply(params, xs, y)[0][0])(ys)[:, 0]  # (N_pred, N_y)
  jac = np.asarray(jac)
  assert np.all(np.triu(jac) == 0)
  assert np.any(np.abs(np.tril(jac, -1)) > 0)


def test_bad_config_and_inputs_raise():
  xs, ys = _data()
  with pytest.raises(ValueError, match="num_heads"):
    _model(width=15, num_heads=2).init(jax.random.key(0), xs, ys)
  with pytest.raises(ValueError, match="max_points"):
    _model(max_points=N - 1).init(jax.random.key(0), xs, ys)
  with pytest.raises(ValueError, match="xs, ys"):
    _model().init(jax.random.key(0), xs, ys[:, :-1])
  with pytest.raises(ValueError, match="num_layers"):
    _model(num_layers=0).init(jax.random.key(0), xs, jnp.asarray(ys))


def _ln(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_normalize_nap_puts_layernorm_before_the_mlp_nonlinearity():
  xs, ys = _data()
  params = _model(normalize="nap", num_layers=1).init(jax.random.key(1), xs, ys)
  p = params["params"]["block_0"]
  assert set(p) == {"attn", "ln1", "ln2", "ln_mlp", "fc", "fc_out"}
  # Move the LayerNorm's scale/offset off their init so the reference below sees them.
  k1, k2 = jax.random.split(jax.random.key(2))
  p["ln_mlp"] = {"scale": 1 + 0.3 * jax.random.normal(k1, (64,)),
                 "bias": 0.2 * jax.random.normal(k2, (64,))}
  # Independent numpy reference of block 0's MLP branch on a hidden state h:
  # h + fc_out(gelu(LN_mlp(fc(LN2(h))))); the attention branch is read off the module.
  h = np.asarray(jax.random.normal(jax.random.key(3), (B, 2 * N, 16)))
  block = Block(num_heads=2, width=16, normalize="nap")
  out = np.asarray(block.apply({"params": p}, jnp.asarray(h)))
  attn_only = np.asarray(block.apply({"params": dict(p, fc_out={
      "kernel": jnp.zeros_like(p["fc_out"]["kernel"]), "bias": jnp.zeros(16)})}, jnp.asarray(h)))
  a = attn_only  # = h + attn(LN1(h))
  f = {k: {n: np.asarray(v, np.float64) for n, v in p[k].items()}
       for k in ("ln2", "ln_mlp", "fc", "fc_out")}
  pre = _ln(a, f["ln2"]["scale"], f["ln2"]["bias"]) @ f["fc"]["kernel"] + f["fc"]["bias"]
  mlp = _gelu_tanh(_ln(pre, f["ln_mlp"]["scale"], f["ln_mlp"]["bias"])) @ f["fc_out"]["kernel"]
  np.testing.assert_allclose(out, a + mlp + f["fc_out"]["bias"], rtol=1e-4, atol=1e-5)


def test_normalize_nap_default_unchanged_and_fc_scale_invariant():
  xs, ys = _data()
  ref = _model()  # the default is GPT-2's block, no ln_mlp
  params = ref.init(jax.random.key(1), xs, ys)
  assert "ln_mlp" not in params["params"]["block_0"]
  assert ref.normalize is True
  nap = _model(normalize="nap")
  pn = nap.init(jax.random.key(1), xs, ys)
  # The parameters the two share are drawn identically (ln_mlp only adds leaves).
  for b in ("block_0", "block_1"):
    for k, v in params["params"][b].items():
      for a, c in zip(jax.tree.leaves(v), jax.tree.leaves(pn["params"][b][k]), strict=True):
        np.testing.assert_array_equal(a, c)
  y, _ = nap.apply(pn, xs, ys)
  assert np.max(np.abs(np.asarray(y) - np.asarray(ref.apply(params, xs, ys)[0]))) > 1e-4

  def scale_fc(p, c):
    q = jax.tree.map(lambda x: x, p)
    q["params"]["block_1"]["fc"] = jax.tree.map(lambda w: c * w, p["params"]["block_1"]["fc"])
    return q

  # fc feeds ln_mlp under "nap": rescaling it leaves the output alone up to LayerNorm's eps
  # (1e-5 against fc's pre-activation variance ≈ 64·0.02²·(1 + ...) ≈ 0.03: ~2e-4 relative).
  scale = float(np.max(np.abs(np.asarray(y))))
  np.testing.assert_allclose(nap.apply(scale_fc(pn, 3.0), xs, ys)[0], y, atol=2e-3 * scale)
  # Without ln_mlp the same rescaling changes the predictions by far more.
  y0 = np.asarray(ref.apply(params, xs, ys)[0])
  assert np.max(np.abs(np.asarray(ref.apply(scale_fc(params, 3.0), xs, ys)[0]) - y0)) > 0.05 * scale


def test_normalize_bad_value_raises():
  xs, ys = _data()
  with pytest.raises(ValueError, match=r"normalize='post'; allowed: \(True, False, 'nap'\)"):
    _model(normalize="post").init(jax.random.key(0), xs, ys)
