"""In-context regression baselines, batched over prompts and prefix lengths.

Every predictor takes a prompt batch xs (B, N, d), ys (B, N) and returns
preds (B, N) where preds[b, i] predicts ys[b, i] from the i examples
(x_j, y_j)_{j<i} and the query x_i: the same convention as the transformer,
which predicts y at every x position (Garg et al. 2022, Sec. 2). With no
example (i = 0) every method predicts 0.

All prefixes are computed at once from the exclusive prefix sums
S_i = sum_{j<i} x_j x_j^T and b_i = sum_{j<i} y_j x_j (shape (B, N, d, d) and
(B, N, d)); the functions are jitted with their static arguments.

Methods (the paper each follows):
  * min-norm least squares w = X^+ y (Garg et al. 2022, "least squares");
  * ridge w = (S + lambda I)^{-1} b, the Bayes posterior mean for w ~ N(0, I)
    and noise sigma^2 when lambda = sigma^2 (Akyuerek et al. 2022, Sec. 4.1);
    both from the SVD of each prefix's X (never X^T X: float32-safe at i = d);
  * gradient descent on L(w) = ||X w - y||^2 / (2 i) from w_0 = 0,
    w_{k+1} = w_k - eta (S w_k - b) / i (Akyuerek et al. 2022, Eq. 4;
    Fu et al. 2023, Sec. 2.3);
  * iterative Newton (Newton-Schulz for S^+), M_0 = alpha S,
    M_{k+1} = 2 M_k - M_k S M_k, w_k = M_k b (Fu et al. 2023, Eqs. 4-5);
  * k-nearest neighbours (uniform weights) and averaging w = (1/i) sum_j y_j x_j
    (Garg et al. 2022, Sec. 3 baselines).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_prompt(xs, ys):
  if getattr(xs, "ndim", None) != 3:
    raise ValueError(f"xs: expected shape (B, N, d), got {getattr(xs, 'shape', xs)}")
  if getattr(ys, "ndim", None) != 2 or tuple(ys.shape) != tuple(xs.shape[:2]):
    raise ValueError(f"ys: expected shape {tuple(xs.shape[:2])} (B, N), "
                     f"got {getattr(ys, 'shape', ys)}")


def _check_steps(name, steps):
  bad = ValueError(f"{name}={steps!r}: expected a non-empty increasing sequence of ints >= 0, "
                   f"e.g. {name}=(0, 1, 2, 4, 8)")
  if isinstance(steps, str) or not isinstance(steps, Sequence | np.ndarray):
    raise bad
  if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps):
    raise bad
  steps = tuple(int(s) for s in steps)
  if not steps or any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
    raise ValueError(f"{name}={steps!r}: expected a non-empty increasing tuple of ints >= 0")
  return steps


def prefix_stats(xs: jax.Array, ys: jax.Array):
  """Exclusive prefix moments: S (B, N, d, d), b (B, N, d), count (N,)."""
  outer = jnp.einsum("bni,bnj->bnij", xs, xs)
  xy = xs * ys[..., None]
  # Shift the inclusive sums right by one: S_0 = 0 exactly (no cumsum - outer cancellation).
  s = jnp.cumsum(outer, axis=1)
  s = jnp.concatenate([jnp.zeros_like(s[:, :1]), s[:, :-1]], axis=1)
  b = jnp.cumsum(xy, axis=1)
  b = jnp.concatenate([jnp.zeros_like(b[:, :1]), b[:, :-1]], axis=1)
  count = jnp.arange(xs.shape[1], dtype=xs.dtype)
  return s, b, count


def _predict(xs, w):
  return jnp.einsum("bnd,bnd->bn", xs, w)


# ---------------------------------------------------------------- closed forms

def _prefix_svd(xs, ys):
  """Thin SVD of every prefix design matrix X_{<i}, zero-padded to (N, d).

  Returns U (B, N, N, d), s (B, N, d), Vt (B, N, d, d) and the masked labels
  y_{<i} (B, N, N). Zero rows change neither the singular values nor V, so the
  padded SVD is the SVD of X_{<i}; working on X instead of S = X^T X keeps the
  condition number cond(X) rather than cond(X)^2 (the float32 failure near i = d).
  """
  n = xs.shape[1]
  mask_NxN = (jnp.arange(n)[None, :] < jnp.arange(n)[:, None]).astype(xs.dtype)  # [i, j]: j < i
  x_BxNxNxD = mask_NxN[None, :, :, None] * xs[:, None, :, :]
  y_BxNxN = mask_NxN[None] * ys[:, None, :]
  u, s, vt = jnp.linalg.svd(x_BxNxNxD, full_matrices=False)
  return u, s, vt, y_BxNxN


def _spectral_solve(u, s, vt, y, filt):
  """w = V diag(filt(s)) U^T y for every prompt and prefix."""
  uy = jnp.einsum("bnjk,bnj->bnk", u, y)
  return jnp.einsum("bnkd,bnk->bnd", vt, filt(s) * uy)


@functools.partial(jax.jit, static_argnames=("rcond",))
def _lstsq_weights(xs, ys, rcond=None):
  u, s, vt, y = _prefix_svd(xs, ys)
  if rcond is None:
    # numpy.linalg.lstsq's default: eps * max(rows, cols), rows = i for prefix i.
    rows = jnp.maximum(jnp.arange(xs.shape[1]), xs.shape[-1]).astype(xs.dtype)
    rc = (jnp.finfo(xs.dtype).eps * rows)[None, :, None]
  else:
    rc = rcond
  cut = rc * s[..., :1]
  def pinv(s):
    keep = s > cut
    return jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
  return _spectral_solve(u, s, vt, y, pinv)


def least_squares_weights(xs: jax.Array, ys: jax.Array, rcond: float | None = None) -> jax.Array:
  """Min-norm least-squares weights w_i = X_{<i}^+ y_{<i} for every prefix: (B, N, d).

  Math: w = argmin ||w|| s.t. w minimizes ||X_{<i} w - y_{<i}||^2, i.e. the
  pseudo-inverse solution X^+ y = V diag(1/s) U^T y (Garg et al. 2022, Sec. 3),
  from the SVD X_{<i} = U diag(s) V^T. The SVD of X (not an eigendecomposition
  of X^T X, whose condition number is squared) keeps float32 accurate near
  i = d, where X_{<i} is square and worst conditioned.

  Args:
    xs, ys: prompts (B, N, d), (B, N).
    rcond: singular values of X_{<i} below rcond * s_max are treated as zero;
      None uses numpy.linalg.lstsq's default eps * max(i, d).
  """
  _check_prompt(xs, ys)
  if rcond is not None and not (isinstance(rcond, (int, float)) and 0 <= rcond < 1):
    raise ValueError(f"rcond={rcond!r}: expected None or a float in [0, 1)")
  return _lstsq_weights(xs, ys, rcond=None if rcond is None else float(rcond))


def least_squares(xs: jax.Array, ys: jax.Array, rcond: float | None = None) -> jax.Array:
  """Min-norm least-squares predictions (B, N); see `least_squares_weights`."""
  return _predict(xs, least_squares_weights(xs, ys, rcond))


@jax.jit
def _ridge_weights(xs, ys, lam):
  u, s, vt, y = _prefix_svd(xs, ys)
  return _spectral_solve(u, s, vt, y, lambda s: s / (s * s + lam))


def ridge_weights(xs: jax.Array, ys: jax.Array, lam: float) -> jax.Array:
  """Ridge weights w_i = (S_i + lam I)^{-1} b_i for every prefix: (B, N, d).

  Math: argmin_w ||X w - y||^2 + lam ||w||^2. For y = w^T x + N(0, sigma^2) and
  w ~ N(0, I) the posterior mean is this with lam = sigma^2 (Akyuerek et al.
  2022, Sec. 4.1), the Bayes-optimal predictor under squared error. Computed
  as V diag(s / (s^2 + lam)) U^T y from the SVD of X_{<i}, which never forms
  X^T X (the same solution, float32-accurate for any lam > 0).
  """
  _check_prompt(xs, ys)
  if not (isinstance(lam, (int, float, np.floating)) and lam > 0):
    raise ValueError(f"lam={lam!r}: expected a float > 0 (use least_squares for lam = 0)")
  return _ridge_weights(xs, ys, jnp.asarray(lam, xs.dtype))


def ridge(xs: jax.Array, ys: jax.Array, lam: float) -> jax.Array:
  """Ridge predictions (B, N); see `ridge_weights`."""
  return _predict(xs, ridge_weights(xs, ys, lam))


# ---------------------------------------------------------------- iterative

def _segments(steps):
  prev = 0
  for s in steps:
    yield s - prev
    prev = s


@functools.partial(jax.jit, static_argnames=("steps",))
def _gd_weights(xs, ys, lr, steps):
  s, b, count = prefix_stats(xs, ys)
  n = jnp.maximum(count, 1.0)[None, :, None]
  if lr is None:
    # eta = 1 / L with L = lambda_max(S / i), the largest step the quadratic's
    # smoothness guarantees monotone descent for.
    lmax = jnp.linalg.eigvalsh(s)[..., -1] / n[..., 0]
    eta = jnp.where(lmax > 0, 1.0 / jnp.where(lmax > 0, lmax, 1.0), 0.0)[..., None]
  else:
    eta = lr
  w = jnp.zeros_like(b)
  out = []
  for seg in _segments(steps):
    def body(_, w):
      grad = (jnp.einsum("bnij,bnj->bni", s, w) - b) / n
      return w - eta * grad
    w = jax.lax.fori_loop(0, seg, body, w)
    out.append(w)
  return jnp.stack(out)


def gd_weights(xs: jax.Array, ys: jax.Array, steps: int | Sequence[int],
               lr: float | None = None) -> jax.Array:
  """Gradient-descent weights after each of `steps` steps: (len(steps), B, N, d).

  An int `steps=k` gives the weights after k steps alone, (B, N, d).

  Math: w_0 = 0, w_{k+1} = w_k - eta * (S_i w_k - b_i) / i, the gradient of
  ||X_{<i} w - y_{<i}||^2 / (2 i) (Akyuerek et al. 2022, Eq. 4; Fu et al. 2023,
  Sec. 2.3).

  Args:
    xs, ys: prompts (B, N, d), (B, N).
    steps: increasing step counts to return, e.g. (0, 1, 2, 4, 8), or one int.
    lr: fixed eta; None uses eta = 1 / lambda_max(S_i / i) per prompt and prefix.
  """
  _check_prompt(xs, ys)
  one = isinstance(steps, (int, np.integer)) and not isinstance(steps, bool)
  if one and steps < 0:
    raise ValueError(f"steps={steps!r}: expected an int >= 0 or a non-empty increasing "
                     "sequence of ints >= 0, e.g. steps=(0, 1, 2, 4, 8)")
  steps = _check_steps("steps", (int(steps),) if one else steps)
  if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
    raise ValueError(f"lr={lr!r}: expected a float > 0 or None (1 / L per prompt)")
  w = _gd_weights(xs, ys, None if lr is None else float(lr), steps)
  return w[0] if one else w


def gd(xs, ys, steps: int | Sequence[int], lr: float | None = None) -> jax.Array:
  """GD predictions after each of `steps` steps: (len(steps), B, N); (B, N) for an int."""
  w = gd_weights(xs, ys, steps, lr)
  return jnp.einsum("bnd,...bnd->...bn", xs, w)


@functools.partial(jax.jit, static_argnames=("steps",))
def _newton_weights(xs, ys, alpha_scale, steps):
  s, b, _ = prefix_stats(xs, ys)
  lmax = jnp.linalg.eigvalsh(s)[..., -1]
  # ||S S^T||_2 = lambda_max(S)^2 for symmetric PSD S.
  alpha = jnp.where(lmax > 0, alpha_scale / jnp.where(lmax > 0, lmax, 1.0) ** 2, 0.0)
  m = alpha[..., None, None] * s
  out = []
  for seg in _segments(steps):
    def body(_, m):
      return 2.0 * m - m @ s @ m
    m = jax.lax.fori_loop(0, seg, body, m)
    out.append(jnp.einsum("bnij,bnj->bni", m, b))
  return jnp.stack(out)


def newton_weights(xs: jax.Array, ys: jax.Array, steps: Sequence[int],
                   alpha_scale: float = 1.0) -> jax.Array:
  """Iterative-Newton weights after each of `steps` iterations: (len(steps), B, N, d).

  Math (Fu et al. 2023, Eqs. 4-5; the Newton-Schulz iteration for S^+):
    M_0 = alpha S,  alpha = alpha_scale / ||S S^T||_2,
    M_{k+1} = 2 M_k - M_k S M_k,   w_k = M_k X^T y.
  The residual I - M_k S = (I - alpha S^2)^(2^k) on the range of S, so w_k -> S^+ b
  (min-norm least squares) quadratically iff 0 < alpha_scale < 2. At the
  boundary alpha_scale = 2 the top eigen-direction of S is annihilated in one
  step and never recovered (1 - 2 = -1 squares to 1), hence the default 1.

  Args:
    xs, ys: prompts (B, N, d), (B, N).
    steps: increasing iteration counts to return (0 = M_0).
    alpha_scale: c in alpha = c / ||S S^T||_2, in (0, 2).
  """
  _check_prompt(xs, ys)
  steps = _check_steps("steps", steps)
  if not (isinstance(alpha_scale, (int, float)) and 0.0 < alpha_scale < 2.0):
    raise ValueError(f"alpha_scale={alpha_scale!r}: expected a float in (0, 2) "
                     "(Newton-Schulz converges iff 0 < alpha ||S||^2 < 2)")
  return _newton_weights(xs, ys, float(alpha_scale), steps)


def newton(xs, ys, steps: Sequence[int], alpha_scale: float = 1.0) -> jax.Array:
  """Iterative-Newton predictions after each of `steps` iterations: (len(steps), B, N)."""
  w = newton_weights(xs, ys, steps, alpha_scale)
  return jnp.einsum("bnd,kbnd->kbn", xs, w)


# ---------------------------------------------------------------- local / trivial

@functools.partial(jax.jit, static_argnames=("k",))
def _knn(xs, ys, k):
  n = xs.shape[1]
  d2 = jnp.sum((xs[:, :, None, :] - xs[:, None, :, :]) ** 2, axis=-1)  # (B, N_query, N_ctx)
  earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # j < i
  d2 = jnp.where(earlier[None], d2, jnp.inf)
  kk = min(k, n)
  neg, idx = jax.lax.top_k(-d2, kk)
  valid = jnp.isfinite(neg)
  y_nb = jnp.take_along_axis(jnp.broadcast_to(ys[:, None, :], d2.shape), idx, axis=-1)
  total = jnp.sum(jnp.where(valid, y_nb, 0.0), axis=-1)
  cnt = jnp.sum(valid, axis=-1)
  return jnp.where(cnt > 0, total / jnp.maximum(cnt, 1), 0.0)


def knn(xs: jax.Array, ys: jax.Array, k: int = 3) -> jax.Array:
  """k-nearest-neighbour predictions (B, N): the mean label of the min(k, i) closest earlier x's.

  Garg et al. 2022, Sec. 3 (k = 3, uniform weights, Euclidean distance).
  """
  _check_prompt(xs, ys)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k={k!r}: expected an int >= 1")
  return _knn(xs, ys, int(k))


@jax.jit
def _averaging_weights(xs, ys):
  _, b, count = prefix_stats(xs, ys)
  return b / jnp.maximum(count, 1.0)[None, :, None]


def averaging_weights(xs, ys) -> jax.Array:
  """w_i = (1/i) sum_{j<i} y_j x_j: (B, N, d) (Garg et al. 2022, Sec. 3)."""
  _check_prompt(xs, ys)
  return _averaging_weights(xs, ys)


def averaging(xs, ys) -> jax.Array:
  """Averaging predictions (B, N): x_i^T (1/i) sum_{j<i} y_j x_j."""
  return _predict(xs, averaging_weights(xs, ys))
