"""The LR-annealing law (Tissue et al. 2024) against a numpy loop of its equations and a known law."""
import numpy as np
import pytest

from jaxlab.optim import annealing_law as al


def _areas_loop(lrs, decay, warmup):
  """Eq. 1 and 5, one step at a time; warmup steps counted at the peak (paper section 3.4)."""
  eta = [max(lrs) if i < warmup else float(v) for i, v in enumerate(lrs)]
  s1, s2, m = [], [], 0.0
  for i, e in enumerate(eta):
    m = decay * m + (eta[i - 1] - e if i else 0.0)
    s1.append((s1[-1] if s1 else 0.0) + e)
    s2.append((s2[-1] if s2 else 0.0) + m)
  return np.array(s1), np.array(s2)


def _schedules(n=3000, peak=1e-2):
  t = np.arange(n)
  return {"constant": np.full(n, peak),
          "cosine": 0.5 * peak * (1 + np.cos(np.pi * t / n)),
          "wsd": np.where(t < 0.8 * n, peak, peak * (1 - np.sqrt(np.clip((t - 0.8 * n) / (0.2 * n), 0, 1)))),
          "multistep": peak * np.where(t < n // 2, 1.0, np.where(t < 3 * n // 4, 0.3, 0.1))}


@pytest.mark.parametrize("decay, warmup", [(0.999, 0), (0.9, 0), (0.99, 50)])
def test_areas_match_a_loop_of_the_equations(decay, warmup):
  rng = np.random.default_rng(0)
  lrs = np.concatenate([np.linspace(0, 1, 50), rng.uniform(0, 1, 250)])
  s1, s2 = al.areas(lrs, decay, warmup_steps=warmup)
  r1, r2 = _areas_loop(lrs, decay, warmup)
  np.testing.assert_allclose(s1, r1, rtol=1e-12)
  np.testing.assert_allclose(s2, r2, rtol=1e-9, atol=1e-12)


def test_warmup_counts_at_the_peak():
  # With a linear warmup counted as is, the rising LR makes m negative (a negative
  # annealing area); counted at the peak, S2 stays 0 until the LR falls.
  lrs = np.concatenate([np.linspace(0.1, 1.0, 10), np.ones(10)])
  _, s2_raw = al.areas(lrs, 0.9)
  _, s2 = al.areas(lrs, 0.9, warmup_steps=10)
  assert s2_raw[-1] < -0.5
  np.testing.assert_array_equal(s2, 0.0)


def test_fit_on_evaluation_points_recovers_a_law_whose_floor_is_above_the_smallest_loss():
  # C * S2 pulls the end of the cosine run 0.1 below L0: a fit bounded by
  # L0 <= min(loss) (the old bound) cannot recover this law.
  sch = _schedules()
  true = al.AnnealingLaw(L0=2.0, A=0.5, alpha=0.5, C=0.2 / al.areas(sch["cosine"], 0.999)[1][-1])
  steps = np.arange(299, 3000, 10)  # every 10 steps after a 10% transient
  rng = np.random.default_rng(0)
  losses = [true.predict(sch[s], steps) * (1 + 1e-4 * rng.standard_normal(steps.size))
            for s in ("constant", "cosine")]
  assert losses[1].min() < true.L0 - 0.05
  law = al.fit([sch["constant"], sch["cosine"]], losses, steps=[steps, steps])
  for name in ("L0", "A", "alpha", "C"):
    assert abs(getattr(law, name) / getattr(true, name) - 1) <= 0.02, (name, law)
  for s in ("wsd", "multistep"):  # held out
    np.testing.assert_allclose(law.predict(sch[s], steps), true.predict(sch[s], steps), rtol=1e-3)


def test_cooldown_drop_closed_form():
  lrs = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.2, 0.0, 0.0])
  loss = np.array([5.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.1, 0.9])
  assert al.cooldown_drop(loss, lrs) == pytest.approx(2.0 - 0.9)  # step 3 is the last at the peak
  assert al.cooldown_drop(loss, lrs, window=2, end_window=2) == pytest.approx(2.5 - 1.0)
  steps = np.array([1, 3, 5, 7])  # losses measured at these steps only
  assert al.cooldown_drop(loss[steps], lrs, steps) == pytest.approx(2.0 - 0.9)


@pytest.mark.parametrize("call, match", [
    (lambda: al.fit(np.ones(10), -np.ones(10)), "losses"),
    (lambda: al.fit(np.ones(10), np.ones(9)), "steps"),
    (lambda: al.fit(np.ones(10), np.ones(3), steps=np.array([1, 2, 10])), r"steps must be .* \[0, 10\)"),
    (lambda: al.fit(np.ones(10), np.ones(3), steps=np.array([1, 2])), "steps has 2 entries"),
    (lambda: al.fit(np.ones(10), np.ones(10), huber_delta=0.0), "huber_delta=0.0"),
    (lambda: al.areas(np.ones(10), decay=1.0), r"decay=1.0 .* \[0, 1\)"),
    (lambda: al.areas(np.ones(10), warmup_steps=10), r"warmup_steps=10 .* \[0, 10\)"),
    (lambda: al.areas([1.0, np.nan]), "finite"),
    (lambda: al.cooldown_drop(np.ones(5), np.ones(5)), "never decreases"),
    (lambda: al.cooldown_drop(np.ones(5), [1, 1, 0.5, 0.5, 0.5], window=0), "window=0"),
])
def test_bad_input_raises_naming_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
