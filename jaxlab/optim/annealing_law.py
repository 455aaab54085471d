"""Loss curve as a function of the learning-rate schedule (Tissue et al. 2024).

Math (their eq. 1, with the momentum form of the annealing area, their eq. 5):
  L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s),
  S1(s) = sum_{i<=s} eta_i                      (forward area),
  S2(s) = sum_{i<=s} m_i,  m_i = decay * m_{i-1} + (eta_{i-1} - eta_i), m_0 = 0
                                                (annealing area with momentum; decay ~ 0.999).
Warmup: the paper (section 3.4) and its reference code count warmup steps at
the peak learning rate in both areas, so warmup neither adds a short S1 nor a
negative annealing area; `areas(..., warmup_steps=w)` does the same.

Fitting follows the reference code: a Huber loss (delta 1e-3) on the residual
of log L, minimized with L-BFGS-B from a grid of starts, all four parameters
only bounded below by 0. The paper fits on evaluation points after an early
transient (e.g. every 1,000 steps from step 1,000 of 20,000); `fit(...,
steps=...)` takes the losses at those steps and the schedule at every step.

References:
  Tissue, Wang, Wang, Wang, Liu, Zhang, "Scaling Law with Learning Rate
  Annealing", 2024, https://arxiv.org/abs/2408.11029
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np
import scipy.optimize
import scipy.signal


class AnnealingLaw(NamedTuple):
  """Fitted parameters of L(s) = L0 + A S1^-alpha - C S2 (eq. 1)."""

  L0: float
  A: float
  alpha: float
  C: float
  decay: float = 0.999
  warmup_steps: int = 0

  def predict(self, lrs, steps=None) -> np.ndarray:
    """Predicted loss at every step of the schedule ``lrs`` (or at ``steps``)."""
    return predict(self, lrs, steps)


def _check_lrs(lrs, name: str = "lrs") -> np.ndarray:
  eta = np.asarray(lrs, np.float64).ravel()
  if eta.size == 0 or not np.all(np.isfinite(eta)) or np.any(eta < 0):
    raise ValueError(f"{name} (length {eta.size}) is not allowed: pass finite learning rates >= 0.")
  return eta


def areas(lrs, decay: float = 0.999, warmup_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(S1, S2) at every step of the learning-rate sequence ``lrs`` (eq. 1 and 5).

  Args:
    lrs: the learning rate of every step, from the first.
    decay: lambda of the momentum form of S2, in [0, 1).
    warmup_steps: the first so many steps count at the peak learning rate
      ``max(lrs)`` (the paper's section 3.4 and reference code).
  """
  eta = _check_lrs(lrs)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay={decay!r} is not allowed: pick a value in [0, 1).")
  if not isinstance(warmup_steps, (int, np.integer)) or not 0 <= warmup_steps < eta.size:
    raise ValueError(f"warmup_steps={warmup_steps!r} is not allowed: pick an int in "
                     f"[0, {eta.size}) (the schedule has {eta.size} steps).")
  if warmup_steps:
    eta = eta.copy()
    eta[:warmup_steps] = eta.max()
  s1 = np.cumsum(eta)
  drops = np.concatenate([[0.0], eta[:-1] - eta[1:]])
  # m_i = decay * m_{i-1} + drop_i is a first-order IIR filter.
  m = scipy.signal.lfilter([1.0], [1.0, -decay], drops)
  return s1, np.cumsum(m)


def predict(law: AnnealingLaw, lrs, steps=None) -> np.ndarray:
  """L(s) for every step s of ``lrs``, or only at the 0-based indices ``steps``."""
  s1, s2 = areas(lrs, law.decay, law.warmup_steps)
  if steps is not None:
    idx = _check_steps(steps, s1.size, "steps")
    s1, s2 = s1[idx], s2[idx]
  return law.L0 + law.A * s1 ** (-law.alpha) - law.C * s2


def _check_steps(steps, n: int, name: str) -> np.ndarray:
  idx = np.asarray(steps).ravel()
  if not np.issubdtype(idx.dtype, np.integer) or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
    raise ValueError(f"{name} must be integer step indices in [0, {n}) into the schedule; got "
                     f"{idx.size} values" + (f" in [{idx.min()}, {idx.max()}]" if idx.size else ""))
  return idx


def _as_runs(lrs, losses, steps):
  single = isinstance(lrs, np.ndarray) and lrs.ndim == 1 or (len(lrs) and np.isscalar(lrs[0]))
  if single:
    lrs, losses, steps = [lrs], [losses], [steps] if steps is not None else None
  if len(lrs) != len(losses):
    raise ValueError(f"got {len(lrs)} learning-rate runs but {len(losses)} loss runs.")
  if steps is not None and len(steps) != len(lrs):
    raise ValueError(f"got {len(lrs)} learning-rate runs but {len(steps)} step lists.")
  out = []
  for k, (lr, loss) in enumerate(zip(lrs, losses, strict=True)):
    lr, loss = _check_lrs(lr, f"run {k}: lrs"), np.asarray(loss, np.float64).ravel()
    if steps is None:
      if lr.shape != loss.shape:
        raise ValueError(f"run {k}: lrs has {lr.size} steps but losses has {loss.size}.")
      idx = np.arange(lr.size)
    else:
      idx = _check_steps(steps[k], lr.size, f"run {k}: steps")
      if idx.size != loss.size:
        raise ValueError(f"run {k}: steps has {idx.size} entries but losses has {loss.size}.")
    if np.any(loss <= 0) or not np.all(np.isfinite(loss)):
      raise ValueError(f"run {k}: losses must be finite and > 0 (the fit is on log L).")
    out.append((lr, loss, idx))
  return out


