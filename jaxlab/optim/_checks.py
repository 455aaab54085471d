"""Argument checks shared by the optimizers: fail before anything compiles.

Only concrete Python and numpy scalars are checked; jax arrays and tracers
(e.g. hyperparameters under ``optax.inject_hyperparams``) pass through.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_finite(value, name: str) -> None:
  """A Python/numpy number must be finite (not nan or +-inf); other values pass through."""
  if _is_number(value) and not math.isfinite(value):
    raise ValueError(f"{name}={value!r} is not finite: allowed a finite number (not nan or inf).")


def check_hyperparams_finite(hyperparams: dict) -> None:
  """`check_finite` on every value of ``{name: value}`` (non-numbers pass through)."""
  for name, value in hyperparams.items():
    check_finite(value, name)


def check_learning_rate(learning_rate, name: str = "learning_rate") -> None:
  """A finite float >= 0 or a callable schedule; anything else is a ValueError."""
  if callable(learning_rate):
    return
  if not _is_number(learning_rate) and not hasattr(learning_rate, "dtype"):
    raise ValueError(
        f"{name}={learning_rate!r} is not allowed: pass a finite float >= 0 or an optax schedule "
        "(a callable step -> learning rate)."
    )
  if _is_number(learning_rate) and not math.isfinite(learning_rate):
    raise ValueError(
        f"{name}={learning_rate!r} is not finite: allowed a finite float >= 0 or an optax schedule.")
  if _is_number(learning_rate) and learning_rate < 0:
    raise ValueError(f"{name}={learning_rate!r} is negative: a learning rate must be >= 0.")


def check_in_range(value, name: str, lo: float, hi: float, lo_open=False, hi_open=True) -> None:
  """Checks that value is finite and lo <= value <= hi (open ends where asked); traced values pass."""
  if not _is_number(value):
    return  # jax arrays under inject_hyperparams: checked when given as Python numbers.
  bad_lo = value <= lo if lo_open else value < lo
  bad_hi = value >= hi if hi_open else value > hi
  if bad_lo or bad_hi or not math.isfinite(value):
    allowed = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    what = "out of range" if math.isfinite(value) else "not finite"
    raise ValueError(f"{name}={value!r} is {what}: allowed a finite number in {allowed}.")


def check_float_params(params, optimizer: str) -> None:
  """Every leaf of ``params`` must have a floating dtype; run in ``init`` (trace time, before compile).

  Integer leaves would get no update (or a truncated one) without any error.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"params leaf {jax.tree_util.keystr(path) or '(root)'} has dtype {dtype}: {optimizer} "
          "allows floating-point params only (float16, bfloat16, float32, float64); cast it, "
          "or keep non-trainable integer arrays out of the params.")


def scalar_dtype(params):
  """The dtype for a transform's scalars (bias corrections, scales, learned rates).

  The widest floating dtype among the leaves, at least float32: float64 params
  (under ``jax.enable_x64``) get float64 scalars; bfloat16/float16 params get
  float32 ones. Fixed at ``init`` so the state's dtypes never change between
  steps (``lax.scan`` requires it), whatever dtype injected hyperparameters have.
  """
  dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(params)]
  return jnp.result_type(jnp.float32, *[d for d in dtypes if jnp.issubdtype(d, jnp.floating)])


def check_positive_int(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
    raise ValueError(f"{name}={value!r} is not allowed: pass a positive integer.")


def chain_with_coupled_decay(weight_decay, scale_by, learning_rate):
  """optax.chain(add_decayed_weights (skipped when 0), scale_by, scale_by_learning_rate).

  Coupled (L2) weight decay as in diffGrad's and M-FAC's reference optimizers:
  the decay term joins the gradient before the method's preconditioning.
  """
  import optax

  parts = []
  if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
    parts.append(optax.add_decayed_weights(weight_decay))
  return optax.chain(*parts, scale_by, optax.scale_by_learning_rate(learning_rate))
