"""AutoLRS: the exponential forecast, the GP search, the stage plan, and the train-loop hook."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from jaxlab import data, optim, train
from jaxlab.optim import autolrs


def test_fit_exponential_recovers_a_known_exponential():
  t = np.arange(50.0)
  fit = autolrs.fit_exponential(2.0 * np.exp(-0.05 * t) + 0.5)
  # Noiseless: the 1-D search on b is refined to xatol 1e-10 in log(-b).
  assert fit.a == pytest.approx(2.0, rel=1e-6)
  assert fit.b == pytest.approx(-0.05, rel=1e-6)
  assert fit.c == pytest.approx(0.5, rel=1e-6)
  # Abscissae that do not start at 0 (a shifted series) give the same curve.
  shifted = autolrs.fit_exponential(2.0 * np.exp(-0.05 * t) + 0.5, t + 100.0)
  assert shifted(150.0) == pytest.approx(fit(50.0), rel=1e-6)
  assert autolrs.forecast(2.0 * np.exp(-0.05 * t) + 0.5, 80.0) == pytest.approx(
      2.0 * math.exp(-4.0) + 0.5, rel=1e-6)


def test_fit_exponential_matches_curve_fit_on_noisy_losses():
  t = np.arange(40.0)
  y = 1.5 * np.exp(-0.08 * t) + 0.3 + 0.01 * np.random.default_rng(0).standard_normal(40)
  fit = autolrs.fit_exponential(y)
  # Independent reference: scipy's nonlinear least squares from the true values.
  (a, b, c), _ = scipy.optimize.curve_fit(lambda t, a, b, c: a * np.exp(b * t) + c, t, y,
                                          p0=(1.5, -0.08, 0.3))
  ref_rss = float(np.sum((a * np.exp(b * t) + c - y) ** 2))
  assert fit.rss <= ref_rss * (1 + 1e-6)  # the same least-squares optimum ...
  assert fit(400.0) == pytest.approx(a * math.exp(b * 400.0) + c, abs=1e-4)  # ... and forecast
  # The stage-end forecast is within 3 noise σ of the truth (0.3).
  assert abs(fit(400.0) - 0.3) < 0.03


def test_clean_series_drops_an_early_spike_and_keeps_the_forecast():
  t = np.arange(40.0)
  y = 2.0 * np.exp(-0.05 * t) + 0.5
  y[1] = 20.0  # a large rate's first-step spike
  keep = autolrs.clean_series(y)
  assert not keep[1] and keep[20:].all()  # only the first half is ever dropped
  fit = autolrs.fit_exponential(y[keep], t[keep], c_min=0.0)
  assert fit(400.0) == pytest.approx(0.5, abs=1e-6)  # the clean points are exact
  # Fitted raw, the spike reads as a fast decay: the forecast is off by > 0.4.
  assert abs(autolrs.fit_exponential(y, c_min=0.0)(400.0) - 0.5) > 0.4


# Measured look-aheads (SGD-momentum, MLP on MNIST-1D, 20 steps from the initial state): a rate
# near the top of the range (2.77) spikes and comes back near its start; 0.1 decays smoothly.
SPIKY = [2.82, 20.73, 7.96, 12.18, 3.66, 2.93, 45.48, 3.39, 3.11, 3.12, 3.25, 2.86, 2.86, 3.12,
         2.75, 2.92, 2.84, 2.61, 2.46, 2.63]
SMOOTH = [2.82, 2.56, 2.39, 2.31, 2.17, 2.14, 2.04, 1.98, 2.0, 1.89, 1.83, 1.84, 1.77, 1.8, 1.75,
          1.87, 1.86, 1.91, 1.68, 1.76]


def test_clean_series_drops_only_outliers_not_the_whole_first_half():
  # A smooth 20-point series: before the fix every point of the first half was dropped
  # (at least one per round for 10 rounds, always from the first half).
  keep = autolrs.clean_series(SMOOTH)
  assert keep[10:].all() and keep[:10].sum() >= 8, np.flatnonzero(~keep)


@pytest.mark.parametrize("rise_rule", [True, False])
def test_a_lookahead_that_rises_above_its_start_is_not_extrapolated(rise_rule, monkeypatch):
  h = hook(loss_floor=0.0, rise_rule=rise_rule)
  stage = autolrs.Stage(0, 0, 200, 20)  # forecast 200 steps from 20
  series = {1.0: np.asarray(SPIKY), 0.1: np.asarray(SMOOTH), 0.5: np.full(20, np.nan)}
  monkeypatch.setattr(h, "lookahead", lambda state, stage, lr: series[lr])
  spiky, _, rose = h.stage_forecast(None, stage, 1.0)
  smooth, _, smooth_rose = h.stage_forecast(None, stage, 0.1)
  assert not smooth_rose and 1.6 < smooth < 1.85  # near its current level, 1.81
  assert h.stage_forecast(None, stage, 0.5)[0] == math.inf
  if rise_rule:  # the current loss: the mean of the last 10 losses, 2.83
    assert rose and spiky == pytest.approx(np.mean(SPIKY[-10:]), rel=1e-12)
    assert spiky > smooth + 0.9
  else:  # extrapolated, the spiky series forecasts a loss near 0 and wins the stage
    assert not rose and spiky < 0.1 < smooth


def test_loss_floor_bounds_the_asymptote():
  y = 2.0 - 0.05 * np.arange(10.0)  # a straight line: unconstrained, c -> -inf
  assert autolrs.fit_exponential(y)(100.0) < 0.0
  fit = autolrs.fit_exponential(y, c_min=0.0)
  assert fit.c >= 0.0 and fit(100.0) >= 0.0


def test_gp_search_finds_the_minimum_of_a_quadratic_in_log_lr():
  x0 = 0.37  # the minimizer, in normalized log-LR
  f = lambda x: (x - x0) ** 2
  res = autolrs.bo_minimize(f, 10, seed=0, kind="lcb", kappa=2.0)
  assert abs(res.x_best - x0) < 0.01, res.xs
  res = autolrs.bo_minimize(f, 10, seed=0, kind="ei")
  assert abs(res.x_best - x0) < 0.03, res.xs
  # Six mostly exploring points (κ = 1e3), then the GP mean's minimizer: a
  # space-filling design alone is ≥ 0.03 off (grid spacing ~0.2).
  res = autolrs.bo_minimize(f, 6, seed=0, kind="lcb", kappa=1e3, select="posterior")
  assert abs(res.x_best - x0) < 0.01, res.xs
  assert min(abs(x - x0) for x in res.xs) > 0.03
  # A tried point is never proposed again (the authors' code refuses repeats).
  assert autolrs.propose([0.0, 0.5, 1.0], [1.0, 0.0, 1.0], kappa=0.0) != 0.5


def test_bo_scores_a_diverged_point_as_the_worst_seen():
  values = iter([1.0, math.inf, 3.0])
  res = autolrs.bo_minimize(lambda x: next(values), 3, seed=0)
  assert res.values[1] == math.inf and res.scores == [1.0, 3.0, 3.0]
  assert res.x_best == res.xs[0]


def test_stage_plan_doubles_tau_and_budget_counts_lookahead():
  plan = autolrs.stages(1000, 50, 400, 0.1)
  assert [(s.start, s.length, s.lookahead) for s in plan] == [
      (0, 50, 5), (50, 100, 10), (150, 200, 20), (350, 400, 40), (750, 250, 25)]
  kw = dict(tau=50, tau_max=400, num_lrs=10, lookahead_fraction=0.1)
  assert autolrs.lookahead_steps(1000, **kw) == 10 * (5 + 10 + 20 + 40 + 25)
  for budget in (100, 777, 3000):
    n = autolrs.train_steps_for_budget(budget, **kw)
    assert n + autolrs.lookahead_steps(n, **kw) <= budget
    assert n + 1 + autolrs.lookahead_steps(n + 1, **kw) > budget


# A small linear regression trained with SGD through the loop.
X = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
BATCHES = data.Batches({"x": X, "y": Y}, 16, seed=0)
PARAMS = {"w": np.zeros(4, np.float32)}
TX = optax.inject_hyperparams(optax.sgd)(learning_rate=0.01)
NUM_STEPS = 24


def loss_fn(params, batch, key):
  del key
  return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}


def hook(seed=0, batch_fn=BATCHES, **kw):
  kw = dict(dict(num_steps=NUM_STEPS, min_lr=1e-3, max_lr=1.0, tau=4, tau_max=8, num_lrs=3,
                 lookahead_fraction=0.5, seed=seed), **kw)
  return optim.autolrs_hook(loss_fn, TX, batch_fn, **kw)


def run(h, workdir=None, batch_fn=BATCHES, **kw):
  return train.train(loss_fn, PARAMS, TX, batch_fn, num_steps=NUM_STEPS, key=jax.random.key(0),
                     log_every=4, hooks=(h,), progress=False, workdir=workdir, **kw)


def test_hook_sets_each_stage_rate_and_is_deterministic():
  a, b = run(hook()), run(hook())
  assert _same_rows(a.history, b.history)
  np.testing.assert_array_equal(np.asarray(a.state.params["w"]), np.asarray(b.state.params["w"]))
  rows = {r["step"]: r for r in a.history if "autolrs_learning_rate" in r}
  assert sorted(rows) == [0, 4, 12, 20]  # stages of 4, 8, 8 and the cut last one
  assert [rows[s]["autolrs_lookahead_steps"] for s in sorted(rows)] == [6, 18, 30, 36]
  for r in rows.values():
    tried = [r[f"autolrs_tried_lr_{j}"] for j in range(3)]
    scores = [r[f"autolrs_tried_forecast_{j}"] for j in range(3)]
    assert r["autolrs_learning_rate"] == tried[int(np.argmin(scores))]
    assert all(1e-3 <= lr <= 1.0 for lr in tried)
  # The last stage's rate is the one in the final optimizer state.
  assert float(a.state.opt_state.hyperparams["learning_rate"]) == pytest.approx(
      rows[20]["autolrs_learning_rate"], rel=1e-6)
  # It trained: the loss fell far below the start (the best constant rate here is ~0.3).
  assert a.history[-1]["loss"] < 1e-2 * a.history[1]["loss"]
  other = run(hook(seed=1))
  assert other.history[0]["autolrs_tried_lr_0"] != a.history[0]["autolrs_tried_lr_0"]


def _same_rows(a, b):
  strip = lambda rows: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]
  return strip(a) == strip(b)


class Crash(Exception):
  pass


def test_resume_after_a_crash_is_bit_identical(tmp_path):
  ref = run(hook(), workdir=str(tmp_path / "ref"), checkpoint_every=4)

  def crashing(step):
    if step == 14:  # inside stage 2 (steps 12-20), after checkpoint 12
      raise Crash()
    return BATCHES(step)

  wd = str(tmp_path / "run")
  with pytest.raises(Crash):
    run(hook(batch_fn=crashing), workdir=wd, batch_fn=crashing, checkpoint_every=4)
  resumed = run(hook(), workdir=wd, checkpoint_every=4)
  assert _same_rows(resumed.history, ref.history)
  for x, y in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(ref.state.params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(resumed.state.opt_state.hyperparams["learning_rate"]),
                                np.asarray(ref.state.opt_state.hyperparams["learning_rate"]))
  rows = train.io.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [r["step"] for r in ref.history]


def test_at_start_hook_runs_before_the_first_update_only_on_a_fresh_run(tmp_path):
  calls = []

  class Probe:
    every_steps = 10
    at_start = True

    def __call__(self, step, state):
      calls.append((step, int(state.step)))
      return {"probe": float(step)}

  kw = dict(num_steps=8, key=jax.random.key(0), log_every=4, progress=False,
            workdir=str(tmp_path), checkpoint_every=4)
  out = train.train(loss_fn, PARAMS, TX, BATCHES, hooks=(Probe(),), **kw)
  assert calls == [(0, 0)] and out.history[0] == {"step": 0, "probe": 0.0}
  kw["num_steps"] = 12
  out = train.train(loss_fn, PARAMS, TX, BATCHES, hooks=(Probe(),), **kw)
  assert calls == [(0, 0), (10, 10)]  # resumed at 8: no second step-0 call
  assert [r["step"] for r in out.history] == [0, 4, 8, 10, 12]


def test_hook_without_injected_learning_rate_is_a_value_error():
  h = optim.autolrs_hook(loss_fn, optax.sgd(0.1), BATCHES, num_steps=8, min_lr=1e-3, max_lr=1.0,
                         tau=4, tau_max=4, num_lrs=2)
  with pytest.raises(ValueError, match="inject_hyperparams"):
    train.train(loss_fn, PARAMS, optax.sgd(0.1), BATCHES, num_steps=8, key=jax.random.key(0),
                hooks=(h,), progress=False)


@pytest.mark.parametrize("kw, match", [
    (dict(num_steps=0), "num_steps=0"),
    (dict(tau=0), "tau=0"),
    (dict(tau=4, tau_max=12), "tau_max=12"),
    (dict(tau=4, tau_max=2), "tau_max=2"),
    (dict(num_lrs=1), "num_lrs=1"),
    (dict(min_lr=0.0), "min_lr=0.0"),
    (dict(max_lr=float("nan")), "max_lr=nan"),
    (dict(min_lr=0.1, max_lr=0.01), "min_lr < max_lr"),
    (dict(lookahead_fraction=1.5), "lookahead_fraction=1.5"),
    (dict(acquisition="ucb"), "acquisition='ucb'"),
    (dict(select="best"), "select='best'"),
    (dict(kappa=-1.0), "kappa=-1.0"),
    (dict(seed=-1), "seed=-1"),
    (dict(batch_fn=None), "batch_fn=None"),
    (dict(loss_floor=float("inf")), "loss_floor=inf"),
    (dict(rise_rule="yes"), "rise_rule='yes'"),
])
def test_bad_arguments_are_value_errors(kw, match):
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    hook(**kw)


@pytest.mark.parametrize("losses, match", [
    ([1.0, 0.5], "at least 3"), ([1.0, np.nan, 0.2], "nan"), (np.ones((3, 2)), "1-D")])
def test_bad_loss_series_is_a_value_error(losses, match):
  with pytest.raises(ValueError, match=match):
    autolrs.fit_exponential(losses)
