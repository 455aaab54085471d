"""Recipes: out-of-range labels and non-finite learning rates fail loudly."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import train
from jaxlab.train import recipes

C = 4
_rng = np.random.default_rng(0)
X = _rng.standard_normal((16, 3)).astype(np.float32)
Y = (np.arange(16) % C).astype(np.int32)
PARAMS = {"w": jnp.asarray(_rng.standard_normal((3, C)), jnp.float32), "b": jnp.zeros((1, C))}


def apply_fn(params, x):
  return x @ params["w"] + params["b"], {}


def _numpy_cross_entropy(params, x, y):
  z = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"])
  log_p = z - z.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  return -log_p[np.arange(len(y)), y].mean()


def test_valid_labels_give_the_usual_cross_entropy():
  loss_fn = recipes.classification_loss(apply_fn)
  loss, aux = loss_fn(PARAMS, {"x": X, "y": Y}, None)
  # float32 logits of size ~3: relative error ~1e-6; 1e-5 leaves room.
  np.testing.assert_allclose(float(loss), _numpy_cross_entropy(PARAMS, X, Y), rtol=1e-5)
  assert 0.0 <= float(aux["accuracy"]) <= 1.0


@pytest.mark.parametrize("bad", [-1, C, C + 7])
def test_an_out_of_range_label_makes_loss_and_gradient_nan(bad):
  loss_fn = recipes.classification_loss(apply_fn)
  y = Y.copy()
  y[5] = bad
  loss, _ = loss_fn(PARAMS, {"x": X, "y": y}, None)
  assert np.isnan(float(loss))
  # The gradient goes NaN too, so the parameters do and the loop's last-step check sees it.
  grads = jax.grad(lambda p: loss_fn(p, {"x": X, "y": y}, None)[0])(PARAMS)
  assert all(np.isnan(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.isfinite(float(jax.jit(loss_fn)(PARAMS, {"x": X, "y": Y}, None)[0]))


def test_bad_label_stops_the_run_naming_the_step():
  import optax

  def batch_fn(t):
    y = Y.copy()
    if t == 6:  # the 7th update, between log steps 5 and 10
      y[0] = -1
    return {"x": X, "y": y}

  with pytest.raises(train.NonFiniteError, match=r"step 7\b.*loss=nan"):
    train.train(recipes.classification_loss(apply_fn), PARAMS, optax.sgd(0.1), batch_fn,
                num_steps=12, key=jax.random.key(0), log_every=5, progress=False)


def test_classification_eval_matches_numpy_on_valid_labels():
  out = recipes.classification_eval(apply_fn, X, Y, "val")(PARAMS)
  np.testing.assert_allclose(float(out["val_loss"]), _numpy_cross_entropy(PARAMS, X, Y), rtol=1e-5)
  assert set(out) == {"val_loss", "val_accuracy"}


def test_classification_eval_rejects_negative_labels_at_construction():
  y = Y.copy()
  y[[1, 2]] = [-1, -3]
  with pytest.raises(ValueError, match=r"y has 2 label\(s\) out of range, values -3, -1; allowed: labels in \[0, "):
    recipes.classification_eval(apply_fn, X, y)


def test_classification_eval_rejects_labels_past_the_class_count_at_first_call():
  y = Y.copy()
  y[3] = C
  eval_fn = recipes.classification_eval(apply_fn, X, y)  # no params yet: C is unknown
  with pytest.raises(ValueError, match=rf"values {C}; allowed: labels in \[0, {C}\)"):
    eval_fn(PARAMS)


def test_classification_eval_rejects_float_labels():
  with pytest.raises(ValueError, match="y has dtype float32; allowed: integer"):
    recipes.classification_eval(apply_fn, X, Y.astype(np.float32))


def _opt(lr):
  return types.SimpleNamespace(name="adam", learning_rate=lr, schedule="constant", warmup_steps=0)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 1e999, -0.1, 0.0, "1e-3", True])
def test_check_optimizer_config_rejects_bad_learning_rates(lr):
  with pytest.raises(ValueError, match=r"'optimizer.learning_rate': .*allowed: a number > 0 that is finite"):
    recipes.check_optimizer_config(_opt(lr))


@pytest.mark.parametrize("lr", [float("nan"), 1e999, -float("inf")])
def test_check_optimizer_config_says_not_finite(lr):
  with pytest.raises(ValueError, match=rf"'optimizer.learning_rate': {lr!r}, which is not finite"):
    recipes.check_optimizer_config(_opt(lr))


def test_check_optimizer_config_accepts_a_finite_positive_learning_rate():
  recipes.check_optimizer_config(_opt(3e-4))
  recipes.check_optimizer_config(_opt(np.float32(1e-3)))


def test_make_schedule_rejects_nan():
  with pytest.raises(ValueError, match="learning_rate=nan; allowed: a finite number"):
    recipes.make_schedule("cosine", float("nan"), 100)
