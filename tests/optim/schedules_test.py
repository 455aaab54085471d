"""Schedules against their closed forms at sampled steps; the annealing law's fit."""
import math

import jax
import numpy as np
import optax
import pytest

from jaxlab.optim import annealing_law as al
from jaxlab.optim import schedules as S

STEPS = [0, 1, 3, 7, 10, 11, 25, 49, 50, 63, 77, 99, 100, 150, 1000]
RTOL = 1e-6  # float32 evaluation of the same closed form


def check(schedule, closed_form, steps=STEPS):
  jitted = jax.jit(schedule)
  for t in steps:
    expect = closed_form(t)
    for got in (schedule(t), jitted(t)):
      assert abs(float(got) - expect) <= RTOL * max(abs(expect), 1.0), (t, float(got), expect)


def warm(t, w, peak, init=0.0):
  return init + (peak - init) * t / w


def test_linear_decay():
  check(S.linear_decay(0.3, 80, end_value=0.01, warmup_steps=10, init_value=0.02),
        lambda t: warm(t, 10, 0.3, 0.02) if t < 10 else 0.01 + 0.29 * max(0.0, 1 - (t - 10) / 80))


def test_rex():
  def f(t):
    if t < 10:
      return warm(t, 10, 1.0)
    z = min((t - 10) / 90, 1.0)
    return 0.1 + 0.9 * (1 - z) / (0.5 + 0.5 * (1 - z))
  check(S.rex(1.0, 90, end_value=0.1, warmup_steps=10), f)


@pytest.mark.parametrize("shape", S.WSD_SHAPES)
def test_wsd(shape):
  prof = {"linear": lambda z: 1 - z, "cosine": lambda z: 0.5 * (1 + math.cos(math.pi * z)),
          "1-sqrt": lambda z: 1 - math.sqrt(z)}[shape]

  def f(t):
    if t < 10:
      return warm(t, 10, 2.0)
    z = min(max((t - 10 - 40) / 50, 0.0), 1.0)
    return 2.0 * prof(z)
  check(S.wsd(2.0, stable_steps=40, decay_steps=50, shape=shape, warmup_steps=10), f)


@pytest.mark.parametrize("decay_shape", ["exponential", "linear"])
def test_power(decay_shape):
  a, b, lmax, u = 4.0, -0.51, 0.02, 5e4
  pw = lambda t: min(lmax, a * (max(t, 1e-300) * u) ** b)
  g = {"exponential": lambda x: (math.exp(1 - x) - 1) / (math.e - 1), "linear": lambda x: 1 - x}[decay_shape]

  def f(t):
    if t < 10:
      return pw(10) * t / 10
    if t >= 80:
      return pw(80) * g(min((t - 80) / 20, 1.0))
    return pw(t)
  check(S.power(a, b, lmax, warmup_steps=10, decay_steps=20, total_steps=100, units_per_step=u,
                decay_shape=decay_shape), f)


def test_power_cap_is_reached_early():
  s = S.power(4.0, -0.51, 0.02, units_per_step=1.0)
  assert float(s(5)) == pytest.approx(0.02)  # a n^b > max_value for small n


def test_infinite():
  pk, c, end = 1.0, 0.3, 0.003

  def f(t):
    if t < 10:
      return warm(t, 10, pk)
    if t >= 60:
      return c * (end / c) ** min((t - 60) / 30, 1.0)
    return c + 0.5 * (pk - c) * (1 + math.cos(math.pi * min((t - 10) / 20, 1.0)))
  check(S.infinite(pk, c, warmup_steps=10, cooldown_steps=20, anneal_start=60, anneal_steps=30,
                   end_value=end), f)


def _refined_recipe(g, smoothing, norm):
  """A numpy loop of Defazio et al.'s recipe (their README and find_closed_form_schedule).

  Median filter of width 2 floor(smoothing N / 2) + 1 over the norms extended by
  repeating g_0 before the start (scipy's mode='nearest') and by a mirror image
  without the edge sample after the end (numpy.pad mode='reflect'); then
  w = g^-2 (l2) or g^-1 (l1), eta_t = w_t sum_{p > t} w_p, divided by its max.
  """
  n = len(g)
  width = 2 * int(smoothing * n / 2) + 1
  h = width // 2
  assert h < n  # one mirror image is enough for these tests

  def ext(t):
    return g[0] if t < 0 else g[2 * (n - 1) - t] if t >= n else g[t]
  smooth = np.array([np.median([ext(s) for s in range(t - h, t + h + 1)]) for t in range(n)])
  w = smooth ** (-2.0 if norm == "l2" else -1.0)
  eta = np.array([w[t] * w[t + 1:].sum() for t in range(n)])
  return eta / eta.max()