def fit(lrs, losses, steps=None, decay: float = 0.999, warmup_steps: int = 0,
        huber_delta: float = 1e-3,
        inits: Sequence[tuple[float, float, float, float]] | None = None) -> AnnealingLaw:
  r"""Fits (L0, A, alpha, C) of eq. 1 to one run or several runs jointly.

  Minimizes sum_runs sum_steps Huber_delta(log L_pred - log L) with L-BFGS-B
  from every start in ``inits``, parameters bounded below by 0 (the
  reference code's objective and bounds).

  Args:
    lrs: a learning-rate sequence (every step), or a list of them (one per run).
    losses: the matching losses: at every step, or at ``steps``.
    steps: None (a loss at every step), or per run the 0-based step indices at
      which ``losses`` were measured (e.g. evaluation steps after the transient).
    decay: the momentum factor lambda of the annealing area.
    warmup_steps: steps counted at the peak learning rate (see `areas`).
    huber_delta: Huber threshold on log-loss residuals.
    inits: starting points (L0, A, alpha, C); by default a grid scaled to the
      data (L0 a fraction of the smallest loss, A to the loss range, C so that
      C * max S2 spans a fraction of the losses).

  Returns:
    The best `AnnealingLaw` over the starts.

  Example:
    >>> import numpy as np
    >>> lrs = np.full(500, 1e-2)
    >>> law = AnnealingLaw(2.0, 1.0, 0.5, 5.0)
    >>> round(fit(lrs, law.predict(lrs)).L0, 2)
    2.0
  """
  if not huber_delta > 0:
    raise ValueError(f"huber_delta={huber_delta!r} is not allowed: pick a value > 0.")
  runs = _as_runs(lrs, losses, steps)
  s1s, s2s = [], []
  for lr, _, idx in runs:
    s1, s2 = areas(lr, decay, warmup_steps)
    s1s.append(s1[idx])
    s2s.append(s2[idx])
  s1, s2 = np.concatenate(s1s), np.concatenate(s2s)
  logl = np.concatenate([np.log(loss) for _, loss, _ in runs])
  log_s1 = np.log(s1)

  def objective(x):
    L0, A, alpha, C = x
    with np.errstate(over="ignore", invalid="ignore"):  # a trial step far out: see the wall below
      p1 = np.exp(-alpha * log_s1)
      pred = L0 + A * p1 - C * s2
    if not np.all(np.isfinite(pred) & (pred > 0)):  # outside the law's domain: a wall
      return 1e30, np.zeros(4)
    r = np.log(pred) - logl
    a = np.abs(r)
    loss = np.where(a <= huber_delta, 0.5 * r**2, huber_delta * (a - 0.5 * huber_delta)).sum()
    dr = np.clip(r, -huber_delta, huber_delta) / pred  # dHuber/dr * dlog(pred)/dpred
    grad = np.array([dr.sum(), dr @ p1, -(dr @ (A * p1 * log_s1)), -(dr @ s2)])
    return loss, grad

  if inits is None:
    lmin, lmax = float(np.exp(logl.min())), float(np.exp(logl.max()))
    span = max(lmax - lmin, 1e-3 * lmax)
    s1_0, s2_max = float(s1.min()), max(float(s2.max()), 1e-12)
    inits = [(f * lmin, g * span * s1_0**al, al, h * span / s2_max)
             for f, g, al, h in itertools.product((0.5, 0.9), (1.0, 10.0), (0.2, 0.5, 1.0),
                                                  (0.01, 0.3))]
  best = None
  for x0 in inits:
    res = scipy.optimize.minimize(objective, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
                                  bounds=[(0.0, None)] * 4,
                                  options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-12})
    if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
      best = res
  if best is None:
    raise ValueError("no start of the fit reached a finite objective; pass inits=")
  L0, A, alpha, C = (float(v) for v in best.x)
  return AnnealingLaw(L0, A, alpha, C, decay, warmup_steps)


def cooldown_drop(losses, lrs, steps=None, window: int = 1, end_window: int = 1) -> float:
  """The loss drop an annealing phase brings: the mean loss over the `window`
  steps up to the first decrease of the learning rate (from its peak), minus
  the mean loss over the last `end_window` steps.

  Args:
    losses: losses at every step, or at ``steps`` (0-based indices into ``lrs``).
    lrs: the learning rate of every step.
    steps: as in `fit`.
    window, end_window: lengths in steps (>= 1); with measured (noisy) losses a
      window longer than one evaluation interval averages the noise out.
  """
  eta = _check_lrs(lrs)
  loss = np.asarray(losses, np.float64).ravel()
  idx = np.arange(eta.size) if steps is None else _check_steps(steps, eta.size, "steps")
  if idx.size != loss.size:
    raise ValueError(f"losses has {loss.size} entries but steps has {idx.size}.")
  for name, w in (("window", window), ("end_window", end_window)):
    if not isinstance(w, (int, np.integer)) or w < 1:
      raise ValueError(f"{name}={w!r} is not allowed: pick an int >= 1 (steps).")
  below = np.flatnonzero(eta < eta.max() * (1 - 1e-6))
  if below.size == 0:
    raise ValueError("lrs never decreases from its peak: there is no annealing phase.")
  start = below[0] - 1  # the last step at the peak
  pre = (idx > start - window) & (idx <= start)
  post = idx > idx[-1] - end_window
  if not pre.any():
    raise ValueError(f"no loss is measured in the {window} steps up to step {start}, where the "
                     "annealing starts; pass a longer window.")
  return float(loss[pre].mean() - loss[post].mean())
