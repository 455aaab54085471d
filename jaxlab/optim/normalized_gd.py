"""Normalized LR+GD (Tyurin 2024): gradient descent on logistic regression with a normalized step."""
from __future__ import annotations

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim._checks import (
  check_float_params,
  check_learning_rate,
  check_positive_int,
  scalar_dtype,
)


class ScaleByNormalizedGDState(NamedTuple):
  """State of `scale_by_normalized_gd`."""

  count: jax.Array  # int32 scalar, large-batch steps taken
  last_scale: jax.Array  # beta_t of the last step (scalar in scalar_dtype(params)), for logging
  mini_step: jax.Array  # int32 scalar in [0, every_k)
  acc_grad: optax.Updates  # sum_j n_j g_j over this step's micro-batches (() when every_k = 1)
  acc_weight: jax.Array  # sum over this step's examples of sigmoid(-m_i)
  acc_count: jax.Array  # number of margins seen this step


def _inside_multisteps() -> int:
  """k of an enclosing optax.MultiSteps call (trace-time stack walk), or 1 if there is none.

  MultiSteps keeps the inner state only on its last micro-step and passes that
  micro-batch's keywords, so beta would come from 1/k of the examples.
  """
  frame = sys._getframe(1)
  while frame is not None:
    ms = frame.f_locals.get("self")
    if isinstance(ms, optax.MultiSteps):
      try:
        return int(ms._every_k_schedule(0))  # k is a Python int unless k is a schedule
      except (TypeError, jax.errors.ConcretizationTypeError):
        return 2  # a traced schedule: cannot prove k = 1
    frame = frame.f_back
  return 1


