"""Extreme eigenpairs of a curvature operator from Lanczos Ritz pairs."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.spectral import lanczos_host
from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import (
  _HI,
  _as_tree,
  _ksum,
  check_iters,
  from_chunks,
  once_jit,
  resolve_dtype,
  run_lanczos,
  tree_product,
  tridiagonal,
)

WHICH = ("largest", "smallest", "magnitude")
TOL_KINDS = ("residual", "eigenvalue")


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
  num_iters: Lanczos steps done (fewer than asked when ``tol`` stopped early).
  """

  eigenvalues: np.ndarray
  eigenvectors: Any
  residuals: np.ndarray
  ritz_residuals: np.ndarray | None = None
  num_iters: int | None = None


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
  if which == "largest":
    return np.argsort(-theta, kind="stable")[:k]
  if which == "smallest":
    return np.argsort(theta, kind="stable")[:k]
  return np.argsort(-np.abs(theta), kind="stable")[:k]


def top_eigenpairs(matvec: Callable, params_like: Any, k: int, key: jax.Array | int,
                   num_iters: int | None = None, which: str = "largest",
                   reorthogonalize: bool = True, dtype: Any = None,
                   tol: float | None = None, host: bool | None = None,
                   quick_compile: bool = False, tol_kind: str = "residual") -> Eigenpairs:
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
    With ``tol``, after each step j ≥ k the Ritz pairs of ``T_j`` are formed on
    the host (a j x j eigh) and the run stops once every selected pair has
    ``|β_j u_{j,i}| ≤ tol·|θ_i|`` with ``β_j > 0``: in exact arithmetic an
    eigenvalue of A then lies within ``tol·|θ_i|`` of ``θ_i`` (the same
    Thm 4.5.1 with Parlett §13.1's residual). It need not be the wanted one if
    the start vector is nearly orthogonal to its eigenvector (true of any
    Krylov or power method); the returned ``residuals`` stay the explicit check.
    With ``tol_kind="eigenvalue"`` the run stops instead on an estimate of the
    eigenvalue's error: with ``r_i = |β_j u_{j,i}|`` and ``gap_i`` the distance
    from ``θ_i`` to the rest of A's spectrum, the nearest eigenvalue lies within
    ``r_i² / gap_i`` of ``θ_i`` (Kato-Temple; Parlett Thm 11.7.1, used for
    Lanczos in §13.2), so the run stops once every selected pair has
    ``min(r_i, r_i² / gap_i) ≤ tol·|θ_i|``. The gap is not known: it is
    estimated as the distance from ``θ_i`` to the nearest other Ritz value of
    ``T_j``, as Lanczos codes do, so this is an estimate, not a bound. By
    interlacing the other Ritz values lie inside A's spectrum, so the estimate
    can exceed the true gap, and the error is then underestimated: mildly while
    the next Ritz value still converges (measured up to 1.06·tol), badly when
    eigenvalues cluster next to ``θ_i`` unresolved by the Krylov space (outliers
    10, 9.9, 9.8 over a bulk in [0, 1]: stopped after 3 steps at 9-17·tol for
    tol = 1e-3). Use it for a separated extreme eigenvalue (curvature outliers),
    where the eigenvalue error falls with the square of the residual and the
    rule stops several steps before the residual rule
    (tests/spectral/spectral_eigen_tol_test.py); keep ``"residual"`` when the
    top eigenvalues may cluster.

  Sharded params (``params_like`` placed over a mesh): the Lanczos basis stays
  split over every device of the mesh (see :func:`~jaxlab.spectral.lanczos.lanczos`)
  and the eigenvectors come back laid out like the params, the k axis whole;
  the values equal the single-device ones to float32 rounding.

  Cost: m Lanczos steps (m products) plus k products for the residuals; for a
  data-set operator the k products are k more passes over the data. With
  ``tol``, one host synchronization per step. First call (compile included) of
  ``k=1, num_iters=20`` on the benchmark's 99k-parameter MLP, 2-core CPU:
  0.87–0.90 s of process CPU time on the host path at load 5–7 (the default
  there; one compile, the product's), 2.4 s on the device path (``host=False``:
  five more compiled pieces, load ~17); as the first probe of a fresh process
  with ``tol=1e-3, quick_compile=True``, 0.50–0.56 s (15 steps), adding
  ``tol_kind="eigenvalue"`` 0.45–0.49 s (12 steps, rel err 1.4e-4) and with an
  int seed ``key=0`` 0.41–0.44 s (load 5–11). PyHessian's power iteration to the
  same accuracy (one torch thread, tol 1e-4, rel err 2.6e-4) took 0.13 s CPU
  warm and 0.39–0.41 s as the first probe of a fresh process, so a cold call is
  still ~1.06x (median; cold vs cold, the fastest options) to 7x (default
  options against warm PyHessian) slower (first-call rows of
  benchmarks/RESULTS.md). On an idle machine the fastest options tie:
  0.30-0.35 s wall (rel err 1.4e-4) against PyHessian's 0.30-0.35 s (rel err
  2.6e-4); ~0.25 s of ours is JAX's and XLA's fixed cost of a first program in a
  process (tracing, lowering, compiling, the first execution).

  Mixed precision: with ``hessian_vp(..., compute_dtype="bfloat16")`` (or a
  model that computes in bfloat16) only the products are bfloat16; Lanczos
  stays in ``dtype``. Measured against float32 products
  (``benchmarks/precision.py``, same start vector, 80 steps): the top-5
  eigenvalues within 0.08% relative on the MNIST-1D MLP (2×256, 1,000
  examples) and 0.9% on the tiny ICL transformer (256 prompts; 1.0% with the
  model itself in bfloat16). Expect errors of a few × 2^-8·|λ_max| (bfloat16
  keeps 8 significant bits): eigenvalues far below λ_max lose relative accuracy.

  Args:
    matvec: symmetric linear map ``pytree -> pytree`` (e.g. :func:`hessian_vp`).
    params_like: pytree shaped like the matvec's input.
    k: number of eigenpairs, ``1 <= k <= num_iters``.
    key: PRNG key whose bits seed the Lanczos start vector, or an int seed
      ``0 <= s < 2**32``, which gives the start vector of ``jax.random.key(s)``
      (JAX's default threefry implementation) without compiling its seeding
      program (0.045 s CPU on a first call; see
      :func:`jaxlab.spectral.lanczos_host.key_words`).
    num_iters: Lanczos steps; default ``min(n, max(2k + 30, 60))``.
    which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or
      ``"magnitude"`` (largest |λ|).
    reorthogonalize: full reorthogonalization (default True).
    dtype: Lanczos working dtype (``jnp.float64`` in an x64 scope), default the params'.
    tol: stop early once the Ritz residual estimates are within ``tol`` relative
      (see Math); ``num_iters`` is then the cap. None (default): run all steps.
    tol_kind: what ``tol`` bounds: ``"residual"`` (default), the Ritz residual
      ``|β_j u_{j,i}| ≤ tol·|θ_i|``; ``"eigenvalue"``, the estimated eigenvalue
      error ``min(r, r²/gap) ≤ tol·|θ_i|`` with the gap estimated from the Ritz
      values (see Math). Needs ``tol``.
    host: where the Lanczos algebra runs: True, NumPy float64 on the host; False,
      jitted steps on the params' devices; None (default), chosen as
      :func:`jaxlab.spectral.lanczos.lanczos` documents.
    quick_compile: for a one-off call on a CPU (default False): on the host path, a
      single-batch operator's products (:func:`hessian_vp` / :func:`ggn_vp` of one
      batch) come from a program XLA compiles fast and optimizes little
      (:func:`jaxlab.spectral.operators.quick_call`); no effect on the device path,
      on accelerators or for other matvecs. On the benchmark's 99k-parameter MLP it
      compiles in 0.08 s of CPU time instead of 0.45 s and each product takes
      ~10.5 ms instead of ~6.2 ms: it pays off below ~80 products in all (a first
      call), not for repeated or long runs. Values agree with the default
      program's to float32 rounding.

  Returns:
    :class:`Eigenpairs` ``(eigenvalues, eigenvectors, residuals, ritz_residuals,
    num_iters)``.

  Raises:
    ValueError: ``k <= 0``, ``k > num_iters``, ``num_iters`` above the dimension,
      an unknown ``which``, ``tol`` not a finite float > 0, ``quick_compile`` not a bool,
      ``tol_kind`` not one of ``"residual"``, ``"eigenvalue"`` (or set without ``tol``),
      or ``key`` neither a PRNG key nor an int in ``[0, 2**32)`` (a bool or a float
      included).

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
  if tol is not None and not (np.isfinite(tol) and tol > 0):
    raise ValueError(f"tol is {tol!r}; allowed: None or a finite float > 0.")
  if not isinstance(quick_compile, (bool, np.bool_)):
    raise ValueError(f"quick_compile is {quick_compile!r}; allowed: True or False.")
  if not isinstance(tol_kind, str) or tol_kind not in TOL_KINDS:
    raise ValueError(f"tol_kind is {tol_kind!r}; allowed: {', '.join(map(repr, TOL_KINDS))}.")
  if tol_kind != "residual" and tol is None:
    raise ValueError(f"tol_kind is {tol_kind!r} but tol is None; allowed: a tol (a finite "
                     "float > 0) with it, or tol_kind='residual'.")
  dt = resolve_dtype(params_like, dtype)
  key = lanczos_host.key_words(key)
  k = int(k)
  use_host = lanczos_host.choose_host(host, params_like, n, m)
  mv = tree_product(matvec) if use_host else matvec
  stop = None if tol is None else functools.partial(_converged, k=k, which=which, tol=float(tol),
                                                   kind=tol_kind)
  layout = ops.layout_of(params_like, "params_like")
  kw = {} if layout is None else {"layout": layout}  # the single-device path as before
  if use_host:
    kw["quick"] = bool(quick_compile)
  with ops.x64_scope(dt):
    run = lanczos_host.run if use_host else run_lanczos
    V, c, m = run(mv, spec, key, m, bool(reorthogonalize), dt, stop=stop, **kw)
    alphas = np.asarray(c.alphas, np.float64)[:m]
    betas = np.asarray(c.betas, np.float64)[:m]
  theta, U = np.linalg.eigh(tridiagonal(alphas, betas[:-1]))
  idx = _select(theta, k, which)
  if use_host:
    vecs, resid = lanczos_host.ritz_pairs(mv, V[:m], U[:, idx].T, theta[idx], spec,
                                          quick=bool(quick_compile))
    return Eigenpairs(theta[idx].astype(np.float64), vecs, resid,
                      np.abs(betas[-1] * U[-1, idx]), m)
  Uk = np.zeros((k, V.shape[1]))  # zero weights on the unused rows (and on v_{m+1})
  Uk[:, :m] = U[:, idx].T
  product = tree_product(matvec)
  with ops.x64_scope(dt):
    vecs, ys = _ritz_vectors(jnp.asarray(Uk, dt), V, spec, **kw)
    th = theta[idx]
    resid = np.asarray(_residual_norms(tuple(product(y) for y in ys), ys, _split(th, dt), spec),
                       np.float64)
  ritz = np.abs(betas[-1] * U[-1, idx])
  return Eigenpairs(th.astype(np.float64), vecs, resid, ritz, m)


