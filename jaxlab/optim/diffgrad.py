"""diffGrad: Adam whose first moment is damped by a friction coefficient."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.optim._checks import (
  chain_with_coupled_decay,
  check_float_params,
  check_in_range,
  check_learning_rate,
)


class ScaleByDiffGradState(NamedTuple):
  """State of `scale_by_diffgrad`."""

  count: jax.Array  # int32 scalar, steps taken
  mu: optax.Updates  # first moment m_t
  nu: optax.Updates  # second moment v_t
  prev_grad: optax.Updates  # g_{t-1}, zeros before the first step


def scale_by_diffgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  r"""Rescales updates by diffGrad (Dubey et al. 2019, Algorithm 1).

  Math:
    m_t = b1 m_{t-1} + (1 - b1) g_t,  v_t = b2 v_{t-1} + (1 - b2) g_t^2,
    xi_t = sigmoid(|g_{t-1} - g_t|)  (the paper's AbsSig friction, eq. 5; g_0 = 0),
    u_t = sqrt(1 - b2^t) / (1 - b1^t) * xi_t * m_t / (sqrt(v_t) + eps).

  The bias correction and the placement of eps (on the uncorrected sqrt(v_t))
  follow the authors' released code, which is how torch's Adam does it. The
  previous gradient is stored as a copy (v1 of the authors' code aliased it).

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to sqrt(v_t), >= 0.

  Returns:
    An optax.GradientTransformation; updates are descent directions (no sign
    flip, no learning rate).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(scale_by_diffgrad(), optax.scale(-1e-3))
    >>> state = tx.init({"w": jnp.ones(3)})

  References:
    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural
    Networks", IEEE TNNLS 2019, https://arxiv.org/abs/1909.11015
  """
  check_in_range(b1, "b1", 0.0, 1.0)
  check_in_range(b2, "b2", 0.0, 1.0)
  check_in_range(eps, "eps", 0.0, float("inf"))

  def init_fn(params):
    check_float_params(params, "diffgrad")
    zeros = optax.tree.zeros_like(params)
    return ScaleByDiffGradState(
        count=jnp.zeros([], jnp.int32), mu=zeros, nu=optax.tree.zeros_like(params),
        prev_grad=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    # Cast back: injected hyperparameters of another dtype must not change the state's.
    mu = jax.tree.map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype), state.mu, updates)
    nu = jax.tree.map(lambda v, g: (b2 * v + (1 - b2) * jnp.square(g)).astype(v.dtype),
                      state.nu, updates)

    def leaf(m, v, g, g_prev):
      # The bias correction in the leaf's precision (at least float32): float64 params get
      # a float64 correction, not a float32 one (a 1e-7 relative error per step).
      dt = jnp.promote_types(g.dtype, jnp.float32)
      t = count.astype(dt)
      step = jnp.sqrt(1 - jnp.asarray(b2, dt) ** t) / (1 - jnp.asarray(b1, dt) ** t)
      xi = jax.nn.sigmoid(jnp.abs(g_prev - g))
      return (step * xi * m / (jnp.sqrt(v) + eps)).astype(g.dtype)

    new_updates = jax.tree.map(leaf, mu, nu, updates, state.prev_grad)
    # The stored gradient is g_t itself (count > 0 always holds). Selecting it
    # against the new update makes it depend on the update, the last reader of
    # g_{t-1}, so XLA writes g_t into g_{t-1}'s donated buffer after that read.
    # Stored directly, XLA copied both gradients every step: 4.2x Adam's step
    # time instead of 1.7x (10M parameters, CPU; benchmarks/RESULTS.md).
    prev_grad = jax.tree.map(lambda g, u: jnp.where(count > 0, g, u.astype(g.dtype)),
                             updates, new_updates)
    return new_updates, ScaleByDiffGradState(count=count, mu=mu, nu=nu, prev_grad=prev_grad)

  return optax.GradientTransformation(init_fn, update_fn)


def diffgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""diffGrad optimizer: `scale_by_diffgrad` with a learning rate.

  Math:
    g_t <- g_t + weight_decay * theta_{t-1}  (coupled L2, as in the authors' code),
    theta_t = theta_{t-1} - lr_t * u_t with u_t from `scale_by_diffgrad`.

  Args:
    learning_rate: float >= 0 or an optax schedule.
    b1, b2, eps: see `scale_by_diffgrad`.
    weight_decay: coupled L2 coefficient >= 0 (0 disables it).

  Returns:
    An optax.GradientTransformation.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> tx = diffgrad(1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.grad(lambda p: (p["w"] ** 2).sum())(params), state, params)

  References:
    Dubey et al. 2019, https://arxiv.org/abs/1909.11015
  """
  check_learning_rate(learning_rate)
  check_in_range(weight_decay, "weight_decay", 0.0, float("inf"))
  return chain_with_coupled_decay(weight_decay, scale_by_diffgrad(b1, b2, eps), learning_rate)
