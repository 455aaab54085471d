"""Batch size, the sharpness of the mini-batch Hessian and the maximal stable learning rate.

Granziol, Zohren & Roberts, "Learning Rates as a Function of Batch Size: A
Random Matrix Theory Approach to Neural Network Training", JMLR 23 (2022),
arXiv:2006.09092. The mini-batch Hessian is modelled as the full-data-set
Hessian plus a random noise matrix whose entries have variance σ²/B (a spiked,
field-dependent Wigner model); the top eigenvalue of the sum follows the
Baik-Ben Arous-Péché (BBP) spike formula: an outlier λ + Pσ²/(Bλ) above the
threshold, the bulk edge 2σ√(P/B) below it. Stability of (S)GD on the local
quadratic then gives the maximal learning rate 2/λ_max(B): linear in B while
the noise term dominates, constant (2/λ) for large B.

Note on sources: only the paper's abstract and front matter were reachable
from this project's reference search, not the body. The formula below is the
spiked-Wigner (BBP) form the abstract describes; the finite-population factor
(1/B − 1/N) (sampling without replacement, so that B = N gives the full
Hessian exactly) is our addition and disappears for N → ∞ (`num_examples=None`).
The on-the-fly rule (:func:`slq_lr_hook`) sets the SGD learning rate from a
Lanczos (SLQ) estimate of the batch sharpness, as the paper's abstract
describes; its exact constants are ours and are stated there.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import lanczos, tridiagonal


def _batch_sizes(batch_sizes: Any, num_examples: int | None) -> np.ndarray:
  b = np.asarray(batch_sizes, np.float64).reshape(-1)
  if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b < 1):
    raise ValueError(f"batch_sizes is {batch_sizes!r}; allowed: numbers >= 1")
  if num_examples is not None:
    if num_examples < 1:
      raise ValueError(f"num_examples is {num_examples!r}; allowed: None or an int >= 1")
    if np.any(b > num_examples):
      raise ValueError(f"batch_sizes {batch_sizes!r} exceed num_examples={num_examples}; "
                       "allowed: 1 <= B <= num_examples")
  return b


def noise_scale(batch_sizes: Any, noise: float, num_examples: int | None = None) -> np.ndarray:
  """s(B) = Pσ² (1/B − 1/N): the squared bulk half-width of the batch-noise matrix."""
  b = _batch_sizes(batch_sizes, num_examples)
  inv_n = 0.0 if num_examples is None else 1.0 / num_examples
  return noise * (1.0 / b - inv_n)


def batch_sharpness(batch_sizes: Any, lambda_full: float, noise: float,
                    num_examples: int | None = None) -> np.ndarray:
  """λ_max of the mini-batch Hessian predicted by the spiked random-matrix model.

  Math:
    With ``s(B) = Pσ² (1/B − 1/N)`` (``noise = Pσ²``, P parameters, σ² the
    per-example Hessian-entry variance) and ``λ = lambda_full`` the top
    eigenvalue of the full-data-set Hessian::

      λ_max(B) = λ + s(B)/λ     if λ > √s(B)   (outlier above the BBP threshold)
      λ_max(B) = 2 √s(B)        otherwise      (edge of the noise bulk)

    The two branches meet continuously at ``λ = √s``. This is the BBP spike
    formula for a rank-one spike of size λ plus a Wigner matrix of semicircle
    radius 2√s, the form Granziol et al. (2022) derive for the batch Hessian.

  Args:
    batch_sizes: B, scalar or array, ``1 <= B (<= num_examples)``.
    lambda_full: λ > 0.
    noise: Pσ² >= 0.
    num_examples: N of the data set (None: N → ∞, no finite-population factor).

  Returns:
    float64 array shaped like ``batch_sizes``.

  Example:
    >>> batch_sharpness([8, 64, 512], lambda_full=10.0, noise=2000.0)

  References:
    Granziol, Zohren & Roberts, JMLR 23 (2022), arXiv:2006.09092. Baik, Ben
    Arous & Péché, Ann. Probab. 33 (2005).
  """
  if not lambda_full > 0 or not noise >= 0:
    raise ValueError(f"lambda_full={lambda_full!r}, noise={noise!r}; allowed: lambda_full > 0, "
                     "noise >= 0")
  shape = np.shape(batch_sizes)
  s = noise_scale(batch_sizes, noise, num_examples)
  lam = float(lambda_full)
  out = np.where(lam * lam > s, lam + s / lam, 2.0 * np.sqrt(np.maximum(s, 0.0)))
  return out.reshape(shape)


def bbp_batch_size(lambda_full: float, noise: float, num_examples: int | None = None) -> float:
  """The batch size B* where λ² = s(B*): below it the top eigenvalue is the bulk edge."""
  inv_n = 0.0 if num_examples is None else 1.0 / num_examples
  return float(1.0 / (lambda_full**2 / max(noise, 1e-300) + inv_n))


class BatchSharpnessFit(NamedTuple):
  lambda_full: float  # λ: fitted (or given) top eigenvalue of the full-data-set Hessian
  noise: float  # Pσ²
  rel_rms_error: float  # √mean((fit/measured − 1)²) over the batch sizes
  max_rel_error: float  # max |fit/measured − 1|
  bbp_batch_size: float  # B*: the outlier separates from the bulk for B > B*
  num_examples: int | None


def fit_batch_sharpness(batch_sizes: Any, sharpness: Any, num_examples: int | None = None,
                        lambda_full: float | None = None) -> BatchSharpnessFit:
  """Least-squares fit of :func:`batch_sharpness` to measured λ_max(B).

  Math:
    Minimizes ``Σ_i (log λ_max(B_i; λ, Pσ²) − log λ̂_i)²`` over ``log λ`` and
    ``log Pσ²`` (relative errors, since λ̂ spans decades), from several starts
    (``scipy.optimize.least_squares``). With ``lambda_full`` given (e.g. the
    measured full-batch λ_max) only Pσ² is fitted.

  Args:
    batch_sizes: the B_i (at least 2 distinct values, or 1 with ``lambda_full``).
    sharpness: λ̂_i > 0, e.g. the mean over several batches of each size.
    num_examples: N for the (1/B − 1/N) factor (None: N → ∞).
    lambda_full: fix λ instead of fitting it.

  Returns:
    :class:`BatchSharpnessFit`.

  Raises:
    ValueError: mismatched lengths, non-positive sharpness, too few points.

  Example:
    >>> fit = fit_batch_sharpness([8, 32, 128, 1000], lam_hat, num_examples=1000)
    >>> fit.lambda_full, fit.noise, fit.rel_rms_error

  References:
    Granziol, Zohren & Roberts, JMLR 23 (2022), arXiv:2006.09092.
  """
  b = _batch_sizes(batch_sizes, num_examples)
  y = np.asarray(sharpness, np.float64).reshape(-1)
  if y.shape != b.shape:
    raise ValueError(f"sharpness has {y.size} values for {b.size} batch sizes; allowed: one each")
  if not np.all(np.isfinite(y)) or np.any(y <= 0):
    raise ValueError(f"sharpness is {sharpness!r}; allowed: finite values > 0")
  fixed = lambda_full is not None
  if fixed and not lambda_full > 0:
    raise ValueError(f"lambda_full is {lambda_full!r}; allowed: None or > 0")
  if len(np.unique(b)) < (1 if fixed else 2):
    raise ValueError(f"batch_sizes {batch_sizes!r}: need {1 if fixed else 2} distinct values")
  log_y = np.log(y)

  def model(log_lam, log_noise):
    return batch_sharpness(b, float(np.exp(log_lam)), float(np.exp(log_noise)), num_examples)

  def resid(theta):
    log_lam = np.log(lambda_full) if fixed else theta[0]
    return np.log(model(log_lam, theta[-1])) - log_y

  lam0 = float(lambda_full) if fixed else float(y[np.argmax(b)])
  s_unit = noise_scale(b, 1.0, num_examples)
  best = None
  for lam_start in ([lam0] if fixed else [lam0, 0.5 * lam0, 0.9 * float(y.min())]):
    # Outlier branch at the smallest B: λ̂ − λ ≈ s(B)/λ, so Pσ² ≈ λ(λ̂ − λ)/s_unit.
    noise_guess = lam_start * np.abs(y - lam_start).max() / max(float(s_unit.max()), 1e-12)
    for noise_start in noise_guess * np.array([0.1, 1.0, 10.0]) + 1e-12:
      x0 = np.array(([] if fixed else [np.log(lam_start)]) + [np.log(noise_start)])
      res = scipy.optimize.least_squares(resid, x0, method="lm" if len(b) > len(x0) else "trf")
      if best is None or res.cost < best.cost:
        best = res
  log_lam = np.log(lambda_full) if fixed else best.x[0]
  lam = float(lambda_full) if fixed else float(np.exp(log_lam))
  noise = float(np.exp(best.x[-1]))
  rel = model(log_lam, best.x[-1]) / y - 1.0
  return BatchSharpnessFit(lam, noise, float(np.sqrt(np.mean(rel**2))), float(np.abs(rel).max()),
                           bbp_batch_size(lam, noise, num_examples), num_examples)


def max_stable_lr_sgd(sharpness: Any, momentum: float = 0.0) -> np.ndarray:
  """η_max = 2(1 + β)/λ_max: (heavy-ball) GD is stable on a quadratic of curvature λ_max.

  With λ_max = :func:`batch_sharpness` this is Granziol et al.'s maximal SGD
  learning rate vs batch size: ≈ 2Bλ/(Pσ²) (linear in B) while Pσ²/B ≫ λ²,
  → 2/λ as B grows. Momentum β: the heavy-ball threshold (Polyak 1964;
  Cohen et al. 2021, arXiv:2103.00065, Appendix).
  """
  lam = np.asarray(sharpness, np.float64)
  if np.any(lam <= 0) or not 0 <= momentum < 1:
    raise ValueError(f"sharpness {sharpness!r}, momentum {momentum!r}; allowed: sharpness > 0, "
                     "0 <= momentum < 1")
  return 2.0 * (1.0 + momentum) / lam


def max_stable_lr_adam(preconditioned_sharpness: Any, b1: float = 0.9) -> np.ndarray:
  """η_max = (2 + 2β₁)/((1 − β₁) λ_max(P⁻¹H)) for Adam with a frozen preconditioner P.

  P = diag(√v + ε), v the second-moment estimate. Adam is an EMA-of-gradients
  (momentum β₁ in its 1−β₁ normalized form) on the preconditioned quadratic
  (Cohen et al., "Adaptive gradient methods at the edge of stability",
  arXiv:2207.14484, eq. 1). With a mini-batch, v ≈ ḡ² + diag Σ/B: the
  preconditioner shrinks like 1/√B in the noise-dominated regime, which turns
  SGD's linear scaling into Granziol et al.'s square-root scaling for Adam.
  """
  lam = np.asarray(preconditioned_sharpness, np.float64)
  if np.any(lam <= 0) or not 0 <= b1 < 1:
    raise ValueError(f"preconditioned_sharpness {preconditioned_sharpness!r}, b1 {b1!r}; "
                     "allowed: > 0 and 0 <= b1 < 1")
  return (2.0 + 2.0 * b1) / ((1.0 - b1) * lam)


class Exponent(NamedTuple):
  exponent: float  # slope of log η vs log B
  stderr: float  # its ordinary-least-squares standard error (nan with 2 points)
  intercept: float


def scaling_exponent(batch_sizes: Any, learning_rates: Any) -> Exponent:
  """Least-squares slope of log η against log B (1: linear scaling, 0.5: square root)."""
  b = _batch_sizes(batch_sizes, None)
  lr = np.asarray(learning_rates, np.float64).reshape(-1)
  if lr.shape != b.shape or np.any(~np.isfinite(lr)) or np.any(lr <= 0):
    raise ValueError(f"learning_rates {learning_rates!r}; allowed: one finite value > 0 per "
                     "batch size")
  if len(np.unique(b)) < 2:
    raise ValueError(f"batch_sizes {batch_sizes!r}; allowed: at least 2 distinct values")
  x, y = np.log(b), np.log(lr)
  slope, intercept = np.polyfit(x, y, 1)
  n = len(x)
  if n > 2:
    r = y - (slope * x + intercept)
    stderr = float(np.sqrt(np.sum(r**2) / (n - 2) / np.sum((x - x.mean()) ** 2)))
  else:
    stderr = float("nan")
  return Exponent(float(slope), stderr, float(intercept))


def top_eigenvalue(matvec: Callable, params_like: Any, num_iters: int, key: jax.Array | int,
                   dtype: Any = None) -> float:
  """The largest Ritz value of ``num_iters`` Lanczos steps (the top SLQ node); ``key`` as in
  :func:`~jaxlab.spectral.lanczos.lanczos` (a PRNG key or an int seed)."""
  m = min(int(num_iters), ops.flat_spec(params_like).size)
  res = lanczos(matvec, params_like, m, key, dtype=dtype)
  return float(np.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))[-1])


_PRECOND_CACHE: dict = {}


def preconditioned_hessian_vp(loss_fn: Callable, params: Any, batch: Any, diag: Any) -> Callable:
  """``v -> D^{-1/2} H D^{-1/2} v`` on one batch: similar to ``D⁻¹H``, with the same eigenvalues.

  ``diag`` (shaped like params, > 0) is Adam's preconditioner ``D = √v + ε``;
  λ_max of this operator is the "preconditioned sharpness" that
  :func:`max_stable_lr_adam` takes. Returns a ``jax.tree_util.Partial`` (one
  compile per batch shape when passed to :func:`~jaxlab.spectral.lanczos`).
  """
  ops.check_like(diag, ops.flat_spec(params, "params"), "diag")
  if any(bool(jnp.any(d <= 0)) for d in jax.tree.leaves(diag)):
    raise ValueError("diag has entries <= 0; allowed: a positive preconditioner √v + ε")
  fn = _PRECOND_CACHE.get(loss_fn)
  if fn is None:
    def fn(params, batch, inv_sqrt, v):
      u = jax.tree.map(lambda a, b: (a * b).astype(b.dtype), v, inv_sqrt)
      hu = jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (u,))[1]
      return jax.tree.map(lambda a, b, t: (a * b).astype(t.dtype), hu, inv_sqrt, v)
    _PRECOND_CACHE[loss_fn] = fn
  inv_sqrt = jax.tree.map(lambda d: 1.0 / jnp.sqrt(d), diag)
  return jax.tree_util.Partial(fn, params, ops.place_batch(batch), inv_sqrt)


class SLQLearningRateHook:
  """Train-loop hook (``updates_state = True``) behind :func:`slq_lr_hook`."""

  updates_state = True

  def __init__(self, loss_fn, batch_fn, every_steps, num_iters, num_batches, fraction,
               momentum, min_lr, max_lr, seed, dtype):
    self.loss_fn = loss_fn
    self.batch_fn = batch_fn
    self.every_steps = every_steps
    self.num_iters = num_iters
    self.num_batches = num_batches
    self.fraction = fraction
    self.momentum = momentum
    self.min_lr = min_lr
    self.max_lr = max_lr
    self.seed = seed
    self.dtype = dtype

  def learning_rate(self, step: int, params: Any) -> tuple[float, float]:
    """(η, λ̂): λ̂ the mean top Ritz value over `num_batches` batches of the training size."""
    key = jax.random.fold_in(jax.random.key(self.seed), int(step))
    lams = []
    for j in range(self.num_batches):
      batch = self.batch_fn(int(step) + j)
      mv = ops.hessian_vp(self.loss_fn, params, batch)
      lams.append(top_eigenvalue(mv, params, self.num_iters, jax.random.fold_in(key, j),
                                 self.dtype))
    lam = float(np.mean(lams))
    lr = self.fraction * 2.0 * (1.0 + self.momentum) / max(lam, 1e-12)
    return float(np.clip(lr, self.min_lr, self.max_lr)), lam

  def __call__(self, step: int, state: Any):
    hp = getattr(state.opt_state, "hyperparams", None)
    if not isinstance(hp, dict) or "learning_rate" not in hp:
      raise ValueError("slq_lr_hook needs tx = optax.inject_hyperparams(...)(learning_rate=...) "
                       f"at the top of the chain; its opt_state has no hyperparams['learning_rate'] "
                       f"(got {type(state.opt_state).__name__})")
    lr, lam = self.learning_rate(step, state.params)
    new_hp = dict(hp)
    new_hp["learning_rate"] = jnp.asarray(lr, jnp.result_type(hp["learning_rate"]))
    new_state = state._replace(opt_state=state.opt_state._replace(hyperparams=new_hp))
    return {"slq_batch_sharpness": lam, "slq_learning_rate": lr}, new_state


def slq_lr_hook(loss_fn: Callable, batch_fn: Callable[[int], Any], every_steps: int,
                num_iters: int = 20, num_batches: int = 1, fraction: float = 0.5,
                momentum: float = 0.0, min_lr: float = 0.0, max_lr: float = float("inf"),
                seed: int = 0, dtype: Any = None) -> SLQLearningRateHook:
  """On-the-fly learning rate from the sharpness of the mini-batch Hessian.

  Math:
    Every ``every_steps`` steps, at the current parameters θ_t, λ̂ = mean over
    ``num_batches`` training-size batches of the top node of a stochastic
    Lanczos quadrature (the largest Ritz value of ``num_iters`` Lanczos steps
    from a random vector on :func:`hessian_vp`), and ::

      η_t = clip(fraction · 2(1 + β)/λ̂, min_lr, max_lr)

    i.e. a fixed fraction of the maximal stable (heavy-ball) SGD rate of the
    batch Hessian, :func:`max_stable_lr_sgd`. Granziol et al. (2022, §"on the
    fly learning rate") set SGD's learning rate from SLQ estimates of the batch
    Hessian's extremal eigenvalue so that no learning-rate sweep is needed; the
    paper body was not reachable here, so ``fraction`` (default 0.5: η = 1/λ̂
    without momentum, the rate that removes the top direction in one step,
    |1 − ηλ̂| = 0) is our choice, not theirs.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (mean over the batch).
    batch_fn: ``step -> batch`` at the training batch size (e.g. a separately
      seeded ``jaxlab.data.Batches``); the hook uses steps ``step .. step+num_batches−1``.
    every_steps: the loop calls the hook when ``step % every_steps == 0``.
    num_iters: Lanczos steps per batch.
    num_batches: batches averaged per estimate.
    fraction: η as a fraction of the stability limit, in (0, 1].
    momentum: β of the SGD momentum (heavy-ball threshold 2(1 + β)/λ).
    min_lr, max_lr: clip range of η.
    seed: Lanczos start vectors use ``fold_in(key(seed), step)``.
    dtype: Lanczos working dtype (``jnp.float64`` in an x64 scope).

  Returns:
    A hook with ``every_steps``, ``updates_state = True`` and
    ``__call__(step, state) -> (metrics, new_state)`` that writes
    ``state.opt_state.hyperparams["learning_rate"]``; ``tx`` must be
    ``optax.inject_hyperparams(optax.sgd)(learning_rate=η₀, momentum=β)``.

  Raises:
    ValueError: bad arguments; at call time, a ``tx`` without injected learning rate.

  Example:
    >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
    >>> hook = slq_lr_hook(probe_loss, data.Batches(arrays, 32, seed=7), every_steps=50)
    >>> train.train(loss_fn, params, tx, batches, num_steps=1000, key=key, hooks=(hook,))

  References:
    Granziol, Zohren & Roberts, JMLR 23 (2022), arXiv:2006.09092. Ubaru, Chen
    & Saad, SIAM J. Matrix Anal. Appl. 38 (2017) (stochastic Lanczos quadrature).
  """
  for name, value, lo in (("every_steps", every_steps, 1), ("num_iters", num_iters, 1),
                          ("num_batches", num_batches, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
      raise ValueError(f"{name} is {value!r}; allowed: an int >= {lo}")
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction is {fraction!r}; allowed: 0 < fraction <= 1")
  if not 0 <= momentum < 1:
    raise ValueError(f"momentum is {momentum!r}; allowed: 0 <= momentum < 1")
  if not 0 <= min_lr < max_lr:
    raise ValueError(f"min_lr={min_lr!r}, max_lr={max_lr!r}; allowed: 0 <= min_lr < max_lr")
  if not callable(batch_fn):
    raise ValueError(f"batch_fn is {batch_fn!r}; allowed: a callable step -> batch")
  return SLQLearningRateHook(loss_fn, batch_fn, int(every_steps), int(num_iters),
                             int(num_batches), float(fraction), float(momentum), float(min_lr),
                             float(max_lr), int(seed), dtype)
