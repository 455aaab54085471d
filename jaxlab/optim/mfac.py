"""M-FAC (dynamic algorithm): matrix-free inverse empirical-Fisher preconditioning."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import optax
from jax.flatten_util import ravel_pytree

from jaxlab.optim._checks import (
  chain_with_coupled_decay,
  check_float_params,
  check_in_range,
  check_learning_rate,
  check_positive_int,
)


class ScaleByMFACState(NamedTuple):
  """State of `scale_by_mfac`."""

  count: jax.Array  # int32 scalar; the ring-buffer slot written next is count % m
  grads_MxD: jax.Array  # ring buffer G of the last m (flattened) gradients, zeros at start
  gram_MxM: jax.Array  # G G^T, updated one row/column per step
  velocity: optax.Updates  # momentum buffer v (same tree as params)


def scale_by_mfac(num_grads: int = 1024, damping: float = 1e-5, momentum: float = 0.0) -> optax.GradientTransformation:
  r"""Preconditions by the inverse windowed empirical Fisher (M-FAC, dynamic algorithm).

  Math (Frantar et al. 2021, Section 3; the optimizer of their released code):
    the gradient pytree is flattened to g in R^d and written into a ring buffer
    G (m x d) *before* the solve, then
      F = damping * I + (1/m) sum_{i<m} G_i G_i^T,   u = F^{-1} g,
      v <- momentum * v + (1 - momentum) * u,   update = v.
    Because g is a row of G (g = G^T e_j), the push-through identity
    F^{-1} G^T = G^T (damping I + G G^T / m)^{-1} gives
      u = G^T (damping I + G G^T / m)^{-1} e_j,
    the Woodbury form that avoids the cancellation of (g - G^T c) / damping in
    float32. The Gram matrix G G^T is kept in the state and updated with one
    product G g per step.

  Cost per step: O(d m) for G g and G^T w, O(m^3) for the m x m Cholesky solve
  (the authors' CPU path also refactorizes in O(m^3); the paper's O(m^2) needs
  their incremental recurrences). Memory: m d + m^2 floats. On CPU the
  Cholesky is a LAPACK call (OpenBLAS): on a machine shared with other jobs,
  OpenBLAS's spinning threads slowed it 10-20x in our runs (MNIST-1D MLP,
  m = 1024: 1.6 instead of 20-38 steps/s); ``OPENBLAS_NUM_THREADS=1`` set
  before Python starts avoids it.

  Choosing damping (stability rule): F >= damping I for any window, so the
  step P g with P = F^{-1} <= I / damping, and by the descent lemma an
  L-smooth loss decreases at every step of size lr when
    damping > lr * L / 2   (L = largest Hessian eigenvalue),
  whatever the window holds. Below it, directions the window barely spans
  (the small differences between recent gradients) are amplified by up to
  1 / damping: on an 8-dimensional quadratic with L = 10 and lr = 1e-2 the
  authors' default 1e-5 makes the iterate itself diverge, in float64 as in
  float32 (f grows 60x in 100 steps); with damping = lr * L it decreases
  monotonically to the float32 floor (tests/optim/mfac_stability_test.py).
  The default 1e-5 is the authors' (their networks' gradient noise fills the
  window); on smooth deterministic problems use the rule. A float32 solve
  whose Gram rounding makes the computed system indefinite (Cholesky NaN)
  falls back to an eigendecomposition with eigenvalues clipped at damping,
  the exact system's lower bound, so the factorization never returns NaN.

  Args:
    num_grads: window size m (> 0).
    damping: lambda > 0; see the stability rule above.
    momentum: in [0, 1); 0 disables it.

  Returns:
    An optax.GradientTransformation (updates are descent directions).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(scale_by_mfac(num_grads=8, damping=1e-3), optax.scale(-1e-2))
    >>> state = tx.init({"w": jnp.ones(4)})

  References:
    Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations of
    Second-Order Information", NeurIPS 2021, https://arxiv.org/abs/2107.03356
  """
  if isinstance(num_grads, jax.Array):  # e.g. injected by optax.inject_hyperparams
    raise ValueError(
        f"num_grads={num_grads!r} is a jax array; allowed: a Python int, because it fixes the "
        "shape of the (num_grads x d) gradient window. Under optax.inject_hyperparams pass it "
        "as a static argument, as jaxlab.optim.STATIC_ARGS['mfac'] lists: "
        "optax.inject_hyperparams(jaxlab.optim.mfac, static_args=jaxlab.optim.STATIC_ARGS"
        "['mfac'])(learning_rate=1e-3, num_grads=32)")
  check_positive_int(num_grads, "num_grads")
  check_in_range(damping, "damping", 0.0, float("inf"), lo_open=True)
  check_in_range(momentum, "momentum", 0.0, 1.0)
  m = num_grads

  def init_fn(params):
    check_float_params(params, "mfac")
    flat, _ = ravel_pytree(params)
    return ScaleByMFACState(
        count=jnp.zeros([], jnp.int32),
        grads_MxD=jnp.zeros((m, flat.size), flat.dtype),
        gram_MxM=jnp.zeros((m, m), flat.dtype),
        velocity=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    g_D, unravel = ravel_pytree(updates)
    g_D = g_D.astype(state.grads_MxD.dtype)
    j = state.count % m
    G_MxD = state.grads_MxD.at[j].set(g_D)
    Gg_M = G_MxD @ g_D
    gram = state.gram_MxM.at[j, :].set(Gg_M).at[:, j].set(Gg_M)
    a_MxM = damping * jnp.eye(m, dtype=gram.dtype) + gram / m
    e_M = jax.nn.one_hot(j, m, dtype=gram.dtype)
    w_M = jsl.cho_solve(jsl.cho_factor(a_MxM, lower=True), e_M)
    # Exactly, a = damping I + G G^T / m has every eigenvalue >= damping. In float32 the
    # rounding of G G^T (~eps |g|^2) can exceed a small damping and make the computed
    # a indefinite: Cholesky then returns NaN. Fall back to an eigendecomposition with
    # the eigenvalues clipped to the exact lower bound (only when it happens).
    def clipped_solve(_):
      lam_M, v_MxM = jnp.linalg.eigh(a_MxM)
      return v_MxM @ (v_MxM[j] / jnp.maximum(lam_M, damping))
    w_M = jax.lax.cond(jnp.all(jnp.isfinite(w_M)) | ~jnp.all(jnp.isfinite(a_MxM)),
                       lambda _: w_M, clipped_solve, None)
    u = unravel(w_M @ G_MxD)
    u = jax.tree.map(lambda x, ref: x.astype(ref.dtype), u, updates)
    v = jax.tree.map(lambda vv, uu: momentum * vv + (1 - momentum) * uu, state.velocity, u)
    new_state = ScaleByMFACState(
        count=optax.safe_increment(state.count), grads_MxD=G_MxD, gram_MxM=gram, velocity=v)
    return v, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def mfac(
    learning_rate: optax.ScalarOrSchedule,
    num_grads: int = 1024,
    damping: float = 1e-5,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""M-FAC optimizer: coupled weight decay, `scale_by_mfac`, learning rate.

  Math:
    g <- grad + weight_decay * theta (added before the gradient enters the
    window, as in the authors' optimizer), v from `scale_by_mfac`,
    theta <- theta - lr_t * v.

  Args:
    learning_rate: float >= 0 or an optax schedule.
    num_grads, damping, momentum: see `scale_by_mfac` (damping > lr * L / 2
      makes every step a descent step on an L-smooth loss).
    weight_decay: >= 0.

  Returns:
    An optax.GradientTransformation.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = mfac(1e-2, num_grads=16, damping=1e-4)
    >>> state = tx.init({"w": jnp.ones(4)})

  References:
    Frantar et al. 2021, https://arxiv.org/abs/2107.03356
  """
  check_learning_rate(learning_rate)
  check_in_range(weight_decay, "weight_decay", 0.0, float("inf"))
  return chain_with_coupled_decay(weight_decay, scale_by_mfac(num_grads, damping, momentum), learning_rate)