def scale_by_normalized_gd(every_k: int | None = None) -> optax.GradientTransformationExtraArgs:
  r"""Scales the gradient of the logistic loss by beta_t (Normalized LR+GD).

  Math (Tyurin 2024, Section 6, Normalized LR+GD): for
  f(theta) = (1/n) sum_i log(1 + exp(-m_i)) with margins m_i = y_i a_i^T theta,
    beta_t = [ (1/n) sum_i (1 + exp(m_i))^{-1} ]^{-1} = 1 / mean_i sigmoid(-m_i),
    update = beta_t * grad f(theta_t).
  grad f = -(1/n) sum_i sigmoid(-m_i) y_i a_i, so beta_t grad f is the
  sigmoid(-m)-weighted average of -y_i a_i: as the step size grows the method
  becomes the batch perceptron, without the vanishing gradient of LR+GD.
  beta_t and the state's scalars are computed in the params' precision
  (float64 for float64 params).

  How the caller passes the margins: this is an
  ``optax.GradientTransformationExtraArgs``; call
  ``tx.update(grads, state, params, margins=m)`` with ``m`` the float array of
  per-example margins y_i * f(x_i; theta) at the *same* params the gradient was
  taken at (any shape; the mean is over all entries). ``optax.chain`` and
  ``optax.inject_hyperparams`` forward the keyword. Omitting it raises a
  ValueError at trace time.

  Micro-batches: beta_t is a mean over the whole batch, so gradient
  accumulation must accumulate it too. ``every_k = k`` does that: each call
  takes one micro-batch's mean gradient g_j and margins (n_j of them), and
  every k-th call returns beta g with g = sum_j n_j g_j / sum_j n_j and
  beta = sum_j n_j / sum_j sum_{i in j} sigmoid(-m_i) -- exactly the
  large-batch update (zeros on the other calls, as ``optax.MultiSteps`` does).
  ``optax.MultiSteps(k > 1)`` cannot do this (it hands the inner transform the
  last micro-batch's margins only) and raises a ValueError naming every_k.

  Args:
    every_k: micro-batches per step; None (the default) or 1: no accumulation.
      A shape-fixing Python int: list it in ``static_args`` of
      ``optax.inject_hyperparams`` (None is not injected, so the default needs nothing).

  Returns:
    An optax.GradientTransformationExtraArgs.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a, y = jnp.array([[1.0, 0.5], [-1.0, 0.2]]), jnp.array([1.0, -1.0])
    >>> theta = jnp.zeros(2)
    >>> loss = lambda t: jnp.mean(jax.nn.softplus(-y * (a @ t)))
    >>> tx = scale_by_normalized_gd()
    >>> u, s = tx.update(jax.grad(loss)(theta), tx.init(theta), theta, margins=y * (a @ theta))

  References:
    Tyurin, "From Logistic Regression to the Perceptron Algorithm: Exploring
    Gradient Descent with Large Step Sizes", AAAI 2025,
    https://arxiv.org/abs/2412.08424
  """
  if hasattr(every_k, "dtype"):
    raise ValueError(
        f"every_k={every_k!r}: a jax array (optax.inject_hyperparams injects ints); pass a "
        "Python int and list 'every_k' in inject_hyperparams(..., static_args=('every_k',)).")
  every_k = 1 if every_k is None else every_k
  check_positive_int(every_k, "every_k")

  def init_fn(params):
    check_float_params(params, "normalized_gd")
    dt = scalar_dtype(params)
    acc = optax.tree.zeros_like(params) if every_k > 1 else ()
    return ScaleByNormalizedGDState(
        count=jnp.zeros([], jnp.int32), last_scale=jnp.ones([], dt),
        mini_step=jnp.zeros([], jnp.int32), acc_grad=acc, acc_weight=jnp.zeros([], dt),
        acc_count=jnp.zeros([], dt))

  def update_fn(updates, state, params=None, *, margins=None, **extra_args):
    del params, extra_args
    if margins is None:
      raise ValueError(
          "normalized_gd needs margins=: call tx.update(grads, state, params, margins=m) with the "
          "per-example margins m_i = y_i * f(x_i; params).")
    k_outer = _inside_multisteps()
    if k_outer != 1:
      raise ValueError(
          f"normalized_gd inside optax.MultiSteps(every_k_schedule={k_outer}): MultiSteps passes "
          "only the last micro-batch's margins, so beta = 1 / mean sigmoid(-m) would come from "
          f"1/{k_outer} of the batch. Use normalized_gd(..., every_k={k_outer}) without "
          "MultiSteps: it accumulates the gradient and beta over the micro-batches exactly.")
    dt = state.last_scale.dtype
    margins = jnp.asarray(margins).astype(dt)
    weight = jnp.sum(jax.nn.sigmoid(-margins))
    n = jnp.asarray(margins.size, dt)
    if every_k == 1:
      beta = n / weight
      new_updates = jax.tree.map(lambda g: (beta * g).astype(g.dtype), updates)
      return new_updates, state._replace(count=optax.safe_increment(state.count),
                                         last_scale=beta)
    acc_grad = jax.tree.map(lambda a, g: a + (n * g).astype(a.dtype), state.acc_grad, updates)
    acc_weight, acc_count = state.acc_weight + weight, state.acc_count + n
    emit = state.mini_step == every_k - 1
    beta = acc_count / acc_weight
    # beta * (sum_j n_j g_j / sum_j n_j) = sum_j n_j g_j / sum_i sigmoid(-m_i).
    new_updates = jax.tree.map(
        lambda a, g: jnp.where(emit, a / acc_weight, 0.0).astype(g.dtype), acc_grad, updates)
    keep = lambda x: jnp.where(emit, jnp.zeros_like(x), x)
    return new_updates, ScaleByNormalizedGDState(
        count=jnp.where(emit, optax.safe_increment(state.count), state.count),
        last_scale=jnp.where(emit, beta, state.last_scale).astype(dt),
        mini_step=jnp.where(emit, 0, state.mini_step + 1).astype(jnp.int32),
        acc_grad=jax.tree.map(keep, acc_grad), acc_weight=keep(acc_weight),
        acc_count=keep(acc_count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normalized_gd(learning_rate: optax.ScalarOrSchedule,
                  every_k: int | None = None) -> optax.GradientTransformationExtraArgs:
  r"""Normalized LR+GD: theta_{t+1} = theta_t - gamma_t * beta_t * grad f(theta_t).

  Args:
    learning_rate: gamma, a float >= 0 or a schedule; the paper uses large
      values (0.1 to 100).
    every_k: micro-batches accumulated per step, exactly (see
      `scale_by_normalized_gd`); use it instead of ``optax.MultiSteps``.
      None (default) = 1.

  Returns:
    An optax.GradientTransformationExtraArgs; pass ``margins=`` to ``update``
    (see `scale_by_normalized_gd`).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = normalized_gd(10.0)
    >>> state = tx.init(jnp.zeros(2))

  References:
    Tyurin 2024, https://arxiv.org/abs/2412.08424
  """
  check_learning_rate(learning_rate)
  return optax.chain(scale_by_normalized_gd(every_k), optax.scale_by_learning_rate(learning_rate))