def _split(x: np.ndarray, dt: Any) -> tuple[np.ndarray, ...]:
  """float64 x as a sum of three dt parts (exact in float32: 3 x 24 bits >= 53; each
  remainder is exact in float64), so θ reaches the jit in full even without x64. Two
  parts (48 bits) left θ off by up to 2^-48 |θ|, which moved converged float32
  residuals (‖r‖ ≈ eps |θ|, partly along y) by up to 3e-9 relative."""
  parts, r = [], np.asarray(x, np.float64)
  for _ in range(3):
    parts.append(r.astype(dt))
    r = r - parts[-1].astype(np.float64)
  return tuple(parts)


def _converged(c, j: int, k: int, which: str, tol: float, kind: str = "residual") -> bool:
  """After step j (β_j > 0): every selected Ritz pair has ``r_i = |β_j u_{j,i}| ≤ tol·|θ_i|``
  (``kind="residual"``) or ``min(r_i, r_i²/gap_i) ≤ tol·|θ_i|`` (``"eigenvalue"``, see
  :func:`eigenvalue_error_estimates`)."""
  if j < k:
    return False
  a = np.asarray(c.alphas, np.float64)[:j]
  b = np.asarray(c.betas, np.float64)[:j]
  if b[-1] == 0:  # a restart: the Krylov space closed, larger eigenvalues may lie outside it
    return False
  theta, U = np.linalg.eigh(tridiagonal(a, b[:-1]))
  idx = _select(theta, k, which)
  err = np.abs(b[-1] * U[-1, idx])
  if kind == "eigenvalue":
    err = eigenvalue_error_estimates(theta, idx, err)
  return bool(np.all(err <= tol * np.abs(theta[idx])))


