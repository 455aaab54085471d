"""Learning-rate schedules as optax schedules (step -> learning rate), warmup composable.

Every schedule here takes ``warmup_steps`` and ``init_value``: a linear warmup
from ``init_value`` to the schedule's first value is prepended with
`with_warmup`, which also composes with any other optax schedule. Step counts
after the warmup restart at 0, so "decay_steps" etc. do not include warmup.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage

from jaxlab.optim._checks import check_finite, check_in_range


def _check_nonneg_int(value, name):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name}={value!r} is not allowed: pass an integer >= 0.")


def _check_pos_int(value, name):
  _check_nonneg_int(value, name)
  if value == 0:
    raise ValueError(f"{name}={value!r} is not allowed: pass an integer > 0.")


def _check_value(value, name):
  """A learning-rate value: finite and >= 0 (nan and inf are rejected)."""
  check_in_range(value, name, 0.0, float("inf"))


def with_warmup(schedule: optax.Schedule, warmup_steps: int, init_value: float = 0.0) -> optax.Schedule:
  r"""Prepends a linear warmup to any schedule.

  Math: lr(t) = init + (schedule(0) - init) t / W for t < W, else schedule(t - W).

  Args:
    schedule: any optax schedule.
    warmup_steps: W >= 0 (0 returns ``schedule`` unchanged).
    init_value: learning rate at step 0.

  Returns:
    An optax schedule.

  Example:
    >>> s = with_warmup(optax.constant_schedule(1.0), 10)
    >>> float(s(5))
    0.5
  """
  _check_nonneg_int(warmup_steps, "warmup_steps")
  _check_value(init_value, "init_value")
  if warmup_steps == 0:
    return schedule
  peak = schedule(0)

  def fn(step):
    t = jnp.asarray(step, jnp.float32)
    warm = init_value + (peak - init_value) * t / warmup_steps
    return jnp.where(t < warmup_steps, warm, schedule(jnp.maximum(step - warmup_steps, 0)))

  return fn


def _frac(step, steps):
  return jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)


def linear_decay(peak_value: float, decay_steps: int, end_value: float = 0.0,
                 warmup_steps: int = 0, init_value: float = 0.0) -> optax.Schedule:
  r"""Linear decay: lr = end + (peak - end)(1 - t/T), constant ``end_value`` after T.

  Example:
    >>> float(linear_decay(1.0, 10)(5))
    0.5
  """
  _check_value(peak_value, "peak_value")
  _check_value(end_value, "end_value")
  _check_pos_int(decay_steps, "decay_steps")
  sched = lambda step: end_value + (peak_value - end_value) * (1.0 - _frac(step, decay_steps))
  return with_warmup(sched, warmup_steps, init_value)


def rex(peak_value: float, decay_steps: int, end_value: float = 0.0,
        warmup_steps: int = 0, init_value: float = 0.0) -> optax.Schedule:
  r"""REX (Chen et al. 2022): the reflected-exponential profile.

  Math (their eq. for the REX profile): with z = t/T,
    lr = end + (peak - end) (1 - z) / (1/2 + (1 - z)/2) = end + (peak - end)(1 - z)/(1 - z/2).

  Example:
    >>> round(float(rex(1.0, 10)(5)), 6)
    0.666667

  References:
    Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an
    Improved Schedule", MLSys 2022, https://arxiv.org/abs/2107.04197
  """
  _check_value(peak_value, "peak_value")
  _check_value(end_value, "end_value")
  _check_pos_int(decay_steps, "decay_steps")

  def sched(step):
    z = _frac(step, decay_steps)
    return end_value + (peak_value - end_value) * (1.0 - z) / (1.0 - 0.5 * z)

  return with_warmup(sched, warmup_steps, init_value)


WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def wsd(peak_value: float, stable_steps: int, decay_steps: int, shape: str = "1-sqrt",
        end_value: float = 0.0, warmup_steps: int = 0, init_value: float = 0.0) -> optax.Schedule:
  r"""Warmup-stable-decay: warmup, ``peak_value`` for ``stable_steps``, then a decay.

  Math: with z = (t - stable_steps) / decay_steps in [0, 1],
    linear: 1 - z;  cosine: (1 + cos(pi z)) / 2;  1-sqrt: 1 - sqrt(z);
  lr = end + (peak - end) * shape(z).

  Args:
    peak_value: learning rate of the stable phase.
    stable_steps: steps at the peak after warmup (>= 0).
    decay_steps: length of the decay (> 0), usually 10-20% of the run.
    shape: one of ``WSD_SHAPES``.
    end_value, warmup_steps, init_value: as elsewhere.

  Returns:
    An optax schedule.

  Example:
    >>> float(wsd(1.0, 10, 4, "linear")(12))
    0.5

  References:
    Hu et al., "MiniCPM", 2024, https://arxiv.org/abs/2404.06395; Hägele et al.,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations", 2024, https://arxiv.org/abs/2405.18392 (1-sqrt cooldown).
  """
  if shape not in WSD_SHAPES:
    raise ValueError(f"shape={shape!r} is not allowed: pick one of {WSD_SHAPES}.")
  _check_value(peak_value, "peak_value")
  _check_value(end_value, "end_value")
  _check_nonneg_int(stable_steps, "stable_steps")
  _check_pos_int(decay_steps, "decay_steps")
  profile = {
      "linear": lambda z: 1.0 - z,
      "cosine": lambda z: 0.5 * (1.0 + jnp.cos(jnp.pi * z)),
      "1-sqrt": lambda z: 1.0 - jnp.sqrt(z),
  }[shape]

  def sched(step):
    z = _frac(jnp.asarray(step, jnp.float32) - stable_steps, decay_steps)
    return end_value + (peak_value - end_value) * profile(z)

  return with_warmup(sched, warmup_steps, init_value)


def power(a: float, b: float, max_value: float, warmup_steps: int = 0, decay_steps: int = 0,
          total_steps: int | None = None, units_per_step: float = 1.0,
          decay_shape: str = "exponential") -> optax.Schedule:
  r"""Power scheduler (Shen et al. 2024): lr = min(max_value, a n^b), n = tokens (examples) seen.

  Math (their eq. 6 and reference code): n = units_per_step * step,
    f(n) = min(max_value, a n^b);
    warmup: lr = f(n_W) t / W for t < W (linear, to the power law's value);
    stable: lr = f(n);
    final decay over the last D = decay_steps of ``total_steps`` T:
      lr = f(n_{T-D}) g(x), x = (t - (T - D)) / D,
      g = (e^{1-x} - 1)/(e - 1) ("exponential", to 0; the paper's choice) or 1 - x ("linear").
  The decay needs ``total_steps``; without it (decay_steps = 0) the schedule
  has no end, which is the point of the method. The warmup here is the
  method's own (it ramps to f(n_W), not to max_value).

  Args:
    a, b: power-law coefficients (paper: b ~ -0.51, a ~ 4 with lr_max 0.02).
    max_value: cap on the learning rate.
    warmup_steps, decay_steps: phase lengths in steps.
    total_steps: T, needed when decay_steps > 0.
    units_per_step: tokens (or examples) per step, so n = units_per_step * step.
    decay_shape: "exponential" or "linear".

  Example:
    >>> s = power(a=4.0, b=-0.51, max_value=0.02, units_per_step=1e6)
    >>> round(float(s(1000)), 6) == round(min(0.02, 4.0 * (1e9) ** -0.51), 6)
    True

  References:
    Shen et al., "Power Scheduler: A Batch Size and Token Number Agnostic
    Learning Rate Scheduler", 2024, https://arxiv.org/abs/2408.13359
  """
  _check_value(max_value, "max_value")
  _check_value(a, "a")
  check_finite(b, "b")
  _check_nonneg_int(warmup_steps, "warmup_steps")
  _check_nonneg_int(decay_steps, "decay_steps")
  if decay_shape not in ("exponential", "linear"):
    raise ValueError(f"decay_shape={decay_shape!r} is not allowed: 'exponential' or 'linear'.")
  if not units_per_step > 0 or not math.isfinite(units_per_step):
    raise ValueError(f"units_per_step={units_per_step!r} is not allowed: pass a finite value > 0.")
  if decay_steps > 0:
    if total_steps is None or total_steps < warmup_steps + decay_steps:
      raise ValueError(
          f"total_steps={total_steps!r} is not allowed with decay_steps={decay_steps}: pass "
          f"total_steps >= warmup_steps + decay_steps = {warmup_steps + decay_steps}.")

  def f(step):
    n = jnp.maximum(jnp.asarray(step, jnp.float32) * units_per_step, 1e-30)
    return jnp.minimum(max_value, a * n**b)

  def sched(step):
    t = jnp.asarray(step, jnp.float32)
    lr = f(t)
    if warmup_steps > 0:
      lr = jnp.where(t < warmup_steps, f(warmup_steps) * t / warmup_steps, lr)
    if decay_steps > 0:
      start = total_steps - decay_steps
      x = jnp.clip((t - start) / decay_steps, 0.0, 1.0)
      g = (jnp.exp(1.0 - x) - 1.0) / (math.e - 1.0) if decay_shape == "exponential" else 1.0 - x
      lr = jnp.where(t >= start, f(start) * g, lr)
    return lr

  return sched


def infinite(peak_value: float, constant_value: float, warmup_steps: int, cooldown_steps: int,
             anneal_start: int | None = None, anneal_steps: int = 0, end_value: float = 0.0,
             init_value: float = 0.0) -> optax.Schedule:
  r"""Infinite schedule (Ibrahim et al. 2024, Section 7.2): warmup, cooldown, constant, anneal.

  Math, with T_w = warmup_steps, T_cd = cooldown_steps, T_a = anneal_start
  (absolute step), T_an = anneal_steps:
    warmup   t < T_w:               lr = init + (peak - init) t / T_w
    cooldown T_w <= t < T_w + T_cd: lr = c + (peak - c)/2 (1 + cos(pi (t - T_w)/T_cd)), c = constant_value
    constant until T_a:             lr = c
    anneal   T_a <= t:              lr = c (end/c)^{min(1, (t - T_a)/T_an)}  (exponential to end_value)
  Without ``anneal_start`` the constant phase never ends: annealing happens
  "on demand", by building the schedule again with the step where it starts.

  Example:
    >>> s = infinite(1.0, 0.5, warmup_steps=10, cooldown_steps=10)
    >>> float(s(10)), float(s(20)), float(s(10**6))
    (1.0, 0.5, 0.5)

  References:
    Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train
    Large Language Models", TMLR 2024, https://arxiv.org/abs/2403.08763
  """
  _check_value(peak_value, "peak_value")
  _check_value(constant_value, "constant_value")
  _check_value(end_value, "end_value")
  _check_value(init_value, "init_value")
  _check_nonneg_int(warmup_steps, "warmup_steps")
  _check_pos_int(cooldown_steps, "cooldown_steps")
  _check_nonneg_int(anneal_steps, "anneal_steps")
  if anneal_start is not None:
    if anneal_start < warmup_steps + cooldown_steps:
      raise ValueError(
          f"anneal_start={anneal_start!r} is not allowed: it must be >= warmup_steps + "
          f"cooldown_steps = {warmup_steps + cooldown_steps}.")
    if anneal_steps == 0 or end_value <= 0 or constant_value <= 0:
      raise ValueError(
          f"annealing needs anneal_steps > 0 (got {anneal_steps}), end_value > 0 (got {end_value}) "
          f"and constant_value > 0 (got {constant_value}): the decay is exponential.")

  def sched(step):
    t = jnp.asarray(step, jnp.float32)
    cos = constant_value + 0.5 * (peak_value - constant_value) * (
        1.0 + jnp.cos(jnp.pi * jnp.clip((t - warmup_steps) / cooldown_steps, 0.0, 1.0)))
    lr = cos
    if anneal_start is not None:
      x = jnp.clip((t - anneal_start) / anneal_steps, 0.0, 1.0)
      lr = jnp.where(t >= anneal_start, constant_value * (end_value / constant_value) ** x, lr)
    if warmup_steps > 0:
      lr = jnp.where(t < warmup_steps, init_value + (peak_value - init_value) * t / warmup_steps, lr)
    return lr

  return sched


def refined_values(grad_norms: Sequence[float], peak_value: float, norm: str = "l2",
                   smoothing: float = 0.1) -> np.ndarray:
  r"""The refined learning-rate sequence of Defazio et al. (2023) as a numpy array.

  Math (their Algorithm 1 and ``find_schedule``): ĝ = median filter of the
  previous run's gradient norms with width 2 floor(smoothing N / 2) + 1,
  padded as the authors' recipe pads it: the end mirrored without its edge
  sample (``numpy.pad`` mode ``reflect``), the start by repeating the first norm
  (``nearest``) — so a low first norm and norms rising at the end (typical of a
  linear-decay run) shape the schedule as they do in the paper's; w_t = ĝ_t^{-2} for l2 norms (SGD) or ĝ_t^{-1} for
  l1 norms (Adam-type methods); eta_t = w_t sum_{p > t} w_p (so eta_{N-1} = 0),
  scaled so max_t eta_t = peak_value. Constant norms give linear decay.
  """
  g = np.asarray(grad_norms, np.float64).ravel()
  if g.size < 2 or not np.all(np.isfinite(g)) or np.any(g <= 0):
    raise ValueError(
        f"grad_norms (length {g.size}) is not allowed: pass >= 2 finite positive norms from a prior run.")
  if norm not in ("l2", "l1"):
    raise ValueError(f"norm={norm!r} is not allowed: 'l2' (SGD) or 'l1' (Adam-type).")
  check_in_range(smoothing, "smoothing", 0.0, 1.0, hi_open=False)
  _check_value(peak_value, "peak_value")
  width = 2 * int(smoothing * g.size / 2) + 1
  if width > 1:
    pad = 2 * width  # only the end is padded by hand; the filter itself pads with `nearest`
    g_pad = np.pad(g, (0, pad), mode="reflect")
    g_hat = scipy.ndimage.median_filter(g_pad, size=width, mode="nearest")[:-pad]
  else:
    g_hat = g
  w = g_hat**-2 if norm == "l2" else g_hat**-1
  tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{p > t} w_p
  eta = w * tail
  return peak_value * eta / eta.max()


def refined(grad_norms: Sequence[float], peak_value: float, norm: str = "l2", smoothing: float = 0.1,
            warmup_steps: int = 0, init_value: float = 0.0) -> optax.Schedule:
  r"""Schedule refined from a previous run's gradient norms (Defazio et al. 2023).

  Math: see `refined_values`; the schedule is that sequence (constant at its
  last value, 0, past the end), with an optional warmup prepended.

  Args:
    grad_norms: per-step gradient norms of a previous (linear-decay) run.
    peak_value: the schedule's maximum.
    norm: "l2" (norms are l2, SGD weighting g^-2) or "l1" (l1 norms, Adam-type, g^-1).
    smoothing: median-filter width as a fraction of the run.
    warmup_steps, init_value: see `with_warmup`.

  Example:
    >>> s = refined([1.0] * 11, peak_value=1.0, smoothing=0.0)
    >>> float(s(5))
    0.5

  References:
    Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive
    Learning Rate Scheduling by Refinement", 2023, https://arxiv.org/abs/2310.07831
  """
  values = jnp.asarray(refined_values(grad_norms, peak_value, norm, smoothing), jnp.float32)
  n = values.shape[0]
  sched = lambda step: values[jnp.clip(jnp.asarray(step, jnp.int32), 0, n - 1)]
  return with_warmup(sched, warmup_steps, init_value)
