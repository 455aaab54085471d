"""Extreme eigenpairs of a curvature operator from Lanczos Ritz pairs."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import (
  _dots,
  apply_rows,
  check_iters,
  lanczos,
  resolve_dtype,
  tridiagonal,
)

WHICH = ("largest", "smallest", "magnitude")


class Eigenpairs(NamedTuple):
  """Output of :func:`top_eigenpairs`.

  eigenvalues: (k,) float64 NumPy array, ordered as requested.
  eigenvectors: pytree shaped like params with a leading axis k (unit norm);
    the i-th vector is ``jax.tree.map(lambda x: x[i], eigenvectors)``.
  residuals: (k,) float64 NumPy array, ``‖A v_i − λ_i v_i‖`` of the returned
    pairs, computed with k further products of the operator (the convergence
    check: an eigenvalue of A lies within ``residuals[i]`` of ``eigenvalues[i]``).
  ritz_residuals: (k,) float64 NumPy array, the cost-free estimate
    ``|β_m u_{m,i}|`` from the Lanczos relation. It assumes an exactly
    orthonormal basis and exact arithmetic, so it falls far below the attainable
    accuracy (0 or ~1e-28 once a float32 pair converged) and cannot flag an
    inaccurate vector computed in floating point; use it only to see how far a
    pair is from convergence in exact arithmetic.
  """

  eigenvalues: np.ndarray
  eigenvectors: Any
  residuals: np.ndarray
  ritz_residuals: np.ndarray | None = None


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  if which == "largest":
    return np.argsort(-theta, kind="stable")[:k]
  if which == "smallest":
    return np.argsort(theta, kind="stable")[:k]
  return np.argsort(-np.abs(theta), kind="stable")[:k]


def top_eigenpairs(matvec: Callable, params_like: Any, k: int, key: jax.Array,
                   num_iters: int | None = None, which: str = "largest",
                   reorthogonalize: bool = True, dtype: Any = None) -> Eigenpairs:
  """The k extreme eigenpairs of a symmetric operator, eigenvectors as pytrees.

  Math:
    Run m Lanczos steps (:func:`~jaxlab.spectral.lanczos.lanczos`) to get
    ``Vᵀ A V = T``; diagonalize ``T = U Θ Uᵀ`` in float64; the Ritz values
    ``θ_i`` approximate eigenvalues and the Ritz vectors ``y_i = V u_i``
    eigenvectors (Golub & Van Loan §10.1.4; Saad, *Numerical Methods for Large
    Eigenvalue Problems*, §6.6). Extreme eigenvalues converge first, at a rate
    set by the gap to the rest of the spectrum (Kaniel-Paige-Saad bound).
    The residuals ``r_i = ‖A y_i − θ_i y_i‖`` are computed explicitly: one more
    batch of k products with the returned vectors (in the params' dtype, as the
    user would apply them), then the difference and its norm summed in float64.
    An eigenvalue of A lies within ``r_i`` of ``θ_i`` (Weyl / Bauer-Fike for
    symmetric A; Parlett, *The Symmetric Eigenvalue Problem*, Thm 4.5.1). The
    Lanczos relation ``A V = V T + β_m v_{m+1} e_mᵀ`` gives the same residual as
    ``|β_m u_{m,i}|`` without a product (Parlett §13.1), but only in exact
    arithmetic: in float32 it reaches 0 or 1e-28 while the true residual stays near
    eps·‖A‖ (or larger when the basis lost accuracy), so it is returned as
    ``ritz_residuals``, not as the check. The floor of ``r_i`` is the rounding
    of the product itself, about eps·|θ_i| (6e-7 for |θ| = 10 in float32).

  Cost: m Lanczos steps (m products) plus k products for the residuals; for a
  data-set operator the k products are k more passes over the data.

  Args:
    matvec: symmetric linear map ``pytree -> pytree`` (e.g. :func:`hessian_vp`).
    params_like: pytree shaped like the matvec's input.
    k: number of eigenpairs, ``1 <= k <= num_iters``.
    key: PRNG key for the Lanczos start vector.
    num_iters: Lanczos steps; default ``min(n, max(2k + 30, 60))``.
    which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or
      ``"magnitude"`` (largest |λ|).
    reorthogonalize: full reorthogonalization (default True).
    dtype: Lanczos working dtype (``jnp.float64`` in an x64 scope), default the params'.

  Returns:
    :class:`Eigenpairs` ``(eigenvalues, eigenvectors, residuals, ritz_residuals)``.

  Raises:
    ValueError: ``k <= 0``, ``k > num_iters``, ``num_iters`` above the dimension,
      or an unknown ``which``.

  Example:
    >>> mv = hessian_vp(loss_fn, params, batch)
    >>> pairs = top_eigenpairs(mv, params, k=5, key=jax.random.key(0))
    >>> pairs.eigenvalues, pairs.residuals

  References:
    Golub & Van Loan, Matrix Computations, 4th ed., §10.1. Saad, Numerical
    Methods for Large Eigenvalue Problems, 2nd ed., 2011, ch. 6.
  """
  spec = ops.flat_spec(params_like)
  n = spec.size
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
    raise ValueError(f"k is {k!r}; allowed: an int with 1 <= k <= num_iters.")
  if which not in WHICH:
    raise ValueError(f"which is {which!r}; allowed: {', '.join(WHICH)}.")
  if num_iters is None:
    num_iters = min(n, max(2 * int(k) + 30, 60))
  m = check_iters(num_iters, n)
  if k > m:
    raise ValueError(f"k is {k}; allowed: 1 <= k <= num_iters ({m}).")
  dt = resolve_dtype(params_like, dtype)
  res = lanczos(matvec, params_like, m, key, reorthogonalize, dt, return_basis=True)
  theta, U = np.linalg.eigh(tridiagonal(res.alphas, res.betas))
  idx = _select(theta, int(k), which)
  with ops.x64_scope(dt):
    vecs, Y = _ritz_vectors(jnp.asarray(U[:, idx].T, dt), res.basis, spec)
    th = theta[idx]
    th_hi = th.astype(dt)  # θ as hi + lo in the working dtype: float64 accuracy in float32
    th_lo = (th - th_hi).astype(dt)
    resid = np.asarray(_residual_norms(apply_rows(matvec, Y, spec), Y, th_hi, th_lo), np.float64)
  ritz = np.abs(res.beta_last * U[-1, idx])
  return Eigenpairs(theta[idx].astype(np.float64), vecs, resid, ritz)


@functools.partial(jax.jit, static_argnames=("spec",))
def _ritz_vectors(Uk, V, spec):
  """Unit Ritz vectors ``U_kᵀ V`` as pytrees, and flat again (k, n) after the cast
  to the params' dtypes, so the residuals are those of the vectors returned."""
  Y = jnp.dot(Uk, V, precision=jax.lax.Precision.HIGHEST)
  Y = Y / jnp.sqrt(_dots(Y, Y))[:, None]
  vecs = jax.vmap(lambda y: ops.unravel(y, spec))(Y)
  return vecs, jax.vmap(lambda t: ops.ravel(t, spec, Y.dtype))(vecs)


@jax.jit
def _residual_norms(AY, Y, th_hi, th_lo):
  """``‖A y_i − θ_i y_i‖`` per row, formed and summed in float64 (a local scope)."""
  with jax.enable_x64(True):
    f64 = jnp.float64
    theta = th_hi.astype(f64) + th_lo.astype(f64)
    R = AY.astype(f64) - theta[:, None] * Y.astype(f64)
    return jnp.sqrt(jnp.sum(R * R, axis=1))
