"""Mixed precision: float32 masters, bfloat16 compute, float32 losses (jaxlab.models.precision).

Tolerances come from bfloat16's 8 significant bits: one rounding errs by at
most u/2 = 2^-9 ≈ 0.2% relative (u = BF16_EPS = 2^-8).
"""
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from jaxlab import train
from jaxlab.models import ICLTransformer, mlp, precision
from jaxlab.train import recipes

U = precision.BF16_EPS  # 2^-8


def _data(n=32, d=12, c=4, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return {"x": jax.random.normal(kx, (n, d)), "y": jax.random.randint(ky, (n,), 0, c)}


def _dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree) if hasattr(x, "dtype")}


def _dot_dtypes(fn, *args):
  """The operand dtypes of every dot_general in fn's jaxpr (sub-jaxprs included)."""
  found = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.parametrize("bad", ["float16", "bf16", "float64", 16, None])
def test_bad_compute_dtype_names_key_value_and_allowed(bad):
  config = ml_collections.ConfigDict({"model": {"compute_dtype": bad}})
  with pytest.raises(ValueError, match=r"'model.compute_dtype': .*allowed: \['float32', 'bfloat16'\]"):
    precision.check_config(config)
  if bad is not None:  # None is the library default (float32); only the config key refuses it
    with pytest.raises(ValueError, match=r"compute_dtype=.*allowed: one of \('float32', 'bfloat16'\)"):
      mlp(12, (8,), 4, compute_dtype=bad)


def test_study_refuses_a_bad_compute_dtype_before_compiling(tmp_path, compiles):
  from experiments import run

  with pytest.raises(ValueError, match=r"'model.compute_dtype': 'float16' is not allowed"):
    run.main(["--config=experiments/configs/mlp_mnist1d.py:quick", f"--workdir={tmp_path / 'w'}",
              "--config.model.compute_dtype=float16"])
  assert compiles == [] and not (tmp_path / "w").exists()


@pytest.mark.parametrize("make", ["mlp", "mlp_layernorm", "wrapper"])
def test_bf16_training_keeps_float32_params_and_optimizer_state(make):
  batch = _data()
  if make == "wrapper":  # a user's own float32 model, mixed precision from the loss wrapper
    model = mlp(12, (16, 16), 4)
    loss = precision.mixed_precision(recipes.classification_loss(model.apply))
  else:
    model = mlp(12, (16, 16), 4, normalize=make == "mlp_layernorm", compute_dtype="bfloat16")
    loss = recipes.classification_loss(model.apply)
  params = model.init(jax.random.key(1))
  # The products really are bfloat16 (a float32 model would have only float32 dots) ...
  assert _dot_dtypes(lambda p: loss(p, batch, None)[0], params) == {"bfloat16"}
  grads = jax.grad(lambda p: loss(p, batch, None)[0])(params)
  assert _dtypes(grads) == {"float32"}
  tx = optax.adam(1e-2)
  result = train.train(loss, params, tx, lambda step: batch, num_steps=5,
                       key=jax.random.key(0), progress=False, log_every=5)
  # ... while the master weights and Adam's moments stay float32, and training works.
  assert _dtypes(result.state.params) == {"float32"}
  assert _dtypes(result.state.opt_state) <= {"float32", "int32"}
  assert "float32" in _dtypes(result.state.opt_state)
  assert result.history[-1]["loss"] < float(loss(params, batch, None)[0])


def test_transformer_bf16_keeps_float32_params_and_float32_outputs():
  m32 = ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=5)
  m16 = ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=5, dtype=jnp.bfloat16)
  xs = jax.random.normal(jax.random.key(0), (8, 5, 3))
  ys = xs.sum(-1)
  params = m16.init(jax.random.key(1), xs, ys)
  assert _dtypes(params) == {"float32"}
  assert _dot_dtypes(lambda p: m16.apply(p, xs, ys)[0], params) == {"bfloat16"}
  p32, _ = m32.apply(params, xs, ys)
  p16, _ = m16.apply(params, xs, ys)
  assert p16.dtype == jnp.float32  # the read-out is cast, so the loss is float32
  # Relative error of the predictions, normalized by their scale: each of the 2 blocks
  # rounds its inputs, weights and products (≈ 3 roundings of ≤ 2^-9 per matmul, 4
  # matmuls per block, plus the read-in/out), accumulating like a random walk over
  # ~30 roundings: √30 · 2^-9 ≈ 1.1%; bound 4 u ≈ 1.6%. LayerNorm and softmax in
  # float32 keep it from compounding. A nonzero difference shows bf16 was used.
  err = float(jnp.linalg.norm(p16 - p32) / jnp.linalg.norm(p32))
  assert 0 < err <= 4 * U, err


def test_bf16_loss_close_to_float32():
  batch = _data(n=256, d=40, c=10)
  m32 = mlp(40, (64, 64), 10)
  m16 = mlp(40, (64, 64), 10, compute_dtype="bfloat16")
  params = m32.init(jax.random.key(2))
  l32 = float(recipes.classification_loss(m32.apply)(params, batch, None)[0])
  l16 = float(recipes.classification_loss(m16.apply)(params, batch, None)[0])
  # Logit errors: per layer the input, the weights and the product are rounded (3 · 2^-9
  # relative, worst case), over 3 layers ≤ 9 · 2^-9 ≈ 1.8% of the logit scale; the loss
  # changes by at most |Δlogit|_∞ ≲ 1.8% of |logit|_∞ (cross-entropy is 1-Lipschitz per
  # example in the ∞-norm of the logits, ×2), and the batch mean of 256 such errors of
  # random sign averages them down. Bound: 4 u ≈ 1.6% relative.
  assert 0 < abs(l16 - l32) / l32 <= 4 * U, (l16, l32)


def test_workdir_from_before_the_key_resumes_at_float32_only(tmp_path):
  from jaxlab.train import errors, io, workdir

  old = {"seed": 0, "model": {"width": 8}}
  io.write_json(str(tmp_path / "config.json"), old)
  assert workdir.check_config(str(tmp_path), {"seed": 0, "model": {
      "width": 8, "compute_dtype": "float32"}}) == {}
  io.write_json(str(tmp_path / "config.json"), old)
  with pytest.raises(errors.ConfigChangedError,
                     match=r"model.compute_dtype: '<absent>' -> 'bfloat16'"):
    workdir.check_config(str(tmp_path), {"seed": 0, "model": {
        "width": 8, "compute_dtype": "bfloat16"}})
