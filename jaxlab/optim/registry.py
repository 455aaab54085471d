"""Pick an optimizer by name: `get(name, **hyperparams)`, validated before anything compiles."""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence

import optax
import optax.contrib

from jaxlab.optim._checks import check_float_params, check_hyperparams_finite, check_learning_rate
from jaxlab.optim.dct_lowrank import dct_lowrank
from jaxlab.optim.diffgrad import diffgrad
from jaxlab.optim.hypergradient import hypergradient
from jaxlab.optim.mfac import mfac
from jaxlab.optim.normalized_gd import normalized_gd

_HD_INNER = {"sgd": optax.identity, "adam": optax.scale_by_adam}


def _hypergradient(learning_rate, hypergrad_lr=1e-7, inner="adam"):
  """`hypergradient` with the inner transform named ("sgd" or "adam") so configs can pick it."""
  if inner not in _HD_INNER:
    raise ValueError(f"inner={inner!r} is not allowed for hypergradient: allowed {sorted(_HD_INNER)}.")
  return hypergradient(learning_rate, hypergrad_lr, _HD_INNER[inner]())


def _momentum(learning_rate, momentum=0.9, nesterov=False):
  """Heavy-ball SGD (optax.sgd with momentum)."""
  return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _lamb(learning_rate, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, mask=None,
          trust_ratio_mask=None):
  """LAMB; ``trust_ratio_mask`` (pytree/callable of bools) lets e.g. biases skip layer adaptation.

  optax.lamb's ``mask`` governs only weight decay and the trust ratio hits every
  leaf; the TF reference excludes bias/LayerNorm from both, which
  ``trust_ratio_mask=mask`` reproduces.
  """
  if trust_ratio_mask is None:
    return optax.lamb(learning_rate, b1, b2, eps, weight_decay=weight_decay, mask=mask)
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.masked(optax.scale_by_trust_ratio(), trust_ratio_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


_MECHANIC_BASE = {"sgd": optax.sgd, "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
                  "adam": optax.adam, "lion": optax.lion}


def _mechanic(learning_rate=1.0, base="adam", weight_decay=0.01, eps=1e-8, s_init=1e-6,
              num_betas=6):
  """Mechanic (Cutkosky, Defazio & Mehta 2023, arXiv:2306.00144, Algorithm 1) around the base
  optimizer ``base`` run at ``learning_rate``: optax.contrib.mechanize(base(learning_rate)).

  Mechanic learns the scale s of the base updates, so the base rate stays 1.0
  (the paper's and optax's usage); a schedule here is the base schedule that s
  rescales. ``base``: "sgd", "momentum" (0.9), "adam" or "lion".
  """
  if base not in _MECHANIC_BASE:
    raise ValueError(f"base={base!r} is not allowed for mechanic: allowed {sorted(_MECHANIC_BASE)}.")
  if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
    raise ValueError(f"num_betas={num_betas!r} is not allowed for mechanic: allowed an int >= 1 "
                     "(betas 1 - 10^-1, ..., 1 - 10^-num_betas).")
  return optax.contrib.mechanize(_MECHANIC_BASE[base](learning_rate), weight_decay=weight_decay,
                                 eps=eps, s_init=s_init, num_betas=num_betas)


_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "diffgrad": diffgrad,
    "mfac": mfac,
    "dct_lowrank": dct_lowrank,
    "normalized_gd": normalized_gd,
    "hypergradient": _hypergradient,
    "sgd": optax.sgd,
    "momentum": _momentum,
    "adam": optax.adam,
    "adamw": optax.adamw,
    "nadamw": optax.nadamw,
    "lamb": _lamb,
    "lars": optax.lars,
    "lion": optax.lion,
    "schedule_free_adamw": optax.contrib.schedule_free_adamw,
    # Learning-rate-free learners (optax.contrib): learning_rate defaults to 1.0,
    # a multiplier on the step size each method estimates, so get(name) with no
    # argument is the method's published default configuration.
    "prodigy": optax.contrib.prodigy,
    "dog": optax.contrib.dog,
    "dowg": optax.contrib.dowg,
    "mechanic": _mechanic,
    "cocob": optax.contrib.cocob,
    "dadapt_adamw": optax.contrib.dadapt_adamw,
}