def eigenvalue_error_estimates(theta: np.ndarray, idx: np.ndarray, r: np.ndarray) -> np.ndarray:
  """``min(r_i, r_i² / gap_i)`` for the Ritz values ``theta[idx]`` with residuals ``r``.

  ``gap_i`` is the distance from ``θ_i`` to the nearest other Ritz value (all of
  ``theta``), the usual estimate of its distance to the rest of the spectrum in
  the Kato-Temple bound ``|θ − λ| ≤ r² / gap`` (Parlett Thm 11.7.1); a lone Ritz
  value (or a zero gap) keeps the residual bound ``r`` (Parlett Thm 4.5.1).
  """
  err = np.array(r, np.float64)
  for n, i in enumerate(np.asarray(idx)):
    others = np.delete(theta, i)
    gap = np.min(np.abs(others - theta[i])) if others.size else 0.0
    if gap > 0:
      err[n] = min(err[n], err[n] ** 2 / gap)
  return err


@functools.partial(once_jit, static_argnames=("spec", "layout"))
def _ritz_vectors(Uk, V, spec, layout=None):
  """Unit Ritz vectors ``U_kᵀ V`` as pytrees: stacked (leading axis k), and one per row
  (for the residual products), both in the params' dtypes, laid out like the params when
  they are placed over a mesh. V is chunk-major (K, rows, C)."""
  Y = jnp.einsum("ir,krc->kic", Uk, V, precision=_HI)
  Y = from_chunks(Y / jnp.sqrt(_ksum(jnp.sum(Y * Y, axis=-1)))[None, :, None], spec.size)
  ys = tuple(_as_tree(Y[i], spec, layout) for i in range(Y.shape[0]))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *ys)
  if layout is not None:
    stacked = layout.constrain_tree(stacked, lead=1)
  return stacked, ys


@functools.partial(once_jit, static_argnames=("spec",))
def _residual_norms(AY, Y, th_parts, spec):
  """``‖A y_i − θ_i y_i‖`` per pair, formed and summed in float64 (a local scope)."""
  with jax.enable_x64(True):
    f64 = jnp.float64
    theta = sum(t.astype(f64) for t in th_parts)
    AY = jnp.stack([ops.ravel(a, spec, f64) for a in AY])
    Y = jnp.stack([ops.ravel(y, spec, f64) for y in Y])
    R = AY - theta[:, None] * Y
    return jnp.sqrt(jnp.sum(R * R, axis=1))
