"""Registry: names, allowed keys, and the errors a config sees before compiling."""
import jax.numpy as jnp
import optax
import pytest

import jaxlab.optim as jo

EXPECTED = {"diffgrad", "mfac", "dct_lowrank", "normalized_gd", "hypergradient", "sgd", "momentum",
            "adam", "adamw", "nadamw", "lamb", "lars", "lion", "schedule_free_adamw",
            "prodigy", "dog", "dowg", "mechanic", "cocob", "dadapt_adamw"}


def test_names():
  assert set(jo.NAMES) == EXPECTED and isinstance(jo.NAMES, tuple)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_get_builds_and_hyperparameters_start_with_learning_rate(name):
  assert jo.hyperparameters(name)[0] == "learning_rate"
  tx = jo.get(name, learning_rate=1e-3, extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  assert isinstance(tx, (optax.GradientTransformation, optax.GradientTransformationExtraArgs))
  assert set(jo.STATIC_ARGS.get(name, ())) <= set(jo.hyperparameters(name))


def test_unknown_name_lists_allowed():
  with pytest.raises(ValueError, match="unknown: allowed diffgrad, mfac"):
    jo.get("adamm", learning_rate=1e-3)
  with pytest.raises(ValueError, match="allowed diffgrad"):
    jo.hyperparameters("nope")


def test_unknown_hyperparameter_lists_allowed():
  with pytest.raises(ValueError, match=r"lr not accepted by optimizer 'adam': allowed learning_rate, b1"):
    jo.get("adam", lr=1e-3)


@pytest.mark.parametrize("name", ["adam", "diffgrad", "lamb"])
def test_negative_or_missing_learning_rate(name):
  with pytest.raises(ValueError, match="negative"):
    jo.get(name, learning_rate=-1e-3)
  with pytest.raises(ValueError, match="learning_rate"):
    jo.get(name)


def test_hypergradient_inner_by_name():
  with pytest.raises(ValueError, match="inner='rmsprop'"):
    jo.get("hypergradient", learning_rate=1e-2, inner="rmsprop")
  tx = jo.get("hypergradient", learning_rate=1e-2, inner="sgd", hypergrad_lr=0.0)
  p = {"w": jnp.ones(2)}
  u, _ = tx.update(p, tx.init(p), p)
  assert jnp.allclose(u["w"], -1e-2)  # SGD direction, alpha unchanged on step 1


def test_lamb_trust_ratio_mask_skips_masked_leaves():
  p = {"w": jnp.full((3,), 10.0), "b": jnp.full((3,), 10.0)}
  g = {"w": jnp.ones(3), "b": jnp.ones(3)}
  mask = {"w": True, "b": False}
  tx = jo.get("lamb", learning_rate=1.0, trust_ratio_mask=mask)
  u, _ = tx.update(g, tx.init(p), p)
  # Adam's first step is sign(g) = 1; the trust ratio ||w|| / ||u|| = 10 scales only "w".
  assert jnp.allclose(u["b"], -1.0, rtol=1e-4) and jnp.allclose(u["w"], -10.0, rtol=1e-4)


def test_normalized_gd_without_extra_args_points_to_margins():
  # A generic loop (experiments' --config.optimizer.name) passes no margins: refuse up front.
  with pytest.raises(ValueError, match=r"'normalized_gd' needs margins=.*generic train loop.*"
                                       r"extra_args=\('margins',\)"):
    jo.get("normalized_gd", learning_rate=1.0)
  tx = jo.get("normalized_gd", learning_rate=1.0, extra_args=("margins",))
  p = {"w": jnp.zeros(2)}
  u, _ = tx.update({"w": jnp.ones(2)}, tx.init(p), p, margins=jnp.zeros(4))
  assert jnp.allclose(u["w"], -2.0)  # beta = 1 / sigmoid(0) = 2 at zero margins


def test_mfac_under_inject_hyperparams_names_static_args():
  with pytest.raises(ValueError, match=r"num_grads=.*jax array.*STATIC_ARGS\['mfac'\].*"
                                       r"static_args=jaxlab.optim.STATIC_ARGS\['mfac'\]"):
    optax.inject_hyperparams(jo.mfac)(learning_rate=1e-2, num_grads=8).init({"w": jnp.ones(4)})
  with pytest.raises(ValueError, match="STATIC_ARGS"):
    optax.inject_hyperparams(jo.factory("mfac"))(learning_rate=1e-2, num_grads=8).init(
        {"w": jnp.ones(4)})
  tx = optax.inject_hyperparams(jo.mfac, static_args=jo.STATIC_ARGS["mfac"])(
      learning_rate=1e-2, num_grads=8)
  p = {"w": jnp.ones(4)}
  u, _ = tx.update(p, tx.init(p), p)
  assert u["w"].shape == (4,)
