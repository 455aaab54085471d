"""Infinite-width prediction of a network trained by gradient descent on MSE.

For the loss L = 1/2 sum_i ||f(x_i) - y_i||^2 and gradient flow with learning
rate eta, a network in the NTK regime evolves linearly,
df_t/dt = -eta Theta(X, X) (f_t(X) - Y), and its output on any input is
Gaussian over the random initialization (f_0 ~ GP(0, K)) with (Lee et al.
2019, Eqs. 15-16; t -> inf drops the E_t factors):

    E_t       = I - exp(-eta Theta t)                     (Theta = Theta(X, X))
    mu_t(x)   = Theta(x, X) Theta^-1 E_t Y
    Sigma_t(x, x') = K(x, x')
                   + Theta(x, X) Theta^-1 E_t K(X, X) E_t Theta^-1 Theta(X, x')
                   - [Theta(x, X) Theta^-1 E_t K(X, x') + (x <-> x')]

With `discrete=True`, E_t = I - (I - eta Theta)^t, the exact law of t steps of
full-batch GD on the linearized network (Lee et al. 2019, Sec. 2.2).
Outputs are independent copies: the covariance is the same for every output
column.

The kernels are any (N, N) matrices: analytic (`two_layer_gp`, `fc_kernels`)
or the empirical NTK / Monte Carlo NNGP of the user's own model
(`jaxlab.ntk.empirical_ntk`, `empirical_nngp`, with trace_axes=(-1,));
`kernel_gp` takes a `kernel_fn(x1, x2) -> (nngp, ntk)`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.ntk import kernels as kernels_lib


class GPPrediction(NamedTuple):
  """`mean` (N_test, O) and `cov` (N_test, N_test) (or (N_test,) variances if diag)."""
  mean: jax.Array
  cov: jax.Array


def _spectral_factor(ntk_train, learning_rate, t, discrete):
  """V diag(g(lambda)) V^T with g = (1 - decay(lambda)) / lambda = Theta^-1 E_t."""
  lam, v = jnp.linalg.eigh(ntk_train)
  lam_safe = jnp.where(lam > 0, lam, 1.0)
  if t is None:
    g = jnp.where(lam > 0, 1.0 / lam_safe, 0.0)
  else:
    if discrete:
      decay = (1.0 - learning_rate * lam) ** t
    else:
      decay = jnp.exp(-learning_rate * lam * t)
    # (1 - decay)/lambda -> eta t as lambda -> 0 (continuous time).
    g = jnp.where(lam > 0, (1.0 - decay) / lam_safe, learning_rate * t)
  return (v * g[None, :]) @ v.T


def gp_predict(ntk_train: jax.Array, ntk_test_train: jax.Array, nngp_train: jax.Array,
               nngp_test_train: jax.Array, nngp_test: jax.Array, y_train: jax.Array, *,
               t: float | None = None, learning_rate: float = 1.0, discrete: bool = False,
               diag: bool = False, dtype=None) -> GPPrediction:
  """Mean and covariance of the infinite-width network after GD on MSE.

  Math (Lee et al. 2019, Eqs. 15-16), with A = Theta(x, X) Theta^-1 E_t:
    mean = A Y
    cov  = K(x, x') + A K(X, X) A'^T - A K(X, x') - (A' K(X, x))^T

  Args:
    ntk_train: Theta(X, X), (N, N).
    ntk_test_train: Theta(X*, X), (M, N).
    nngp_train: K(X, X), (N, N).
    nngp_test_train: K(X*, X), (M, N).
    nngp_test: K(X*, X*), (M, M), or its diagonal (M,) when diag=True.
    y_train: targets, (N,) or (N, O).
    t: training time (steps x 1 for discrete GD); None -> t = infinity.
    learning_rate: eta.
    discrete: E_t of t steps of GD instead of gradient flow.
    diag: return only the variances (M,).
    dtype: computation dtype (float64 inside a `jax.enable_x64` scope).

  Returns:
    `GPPrediction(mean, cov)`.

  Example:
    >>> from jaxlab.ntk import two_layer_kernels
    >>> x = jnp.eye(3); k = two_layer_kernels(x)
    >>> gp_predict(k.ntk, k.ntk, k.nngp, k.nngp, k.nngp, jnp.eye(3)).mean.shape
    (3, 3)

  References:
    Lee et al. 2019, "Wide Neural Networks of Any Depth Evolve as Linear
    Models Under Gradient Descent", arXiv:1902.06720.
  """
  n = np.shape(ntk_train)[0]
  if np.shape(ntk_train) != (n, n) or np.shape(nngp_train) != (n, n):
    raise ValueError(f"ntk_train, nngp_train: need (N, N); got {np.shape(ntk_train)}, "
                     f"{np.shape(nngp_train)}")
  m = np.shape(ntk_test_train)[0]
  if np.shape(ntk_test_train) != (m, n) or np.shape(nngp_test_train) != (m, n):
    raise ValueError(f"ntk_test_train, nngp_test_train: need ({m}, {n}); got "
                     f"{np.shape(ntk_test_train)}, {np.shape(nngp_test_train)}")
  want = (m,) if diag else (m, m)
  if np.shape(nngp_test) != want:
    raise ValueError(f"nngp_test: need {want} (diag={diag}); got {np.shape(nngp_test)}")
  if np.shape(y_train)[0] != n or np.ndim(y_train) not in (1, 2):
    raise ValueError(f"y_train: need (N,) or (N, O) with N={n}; got {np.shape(y_train)}")
  if t is not None and not (np.isfinite(t) and t >= 0):
    raise ValueError(f"t={t!r}: must be None (infinity) or a finite number >= 0")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate={learning_rate!r}: must be > 0")
  dtype = dtype or jnp.result_type(ntk_train)
  with kernels_lib.precision_scope(dtype):
    c = lambda a: jnp.asarray(a, dtype)
    factor = _spectral_factor(c(ntk_train), learning_rate, t, discrete)
    a = c(ntk_test_train) @ factor  # (M, N)
    mean = a @ c(y_train)
    cross = jnp.einsum("mn,mn->m", a, c(nngp_test_train)) if diag else a @ c(nngp_test_train).T
    if diag:
      cov = c(nngp_test) + jnp.einsum("mn,nk,mk->m", a, c(nngp_train), a) - 2 * cross
    else:
      cov = c(nngp_test) + a @ c(nngp_train) @ a.T - cross - cross.T
    return GPPrediction(mean=mean, cov=cov)


def kernel_gp(kernel_fn: Callable, x_train: jax.Array, y_train: jax.Array, x_test: jax.Array,
              *, t: float | None = None, learning_rate: float = 1.0, discrete: bool = False,
              diag: bool = False, dtype=None) -> GPPrediction:
  """`gp_predict` with the kernels of any model: `kernel_fn(x1, x2) -> (nngp, ntk)`.

  `kernel_fn(x1, x2)` returns the (N1, N2) NNGP and NTK (a `Kernels` or any
  pair; x2 is never None here), e.g. analytic `fc_kernels` or the empirical
  kernels of the user's own model:

      kernel_fn = lambda a, b: (empirical_nngp(init, apply, a, b, num_samples=256, key=k),
                                empirical_ntk(apply, params, a, b, state=state))

  (the NNGP draws must share `key` across calls, so that the train and test
  blocks come from the same draws). For the mean alone (t = inf), any NNGP
  gives the same answer: `nngp` may be the NTK itself. With diag=True the
  test-test NNGP is the diagonal of kernel_fn(x_test, x_test).

  Math: Lee et al. 2019, Eqs. 15-16 (see `gp_predict`).

  Example:
    >>> from jaxlab.ntk import kernels as kl
    >>> kfn = lambda a, b: kl.fc_kernels(a, b, depth=2)
    >>> kernel_gp(kfn, jnp.eye(3), jnp.eye(3), jnp.ones((1, 3))).mean.shape
    (1, 3)
  """
  if not callable(kernel_fn):
    raise ValueError(f"kernel_fn={kernel_fn!r} is not callable; allowed: kernel_fn(x1, x2) -> "
                     "(nngp, ntk), each (N1, N2)")

  def kernels(a, b):
    out = kernel_fn(a, b)
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(f"kernel_fn returned {type(out).__name__}; allowed: a pair (nngp, ntk) "
                       "such as a Kernels")
    return out

  nngp_tr, ntk_tr = kernels(x_train, x_train)
  nngp_st, ntk_st = kernels(x_test, x_train)
  nngp_ss = kernels(x_test, x_test)[0]
  if diag:
    nngp_ss = jnp.diagonal(nngp_ss)
  return gp_predict(ntk_tr, ntk_st, nngp_tr, nngp_st, nngp_ss, y_train, t=t,
                    learning_rate=learning_rate, discrete=discrete, diag=diag, dtype=dtype)


def two_layer_gp(x_train: jax.Array, y_train: jax.Array, x_test: jax.Array, *,
                 t: float | None = None, learning_rate: float = 1.0, discrete: bool = False,
                 diag: bool = False, weight_std: float = 1.0, bias_std: float = 1.0,
                 output_std: float = 1.0, dtype=None) -> GPPrediction:
  """`gp_predict` with the analytic kernels of the two-layer ReLU net.

  Example:
    >>> two_layer_gp(jnp.eye(3), jnp.eye(3), jnp.ones((1, 3))).mean.shape
    (1, 3)
  """
  scales = dict(weight_std=weight_std, bias_std=bias_std, output_std=output_std, dtype=dtype)
  k_tr = kernels_lib.two_layer_kernels(x_train, **scales)
  k_st = kernels_lib.two_layer_kernels(x_test, x_train, **scales)
  if diag:
    k_ss = kernels_lib.two_layer_kernels(x_test, x_test, pairwise=False, **scales).nngp
  else:
    k_ss = kernels_lib.two_layer_kernels(x_test, **scales).nngp
  return gp_predict(k_tr.ntk, k_st.ntk, k_tr.nngp, k_st.nngp, k_ss, y_train, t=t,
                    learning_rate=learning_rate, discrete=discrete, diag=diag,
                    dtype=dtype or k_tr.ntk.dtype)


def kernel_regression(ntk_train: jax.Array, ntk_test_train: jax.Array,
                      y_train: jax.Array) -> jax.Array:
  """Theta(x, X) Theta(X, X)^-1 Y by a linear solve (the t -> inf mean, as a reference)."""
  return ntk_test_train @ jnp.linalg.solve(ntk_train, y_train)
