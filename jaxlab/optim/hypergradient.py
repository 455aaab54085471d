"""Hypergradient descent: online adaptation of the learning rate of any inner transform."""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim._checks import (
  check_float_params,
  check_in_range,
  check_learning_rate,
  scalar_dtype,
)


class HypergradientState(NamedTuple):
  """State of `hypergradient`."""

  count: jax.Array  # int32 scalar
  lr_offset: jax.Array  # scalar in `scalar_dtype(params)`: alpha_t - base_lr(t), learned by HD
  prev_direction: optax.Updates  # d_{t-1}, the inner direction of the last step (zeros at start)
  inner_state: optax.OptState


def scale_by_hypergradient(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    hypergrad_lr: float = 1e-7,
    inner: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
  r"""Scales an inner transform's direction by a rate adapted by hypergradient descent.

  Returns alpha_t d_t (a descent direction, no sign flip); `hypergradient`
  negates it. Math, Args: see `hypergradient` (the hypergradient uses the
  step this transform emits, so put no further scaling after it other than
  the sign flip, or fold that scaling into ``learning_rate``).
  """
  check_learning_rate(learning_rate)
  check_in_range(hypergrad_lr, "hypergrad_lr", 0.0, float("inf"))
  inner = optax.scale_by_adam() if inner is None else inner

  def init_fn(params):
    check_float_params(params, "hypergradient")
    return HypergradientState(
        count=jnp.zeros([], jnp.int32), lr_offset=jnp.zeros([], scalar_dtype(params)),
        prev_direction=optax.tree.zeros_like(params), inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    dt = state.lr_offset.dtype  # fixed at init: injected float64 hyperparameters must not change it
    h = optax.tree.vdot(updates, state.prev_direction).astype(dt)
    offset = (state.lr_offset + jnp.asarray(hypergrad_lr, dt) * h).astype(dt)
    base = learning_rate(state.count) if callable(learning_rate) else learning_rate
    alpha = jnp.asarray(base, dt) + offset
    direction, inner_state = inner.update(updates, state.inner_state, params)
    new_updates = jax.tree.map(lambda d: (alpha * d).astype(d.dtype), direction)
    return new_updates, HypergradientState(
        count=optax.safe_increment(state.count), lr_offset=offset,
        prev_direction=direction, inner_state=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def hypergradient(
    learning_rate: optax.ScalarOrSchedule,
    hypergrad_lr: float = 1e-7,
    inner: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
  r"""Wraps a direction-producing transform and adapts its learning rate by hypergradient descent.

  Math (Baydin et al. 2018, eqs. for SGD-HD and Adam-HD): with d_t the inner
  transform's descent direction (g_t for SGD, m̂_t/(sqrt(v̂_t)+eps) for Adam)
  and theta_t = theta_{t-1} - alpha_t d_t,
    h_t = d f(theta_{t-1}) / d alpha_{t-1} = -<g_t, d_{t-1}>,
    alpha_t = alpha_{t-1} - beta h_t = alpha_{t-1} + beta <g_t, d_{t-1}>,
  computed before the step that uses alpha_t; d_0 = 0 so alpha_1 = alpha_0.
  This is the rule FedHyper builds on. With a schedule, alpha_t =
  schedule(t) + delta_t and delta_t follows the same recursion (delta_0 = 0);
  for a constant learning rate it is exactly the paper's rule.

  Args:
    learning_rate: alpha_0 (float >= 0) or a base schedule.
    hypergrad_lr: beta >= 0, the hypergradient step (the paper uses 1e-3 for
      SGD, 1e-7 for Adam on its problems).
    inner: transform producing descent directions without learning rate and
      without sign flip (default ``optax.scale_by_adam()``; use
      ``optax.identity()`` for SGD-HD). It gets params, so weight decay works.

  Returns:
    An optax.GradientTransformation (a chain: ``state[0].lr_offset`` is the
    learned correction alpha_t - learning_rate(t), for logging).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = hypergradient(1e-3, hypergrad_lr=1e-7, inner=optax.scale_by_adam())
    >>> state = tx.init({"w": jnp.ones(3)})

  References:
    Baydin, Cornish, Martínez Rubio, Schmidt, Wood, "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018,
    https://arxiv.org/abs/1703.04782
  """
  return optax.chain(scale_by_hypergradient(learning_rate, hypergrad_lr, inner), optax.scale(-1.0))