def test_refined_follows_the_authors_padding_with_norms_rising_at_the_end():
  # Norms that start small (first step) and rise at the end of the prior run: the
  # start padding decides the early schedule (the old reflect-both-ends filter was
  # up to 0.73 x peak away from the recipe at t = 1..3), the end padding the tail.
  n = 50
  t = np.arange(n)
  norms = 1.0 + 3.0 * (t / n) ** 4
  norms[:2] = 0.3, 0.65
  for smoothing in (0.1, 0.2):
    for norm in ("l2", "l1"):
      np.testing.assert_allclose(S.refined_values(norms, 1.0, norm=norm, smoothing=smoothing),
                                 _refined_recipe(norms, smoothing, norm), rtol=1e-12, atol=1e-15)


def test_refined_constant_norms_is_linear_decay_and_matches_formula():
  n = 51
  check(S.refined(np.full(n, 2.0), peak_value=0.5, smoothing=0.0),
        lambda t: 0.5 * max(n - 1 - t, 0) / (n - 1))
  rng = np.random.default_rng(0)
  norms = np.exp(rng.standard_normal(101))
  for norm in ("l2", "l1"):
    ref = 0.1 * _refined_recipe(norms, 0.1, norm)
    np.testing.assert_allclose(S.refined_values(norms, 0.1, norm=norm), ref, rtol=1e-12)
    check(S.refined(norms, 0.1, norm=norm, warmup_steps=5),
          lambda t, ref=ref: warm(t, 5, ref[0]) if t < 5 else ref[min(t - 5, 100)])


def test_with_warmup_composes_with_optax():
  s = S.with_warmup(optax.cosine_decay_schedule(1.0, 100), 20, init_value=0.1)
  check(s, lambda t: warm(t, 20, 1.0, 0.1) if t < 20 else 0.5 * (1 + math.cos(math.pi * min(t - 20, 100) / 100)))


@pytest.mark.parametrize("call", [
    lambda: S.wsd(1.0, 10, 10, shape="exp"),
    lambda: S.linear_decay(1.0, 0),
    lambda: S.rex(-1.0, 10),
    lambda: S.power(4.0, -0.5, 0.02, decay_steps=10),
    lambda: S.infinite(1.0, 0.5, 10, 10, anneal_start=5, anneal_steps=5, end_value=0.1),
    lambda: S.refined([1.0, -1.0, 2.0], 1.0),
])
def test_bad_arguments_raise(call):
  with pytest.raises(ValueError):
    call()


def _schedules(t_total=3000, peak=1e-2):
  t = np.arange(t_total)
  const = np.full(t_total, peak)
  cos = 0.5 * peak * (1 + np.cos(np.pi * t / t_total))
  wsd = np.where(t < 2400, peak, peak * (1 - (t - 2400) / 600))
  return const, cos, wsd


def test_annealing_law_areas_closed_form():
  lrs = np.array([1.0, 1.0, 0.5, 0.5, 0.0])
  s1, s2 = al.areas(lrs, decay=0.5)
  np.testing.assert_allclose(s1, [1, 2, 2.5, 3, 3])
  m = [0, 0, 0.5, 0.25, 0.625]  # m_i = 0.5 m_{i-1} + (eta_{i-1} - eta_i)
  np.testing.assert_allclose(s2, np.cumsum(m))


def test_annealing_law_fit_recovers_parameters_within_2_percent():
  const, cos, wsd = _schedules()
  true = al.AnnealingLaw(L0=2.0, A=1.5, alpha=0.45, C=0.05)
  rng = np.random.default_rng(0)
  noisy = [true.predict(x) * (1 + 2e-4 * rng.standard_normal(x.size)) for x in (const, cos)]
  law = al.fit([const, cos], noisy)
  for name in ("L0", "A", "alpha", "C"):
    assert abs(getattr(law, name) / getattr(true, name) - 1) <= 0.02, (name, law)
  # ... and predicts the held-out WSD curve.
  rel = np.abs(law.predict(wsd) / true.predict(wsd) - 1)
  assert rel.max() <= 2e-3


def test_annealing_law_bad_input():
  with pytest.raises(ValueError, match="losses"):
    al.fit(np.ones(10), -np.ones(10))
  with pytest.raises(ValueError, match="steps"):
    al.fit(np.ones(10), np.ones(9))