NAMES: tuple[str, ...] = tuple(_FACTORIES)

# Optimizers that estimate their own step size: `get(name)` needs no learning_rate.
LEARNING_RATE_FREE: tuple[str, ...] = ("prodigy", "dog", "dowg", "mechanic", "cocob",
                                       "dadapt_adamw")

# Arguments that fix shapes or Python control flow: pass them as `static_args`
# to optax.inject_hyperparams.
STATIC_ARGS: dict[str, tuple[str, ...]] = {
    "mfac": ("num_grads",),
    "dct_lowrank": ("rank", "update_every", "mask", "base_optimizer", "weight_dimension_numbers"),
    "hypergradient": ("inner",),
    "normalized_gd": ("every_k",),
    "momentum": ("nesterov",),
    "lamb": ("mask", "trust_ratio_mask"),
    "lars": ("weight_decay_mask", "trust_ratio_mask", "nesterov"),
    "adamw": ("mask", "mu_dtype", "nesterov"),
    "nadamw": ("mask", "mu_dtype", "nesterov"),
    "lion": ("mask", "mu_dtype"),
    "sgd": ("nesterov", "accumulator_dtype"),
    "adam": ("mu_dtype", "nesterov"),
    "schedule_free_adamw": ("warmup_steps", "state_dtype"),
    "prodigy": ("safeguard_warmup",),
    "dog": ("init_step", "mask"),
    "dowg": ("mask",),
    "mechanic": ("base", "num_betas"),
    "cocob": ("mask",),
}


# Optimizers whose update needs keyword arguments that a generic loop
# (jaxlab.train, the experiments' --config.optimizer.name) does not pass.
EXTRA_ARGS: dict[str, tuple[str, ...]] = {"normalized_gd": ("margins",)}


def check_extra_args(name: str, extra_args: Sequence[str] = ()) -> None:
  """Raises ValueError when optimizer `name` needs update keywords (`EXTRA_ARGS`) that are
  not in `extra_args`, the ones the caller's loop passes; a config check can call it with
  () for the generic train loop."""
  needed = EXTRA_ARGS.get(name, ())
  missing = [a for a in needed if a not in tuple(extra_args)]
  if missing:
    raise ValueError(
        f"optimizer {name!r} needs {', '.join(f'{a}=' for a in missing)} in every update: it is "
        f"an optax GradientTransformationExtraArgs called as tx.update(grads, state, params, "
        f"{missing[0]}=...) (for normalized_gd the per-example margins y_i * f(x_i; params)), "
        "and the generic train loop (jaxlab.train, --config.optimizer.name) passes none, so it "
        f"cannot train with {name!r}. In a loop of your own that passes them, build it with "
        f"jaxlab.optim.get({name!r}, learning_rate=..., extra_args={tuple(needed)!r}) or "
        f"jaxlab.optim.{name}(learning_rate).")


def _check_name(name: str) -> None:
  if name not in _FACTORIES:
    raise ValueError(f"optimizer name={name!r} is unknown: allowed {', '.join(NAMES)}.")


def _with_param_check(tx, name: str):
  """`tx` whose init first rejects non-float params (optax's own optimizers do not)."""
  def init_fn(params):
    check_float_params(params, f"optimizer {name!r}")
    return tx.init(params)

  return tx._replace(init=init_fn)  # keeps the class (ExtraArgs stays ExtraArgs)


