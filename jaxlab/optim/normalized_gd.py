"""Normalized LR+GD (Tyurin 2024): gradient descent on logistic regression with a normalized step."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim._checks import check_float_params, check_learning_rate


class ScaleByNormalizedGDState(NamedTuple):
  """State of `scale_by_normalized_gd`."""

  count: jax.Array  # int32 scalar
  last_scale: jax.Array  # beta_t of the last step (float32 scalar), for logging


def scale_by_normalized_gd() -> optax.GradientTransformationExtraArgs:
  r"""Scales the gradient of the logistic loss by beta_t (Normalized LR+GD).

  Math (Tyurin 2024, Section 6, Normalized LR+GD): for
  f(theta) = (1/n) sum_i log(1 + exp(-m_i)) with margins m_i = y_i a_i^T theta,
    beta_t = [ (1/n) sum_i (1 + exp(m_i))^{-1} ]^{-1} = 1 / mean_i sigmoid(-m_i),
    update = beta_t * grad f(theta_t).
  grad f = -(1/n) sum_i sigmoid(-m_i) y_i a_i, so beta_t grad f is the
  sigmoid(-m)-weighted average of -y_i a_i: as the step size grows the method
  becomes the batch perceptron, without the vanishing gradient of LR+GD.

  How the caller passes the margins: this is an
  ``optax.GradientTransformationExtraArgs``; call
  ``tx.update(grads, state, params, margins=m)`` with ``m`` the float array of
  per-example margins y_i * f(x_i; theta) at the *same* params the gradient was
  taken at (any shape; the mean is over all entries). ``optax.chain``,
  ``optax.inject_hyperparams`` and ``optax.MultiSteps`` forward the keyword.
  Omitting it raises a ValueError at trace time.

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

  def init_fn(params):
    check_float_params(params, "normalized_gd")
    return ScaleByNormalizedGDState(count=jnp.zeros([], jnp.int32), last_scale=jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None, *, margins=None, **extra_args):
    del params, extra_args
    if margins is None:
      raise ValueError(
          "normalized_gd needs margins=: call tx.update(grads, state, params, margins=m) with the "
          "per-example margins m_i = y_i * f(x_i; params).")
    margins = jnp.asarray(margins)
    beta = 1.0 / jnp.mean(jax.nn.sigmoid(-margins.astype(jnp.float32)))
    new_updates = jax.tree.map(lambda g: (beta * g).astype(g.dtype), updates)
    return new_updates, ScaleByNormalizedGDState(
        count=optax.safe_increment(state.count), last_scale=beta)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def normalized_gd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  r"""Normalized LR+GD: theta_{t+1} = theta_t - gamma_t * beta_t * grad f(theta_t).

  Args:
    learning_rate: gamma, a float >= 0 or a schedule; the paper uses large
      values (0.1 to 100).

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
  return optax.chain(scale_by_normalized_gd(), optax.scale_by_learning_rate(learning_rate))
