"""Misuse fails loudly before compiling: non-finite hyperparameters and non-float params."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlab.optim as jo
from jaxlab.optim import schedules

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("name", jo.NAMES)
@pytest.mark.parametrize("bad", [NAN, INF, -INF, 1e999, np.float32("nan")])
def test_every_optimizer_rejects_a_non_finite_learning_rate(name, bad):
  with pytest.raises(ValueError, match=r"learning_rate=.*(not finite|negative)"):
    jo.get(name, learning_rate=bad)


@pytest.mark.parametrize("name,arg", [
    ("adam", "b1"), ("adam", "eps"), ("adamw", "weight_decay"), ("nadamw", "b2"),
    ("lion", "b2"), ("lamb", "eps"), ("lars", "weight_decay"), ("sgd", "momentum"),
    ("momentum", "momentum"), ("schedule_free_adamw", "b1"), ("diffgrad", "eps"),
    ("diffgrad", "weight_decay"), ("mfac", "damping"), ("mfac", "momentum"),
    ("dct_lowrank", "scale"), ("dct_lowrank", "b2"), ("hypergradient", "hypergrad_lr"),
])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_float_hyperparameters_are_rejected(name, arg, bad):
  with pytest.raises(ValueError, match=rf"{arg}={bad!r} is not finite: allowed a finite number"):
    jo.get(name, learning_rate=1e-3, **{arg: bad})


@pytest.mark.parametrize("factory,arg", [
    (jo.scale_by_diffgrad, "b1"), (jo.scale_by_mfac, "damping"), (jo.scale_by_dct_lowrank, "scale"),
    (jo.scale_by_hypergradient, "learning_rate"), (jo.diffgrad, "learning_rate"),
])
def test_transforms_called_directly_reject_nan(factory, arg):
  with pytest.raises(ValueError, match=rf"{arg}=nan is not finite"):
    factory(**{arg: NAN})


def _int_params():
  return {"layer": {"w": jnp.zeros((4, 3), jnp.int32)}, "b": jnp.zeros(3)}


@pytest.mark.parametrize("name", jo.NAMES)
def test_every_optimizer_init_rejects_int_params_naming_the_leaf(name):
  tx = jo.get(name, learning_rate=1e-3, extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  with pytest.raises(ValueError, match=r"params leaf \['layer'\]\['w'\] has dtype int32: .*floating-point"):
    tx.init(_int_params())
  # init runs at trace time, so the error comes before any compile under jit too.
  with pytest.raises(ValueError, match=r"\['layer'\]\['w'\] has dtype int32"):
    jax.jit(tx.init)(_int_params())


@pytest.mark.parametrize("name", jo.NAMES)
def test_inject_hyperparams_factory_rejects_int_params(name):
  tx = optax.inject_hyperparams(jo.factory(name), static_args=jo.STATIC_ARGS.get(name, ()))(
      learning_rate=1e-3)
  with pytest.raises(ValueError, match=r"\['layer'\]\['w'\] has dtype int32"):
    tx.init(_int_params())


@pytest.mark.parametrize("transform", [
    jo.scale_by_diffgrad(), jo.scale_by_mfac(num_grads=4), jo.scale_by_dct_lowrank(rank=2),
    jo.scale_by_hypergradient(), jo.scale_by_normalized_gd(),
])
def test_our_transforms_reject_int_params_directly(transform):
  with pytest.raises(ValueError, match=r"\['layer'\]\['w'\] has dtype int32"):
    transform.init(_int_params())


def test_float_dtypes_and_python_float_leaves_are_accepted():
  params = {"a": jnp.zeros(2, jnp.bfloat16), "b": jnp.zeros(2, jnp.float16), "c": 1.0}
  jo.get("adam", learning_rate=1e-3).init(params)
  with pytest.raises(ValueError, match=r"params leaf \['d'\] has dtype bool"):
    jo.get("sgd", learning_rate=1e-3).init({**params, "d": jnp.zeros(2, bool)})


def test_traced_hyperparameters_are_not_checked_in_python():
  p = {"w": jnp.ones(3)}
  # Values under optax.inject_hyperparams are arrays, set or traced: no Python-level check.
  tx = optax.inject_hyperparams(jo.factory("diffgrad"))(learning_rate=0.1, b1=0.9)
  state = jax.jit(tx.init)(p)
  u, state = jax.jit(tx.update)(p, state, p)
  assert np.all(np.isfinite(u["w"]))
  state.hyperparams["learning_rate"] = jnp.asarray(jnp.nan)
  u, _ = jax.jit(tx.update)(p, state, p)
  assert np.all(np.isnan(u["w"]))  # a NaN array reaches the update; the train loop catches it

  @jax.jit
  def step(lr, damping):
    tx = jo.get("mfac", learning_rate=lr, num_grads=2, damping=damping)
    return tx.update(p, tx.init(p), p)[0]

  assert np.all(np.isfinite(step(0.1, 1e-3)["w"]))


@pytest.mark.parametrize("build", [
    lambda v: schedules.linear_decay(v, 10),
    lambda v: schedules.rex(v, 10),
    lambda v: schedules.wsd(v, 5, 5),
    lambda v: schedules.infinite(v, 0.5, 2, 2),
    lambda v: schedules.infinite(1.0, 0.5, 2, 2, end_value=v),
    lambda v: schedules.linear_decay(1.0, 10, warmup_steps=2, init_value=v),
    lambda v: schedules.power(4.0, -0.5, v),
    lambda v: schedules.power(4.0, v, 0.02),
    lambda v: schedules.power(4.0, -0.5, 0.02, units_per_step=v),
])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_schedules_reject_non_finite_values(build, bad):
  with pytest.raises(ValueError, match=r"=(nan|inf) is not (finite|allowed)"):
    build(bad)