def factory(name: str) -> Callable[..., optax.GradientTransformation]:
  """The factory behind `name` (for optax.inject_hyperparams); its init rejects non-float params."""
  _check_name(name)
  fn = _FACTORIES[name]

  @functools.wraps(fn)  # inject_hyperparams reads the signature through __wrapped__
  def checked(*args, **kwargs):
    return _with_param_check(fn(*args, **kwargs), name)

  return checked


def hyperparameters(name: str) -> tuple[str, ...]:
  """The hyperparameter names `get(name, ...)` accepts (learning_rate first)."""
  _check_name(name)
  return tuple(inspect.signature(_FACTORIES[name]).parameters)


def validate(name: str, **hyperparams) -> None:
  """Raises ValueError for an unknown name or key, a missing, negative or non-finite learning
  rate, or a non-finite number for any other hyperparameter. learning_rate may be left out
  only where the factory has a default (`LEARNING_RATE_FREE`, schedule_free_adamw)."""
  allowed = hyperparameters(name)
  unknown = sorted(set(hyperparams) - set(allowed))
  if unknown:
    raise ValueError(
        f"hyperparameter(s) {', '.join(unknown)} not accepted by optimizer {name!r}: "
        f"allowed {', '.join(allowed)}.")
  default_lr = inspect.signature(_FACTORIES[name]).parameters["learning_rate"].default
  if "learning_rate" not in hyperparams and default_lr is inspect.Parameter.empty:
    raise ValueError(f"optimizer {name!r} needs learning_rate= (a float >= 0 or an optax schedule).")
  check_learning_rate(hyperparams.get("learning_rate", default_lr))
  check_hyperparams_finite(hyperparams)


def get(name: str, *, extra_args: Sequence[str] = (),
        **hyperparams) -> optax.GradientTransformation:
  r"""Builds the optimizer `name` with `hyperparams`, validated first.

  Names: our methods (diffgrad, mfac, dct_lowrank, normalized_gd,
  hypergradient) and optax's sgd, momentum, adam, adamw, nadamw, lamb, lars,
  lion, schedule_free_adamw (optax.contrib), and the learning-rate-free
  learners of optax.contrib (`LEARNING_RATE_FREE`): prodigy (Mishchenko &
  Defazio 2023), dog (Ivgi et al. 2023), dowg (Khaled et al. 2023), mechanic
  (Cutkosky et al. 2023; ``mechanize`` around ``base``), cocob (Orabona &
  Tommasi 2017), dadapt_adamw (Defazio & Mishchenko 2023). Keys are the
  factory's arguments; see `hyperparameters(name)`.

  Args:
    name: one of `NAMES`.
    extra_args: the keyword arguments the caller's loop passes to
      ``tx.update`` (see `EXTRA_ARGS`); normalized_gd needs ``("margins",)``.
    **hyperparams: ``learning_rate`` (finite float >= 0 or schedule) is
      required unless the factory has a default (the learning-rate-free
      learners: 1.0, a multiplier on their own estimate); every number must be
      finite.

  Returns:
    An optax.GradientTransformation (ExtraArgs for normalized_gd and the
    optax transforms that return one). Its ``init`` raises ValueError naming
    the leaf and dtype when a params leaf is not floating point.

  Raises:
    ValueError: unknown name or hyperparameter (the message lists the
      allowed ones), missing, negative or non-finite learning rate, nan or inf
      for any other hyperparameter; an optimizer in `EXTRA_ARGS` whose extra
      update arguments are not in ``extra_args`` (a generic loop cannot
      train with it).

  Example:
    >>> tx = get("adamw", learning_rate=1e-3, weight_decay=1e-4)
    >>> tx = get("prodigy")  # learning-rate-free: its published defaults
    >>> get("adamw", lr=1e-3)
    Traceback (most recent call last):
    ...
    ValueError: hyperparameter(s) lr not accepted by optimizer 'adamw': allowed learning_rate, ...
  """
  validate(name, **hyperparams)
  check_extra_args(name, extra_args)
  return _with_param_check(_FACTORIES[name](**hyperparams), name)
