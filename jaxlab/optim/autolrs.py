"""AutoLRS (Jin et al., ICLR 2021): a learning rate per training stage, by Bayesian optimization.

Training is cut into stages of τ steps. At the start of a stage, k learning
rates are tried, each with a look-ahead run of τ' steps from the current state;
each look-ahead's loss series is fitted with the exponential model
L(t) = a·exp(b·t) + c (b < 0) and forecast at t = τ; a Gaussian process over
log η, with a lower-confidence-bound (or expected-improvement) acquisition,
proposes the next rate to try. The state is then restored and the stage trains
at the rate with the lowest forecast. τ doubles after every stage until τ_max,
and τ' = τ/10.

The paper's equations are not numbered in the sources we could read (the
abstract, the authors' README and their reference server and callback code);
docstrings name the parts: the stage objective "η* = argmin_η L(Θ_{t+τ}(η))",
the GP posterior, the LCB/EI acquisition, the exponential forecasting model.

The authors' settings (their server code): τ = 1000 doubling to τ_max = 8000,
τ' = τ/10, k = 10 rates per stage, a user-given [min_lr, max_lr] searched
log-uniformly (their README: from an LR range test or experience), one random
first rate, then a GP with LCB at κ = 1e6 (in effect: the most uncertain
rate), the stage trained at the tried rate with the lowest forecast. Their
callback counts look-ahead updates in its global step, and their README says
that by default search costs as many updates as training; we could not read
the paper's experiment section to check whether its speed-ups count them.
Our equal-budget comparisons do (`train_steps_for_budget`).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.stats

ACQUISITIONS = ("lcb", "ei")
SELECTIONS = ("observed", "posterior")


# ---------------------------------------------------------------------------
# The exponential forecasting model.


class ExpFit(NamedTuple):
  """L(t) = a·exp(b·t) + c, b ≤ 0, fitted by least squares; `rss` its residual sum of squares."""

  a: float
  b: float
  c: float
  rss: float

  def __call__(self, t):
    return self.a * np.exp(self.b * np.asarray(t, np.float64)) + self.c


def _rss_at(b: float, t: np.ndarray, y: np.ndarray,
            c_min: float | None = None) -> tuple[float, float, float]:
  e = np.exp(b * t)
  A = np.stack([e, np.ones_like(t)], axis=1)
  (a, c), *_ = np.linalg.lstsq(A, y, rcond=None)
  if c_min is not None and c < c_min:
    # The RSS is a convex quadratic in (a, c): with c below its bound, the
    # constrained optimum has c = c_min and a the 1-D least-squares slope.
    c = c_min
    a = float(e @ (y - c) / (e @ e))
  r = a * e + c - y
  return float(r @ r), float(a), float(c)


def fit_exponential(losses: Sequence[float], t: Sequence[float] | None = None,
                    c_min: float | None = None) -> ExpFit:
  """Least-squares fit of AutoLRS's exponential model L(t) = a·exp(b·t) + c, b < 0.

  For fixed b the model is linear in (a, c), solved exactly; b is found by a
  1-D search over log(−b) (variable projection, as the authors' code does with
  Nelder–Mead; here a log grid over decay rates from 1e-3/T to 1e3/T, T the
  span of `t`, refined by a bounded Brent search, so the fit is
  deterministic). The hook first cleans the series (`clean_series`).

  Args:
    losses: the loss series, at least 3 finite values.
    t: its abscissae (default 0, 1, ..., n − 1: the number of updates applied).
    c_min: optional lower bound on the asymptote c (our addition, not the
      paper's: e.g. 0 for a cross-entropy). Unconstrained, a nearly straight
      short series fits with b → 0 and c → −∞, and its forecast is a linear
      extrapolation that can fall below any attainable loss.

  Returns:
    An `ExpFit`; call it to forecast, e.g. `fit(tau)`.
  """
  y = np.asarray(losses, np.float64)
  if y.ndim != 1 or y.size < 3:
    raise ValueError(f"losses has shape {y.shape}; allowed: a 1-D series of at least 3 values")
  if not np.all(np.isfinite(y)):
    raise ValueError("losses contains nan or inf; allowed: finite values")
  t = np.arange(y.size, dtype=np.float64) if t is None else np.asarray(t, np.float64)
  if t.shape != y.shape:
    raise ValueError(f"t has shape {t.shape}; allowed: the shape of losses, {y.shape}")
  span = float(t.max() - t.min())
  if span <= 0:
    raise ValueError("t has no spread; allowed: at least two distinct abscissae")
  t0 = t - t.min()  # a shift only rescales a: better conditioned, same fit
  grid = np.linspace(math.log(1e-3), math.log(1e3), 121)
  if c_min is not None and not math.isfinite(c_min):
    raise ValueError(f"c_min={c_min!r}; allowed: None or a finite float")
  rss = [_rss_at(-math.exp(u) / span, t0, y, c_min)[0] for u in grid]
  i = int(np.argmin(rss))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
  res = scipy.optimize.minimize_scalar(lambda u: _rss_at(-math.exp(u) / span, t0, y, c_min)[0],
                                       bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-10})
  u = float(res.x) if res.fun <= rss[i] else float(grid[i])
  b = -math.exp(u) / span
  r, a, c = _rss_at(b, t0, y, c_min)
  return ExpFit(a * math.exp(-b * t.min()), b, c, r)


def clean_series(losses: Sequence[float], *, rounds: int = 10, drop_fraction: float = 0.03,
                 window: float = 0.5, degree: int = 2) -> np.ndarray:
  """Which points of a training-loss series to fit: a mask that drops early outliers.

  The authors' code cleans the look-ahead losses before the exponential fit:
  `rounds` times, a smoothing spline (scipy's `UnivariateSpline`, degree
  `degree`, its default smoothing) is fitted to the points kept so far; the
  `drop_fraction` of kept points with the largest residuals (at least one)
  are the round's outliers, and those of them in the first `window` of the
  series are dropped — a new rate's transient spike, not the whole early
  part: an outlier in the second half stops nothing but is kept. The authors
  then fit the spline's values at every step; we fit the kept raw points (a
  spline through a clean exponential bends its forecast). Series shorter than
  degree + 3 points are kept whole.

  Differences from the authors' code: at least one outlier per round (their
  `round(-n·0.03)` is 0 for n < 17 and then marks every point as an outlier,
  dropping the whole first half; they never run with n < 100); the window is
  the first half of the original indices (theirs compares the index in the
  shrinking array with the original abscissa, so it drifts later).
  """
  import scipy.interpolate

  y = np.asarray(losses, np.float64)
  t = np.arange(y.size, dtype=np.float64)
  keep = np.ones(y.size, bool)
  if y.size < degree + 3:
    return keep
  early = t < t[int((y.size - 1) * window)]
  for _ in range(rounds):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # FITPACK's "s too small" notes: the spline only ranks
      fit = scipy.interpolate.UnivariateSpline(t[keep], y[keep], k=degree)
    resid = np.where(keep, np.abs(y - fit(t)), -np.inf)
    n_out = max(1, round(drop_fraction * int(keep.sum())))
    out = np.argsort(-resid, kind="stable")[:n_out]
    out = out[early[out]][:max(0, int(keep.sum()) - degree - 2)]
    if out.size == 0:
      break
    keep[out] = False
  return keep


def forecast(losses: Sequence[float], horizon: float, c_min: float | None = None) -> float:
  """The exponential model fitted to `losses` (at t = 0, 1, ...) evaluated at t = `horizon`."""
  return float(fit_exponential(losses, c_min=c_min)(horizon))


# ---------------------------------------------------------------------------
# Bayesian optimization over x = normalized log learning rate in [0, 1].


def _gp(x: np.ndarray, y: np.ndarray):
  from sklearn.gaussian_process import GaussianProcessRegressor
  from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

  kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(0.2, (1e-2, 1e1), nu=2.5)
            + WhiteKernel(1e-4, (1e-8, 1e-1)))
  # No random restarts: the marginal-likelihood fit starts from the kernel above,
  # so the posterior is a deterministic function of the data.
  gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=0)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # bound-hitting length scales with 1-3 points
    gp.fit(x[:, None], y)
  return gp


def gp_posterior(x: Sequence[float], y: Sequence[float], xq: Sequence[float]):
  """GP posterior mean and standard deviation at `xq` given observations (x, y).

  Prior: constant × Matérn-5/2 + white noise, hyperparameters by maximum
  marginal likelihood (scikit-learn), targets standardized — the setting of
  scikit-optimize's GP that the authors' code uses. Posterior:
  μ(x) = k(x)ᵀ(K + σ²I)⁻¹y, σ²(x) = k(x, x) − k(x)ᵀ(K + σ²I)⁻¹k(x).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu, sd = _gp(x, y).predict(np.asarray(xq, np.float64)[:, None], return_std=True)
  return mu, sd


def acquisition_values(mu: np.ndarray, sd: np.ndarray, best: float, kind: str, kappa: float,
                       xi: float) -> np.ndarray:
  """Acquisition to be minimized: LCB μ − κσ, or −EI with EI = E[max(best − ξ − f, 0)]."""
  if kind == "lcb":
    return mu - kappa * sd
  sd = np.maximum(sd, 1e-12)
  z = (best - xi - mu) / sd
  return -((best - xi - mu) * scipy.stats.norm.cdf(z) + sd * scipy.stats.norm.pdf(z))


def propose(x: Sequence[float], y: Sequence[float], *, kind: str = "lcb", kappa: float = 1e3,
            xi: float = 0.01, grid_size: int = 1001) -> float:
  """The next point in [0, 1]: the acquisition's minimizer on a grid, skipping tried points."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xq = np.linspace(0.0, 1.0, grid_size)
  mu, sd = gp_posterior(x, y, xq)
  acq = acquisition_values(mu, sd, float(y.min()), kind, kappa, xi)
  # The authors' code refuses a learning rate it has already tried.
  tried = np.min(np.abs(xq[:, None] - x[None, :]), axis=1) < 0.5 / (grid_size - 1)
  acq = np.where(tried, np.inf, acq)
  return float(xq[int(np.argmin(acq))])


class BOResult(NamedTuple):
  x_best: float  # the chosen point in [0, 1]
  xs: list  # every evaluated point, in order
  values: list  # the objective's values (inf/nan kept)
  scores: list  # what the GP saw: a non-finite value replaced by the worst finite one


def bo_minimize(objective: Callable[[float], float], num_evals: int, *,
                seed: int | Sequence[int] = 0, kind: str = "lcb", kappa: float = 1e3,
                xi: float = 0.01, select: str = "observed", grid_size: int = 1001,
                worst: float | Callable[[], float] = -math.inf) -> BOResult:
  """Minimizes `objective` over [0, 1] with `num_evals` evaluations (GP + acquisition).

  The first point is uniform from `numpy.random.default_rng(seed)` (the
  authors' scikit-optimize run starts from one random point); each next one
  is `propose(...)`. A non-finite value is scored as the largest finite value
  seen (or `worst` — a float, or a function called then — if larger), so the
  GP stays well-conditioned (the authors' code feeds 1e6). `select="observed"` returns the best evaluated point (the
  authors' code), `"posterior"` the minimizer of the GP mean on the grid.
  """
  xs: list[float] = []
  values: list[float] = []
  scores: list[float] = []
  while len(xs) < num_evals:
    x = (float(np.random.default_rng(seed).uniform()) if not xs else
         propose(xs, scores, kind=kind, kappa=kappa, xi=xi, grid_size=grid_size))
    xs.append(x)
    values.append(float(objective(x)))
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
      w = float(worst() if callable(worst) else worst)
      finite += [w] if math.isfinite(w) else []
    fill = max(finite) if finite else 0.0
    scores = [v if math.isfinite(v) else fill for v in values]
  if select == "observed":
    return BOResult(xs[int(np.argmin(scores))], xs, values, scores)
  xq = np.linspace(0.0, 1.0, grid_size)
  mu, _ = gp_posterior(xs, scores, xq)
  return BOResult(float(xq[int(np.argmin(mu))]), xs, values, scores)


# ---------------------------------------------------------------------------
# Stages and the look-ahead budget.


class Stage(NamedTuple):
  index: int
  start: int  # the number of updates before the stage
  length: int  # τ, cut at the end of training
  lookahead: int  # τ', steps of each look-ahead run


def stages(num_steps: int, tau: int, tau_max: int, lookahead_fraction: float) -> list[Stage]:
  """The stages of a run of `num_steps` training updates: τ, 2τ, 4τ, ... up to τ_max, then τ_max.

  The last stage is cut at `num_steps`, and its look-ahead with it (τ' = fraction × cut length).
  """
  out, start, length = [], 0, tau
  while start < num_steps:
    cut = min(length, num_steps - start)
    out.append(Stage(len(out), start, cut, max(1, round(lookahead_fraction * cut))))
    start += length
    length = min(2 * length, tau_max)
  return out


def lookahead_steps(num_steps: int, *, tau: int, tau_max: int, num_lrs: int,
                    lookahead_fraction: float) -> int:
  """Look-ahead updates AutoLRS spends on a run of `num_steps` training updates (k·τ' per stage)."""
  return sum(num_lrs * s.lookahead for s in stages(num_steps, tau, tau_max, lookahead_fraction))


def train_steps_for_budget(budget: int, *, tau: int, tau_max: int, num_lrs: int,
                           lookahead_fraction: float) -> int:
  """The most training updates T with T + look-ahead updates ≤ `budget` (equal-steps comparisons)."""
  kw = dict(tau=tau, tau_max=tau_max, num_lrs=num_lrs, lookahead_fraction=lookahead_fraction)
  lo, hi = 0, budget  # cost(T) = T + lookahead(T) is non-decreasing in T
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if mid + lookahead_steps(mid, **kw) <= budget:
      lo = mid
    else:
      hi = mid - 1
  return lo


# ---------------------------------------------------------------------------
# The train-loop hook.


def set_learning_rate(state: Any, lr: float, name: str = "learning_rate") -> Any:
  """`state` with `opt_state.hyperparams[name] = lr` (an `optax.inject_hyperparams` optimizer)."""
  hp = getattr(state.opt_state, "hyperparams", None)
  if not isinstance(hp, dict) or name not in hp:
    raise ValueError(
        f"autolrs_hook needs tx = optax.inject_hyperparams(...)({name}=...) at the top of the "
        f"chain; its opt_state has no hyperparams[{name!r}] (got {type(state.opt_state).__name__})")
  new = dict(hp)
  new[name] = jnp.asarray(lr, jnp.result_type(hp[name]))
  return state._replace(opt_state=state.opt_state._replace(hyperparams=new))


class AutoLRSHook:
  """Train-loop hook (`updates_state`, `at_start`) behind :func:`autolrs_hook`.

  It keeps nothing between calls: the stage plan is a function of the step,
  the random first candidate of stage i comes from `seed` and i, and the
  chosen rate lives in the train state (`opt_state.hyperparams`), which the
  loop checkpoints — so a resumed run repeats an uninterrupted one bit for bit.
  """

  updates_state = True
  at_start = True

  def __init__(self, loss_fn, tx, batch_fn, num_steps, min_lr, max_lr, tau, tau_max, num_lrs,
               lookahead_fraction, acquisition, kappa, xi, select, seed, hyperparam, mesh,
               loss_floor, clean, rise_rule):
    self.loss_fn, self.tx, self.batch_fn = loss_fn, tx, batch_fn
    self.num_steps, self.min_lr, self.max_lr = num_steps, min_lr, max_lr
    self.tau, self.tau_max, self.num_lrs = tau, tau_max, num_lrs
    self.lookahead_fraction, self.acquisition = lookahead_fraction, acquisition
    self.kappa, self.xi, self.select, self.seed = kappa, xi, select, seed
    self.hyperparam, self.mesh, self.loss_floor = hyperparam, mesh, loss_floor
    self.clean, self.rise_rule = clean, rise_rule
    self.every_steps = tau  # every stage starts at a multiple of τ (τ doubles)
    self.plan = {s.start: s for s in stages(num_steps, tau, tau_max, lookahead_fraction)}

  def lr_of(self, x: float) -> float:
    """Normalized log-rate x ∈ [0, 1] -> learning rate."""
    lo, hi = math.log(self.min_lr), math.log(self.max_lr)
    return float(math.exp(lo + x * (hi - lo)))

  @functools.cached_property
  def _step_fn(self):
    from jaxlab.train import loop  # optim must not import train at module load

    return loop._train_step(self.loss_fn, self.tx, None, None)  # the loop's compiled step

  def lookahead(self, state: Any, stage: Stage, lr: float) -> np.ndarray:
    """The training losses of τ' updates at `lr` from `state` (left untouched)."""
    from jaxlab.train import sharding

    mesh = self.mesh if self.mesh is not None else sharding.data_mesh()
    st = jax.tree.map(jnp.copy, set_learning_rate(state, lr, self.hyperparam))  # step donates
    losses = []
    for j in range(stage.lookahead):
      # The batches of the stage's first τ' updates: every candidate sees the same data.
      st, metrics = self._step_fn(st, sharding.put_batch(self.batch_fn(stage.start + j), mesh))
      losses.append(metrics["loss"])
    return np.asarray(jax.device_get(losses), np.float64)

  def stage_forecast(self, state: Any, stage: Stage, lr: float) -> tuple[float, float, bool]:
    """(forecast of the loss after the stage's τ updates at `lr`, the look-ahead's first loss,
    whether the rise rule replaced the extrapolation)."""
    losses = self.lookahead(state, stage, lr)
    if not np.all(np.isfinite(losses)):
      return math.inf, float(losses[0]), False
    if stage.lookahead < 3:
      return float(losses[-1]), float(losses[0]), False
    if self.rise_rule and losses[1:].max() >= losses[0]:
      # The series left the exponential model (it rose to or above the
      # stage's starting loss): no extrapolation, the current loss instead —
      # the mean of the last 10 losses, as the authors' code computes it.
      return float(losses[-10:].mean()), float(losses[0]), True
    keep = clean_series(losses) if self.clean else np.ones(losses.size, bool)
    fit = fit_exponential(losses[keep], np.flatnonzero(keep), c_min=self.loss_floor)
    return float(fit(stage.length)), float(losses[0]), False

  def search(self, state: Any, stage: Stage) -> BOResult:
    """One stage's BO: k look-aheads from `state`, each forecast at the stage's end."""
    first: list[float] = []
    self._rose: list[bool] = []  # per candidate, for the stage's row

    def objective(x):
      f, loss0, rose = self.stage_forecast(state, stage, self.lr_of(x))
      first.append(loss0)
      self._rose.append(rose)
      return f

    # The first look-ahead loss is at the stage's start, the same for every
    # candidate: a diverged candidate scores at least that.
    return bo_minimize(objective, self.num_lrs, seed=(self.seed, stage.index),
                       kind=self.acquisition, kappa=self.kappa, xi=self.xi, select=self.select,
                       worst=lambda: first[0])

  def __call__(self, step: int, state: Any):
    stage = self.plan.get(int(step))
    if stage is None:  # a multiple of τ inside a longer stage
      return {}, state
    res = self.search(state, stage)
    lr = self.lr_of(res.x_best)
    done = sum(self.num_lrs * s.lookahead for s in self.plan.values() if s.start <= stage.start)
    metrics = {"autolrs_learning_rate": lr, "autolrs_stage": stage.index,
               "autolrs_tau": stage.length, "autolrs_lookahead_steps": done,
               "autolrs_forecast": min(res.scores)}
    for j, (x, f) in enumerate(zip(res.xs, res.values, strict=True)):
      metrics[f"autolrs_tried_lr_{j}"] = self.lr_of(x)
      metrics[f"autolrs_tried_forecast_{j}"] = f
      metrics[f"autolrs_tried_rose_{j}"] = float(self._rose[j])
    return metrics, set_learning_rate(state, lr, self.hyperparam)


def _check_int(name: str, value: Any, lo: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"{name}={value!r}; allowed: an int >= {lo}")


def autolrs_hook(loss_fn: Callable, tx: optax.GradientTransformation,
                 batch_fn: Callable[[int], Any], *, num_steps: int, min_lr: float,
                 max_lr: float, tau: int = 1000, tau_max: int = 8000, num_lrs: int = 10,
                 lookahead_fraction: float = 0.1, acquisition: str = "lcb",
                 kappa: float = 1e3, xi: float = 0.01, select: str = "observed", seed: int = 0,
                 hyperparam: str = "learning_rate", mesh: Any = None,
                 loss_floor: float | None = None, clean: bool = True,
                 rise_rule: bool = True) -> AutoLRSHook:
  """AutoLRS as a state-updating train-loop hook: a learning rate per stage by BO on the fly.

  Math (Jin et al. 2021):
    Stage i starts after t_i updates and lasts τ_i updates; it trains at the
    constant rate η*_i = argmin_η L(Θ_{t_i+τ_i}(η)) (the stage objective).
    The look-ahead of a candidate η runs τ'_i = lookahead_fraction·τ_i updates
    from Θ_{t_i} and fits the exponential model L(t) = a·exp(b·t) + c, b < 0,
    to its τ' training losses (`fit_exponential`); L(τ_i) stands in for the
    loss after the whole stage. A GP over x = normalized log η in
    [log min_lr, log max_lr] (`gp_posterior`) proposes the next candidate by
    minimizing the acquisition — LCB μ(x) − κσ(x), or −EI — after a first,
    random candidate; after `num_lrs` candidates the state is restored (the
    look-aheads ran on copies) and the stage trains at the candidate with the
    lowest forecast (`select="observed"`, the authors' code) or at the GP
    mean's minimizer (`"posterior"`). τ_{i+1} = min(2τ_i, τ_max); τ' = τ/10
    and k = 10 by default, so search costs as many updates as training.

  What the loop sees: the hook is called with step 0 before the first update
  (`at_start`) and at every multiple of `tau`; at a stage start it writes the
  chosen rate into `state.opt_state.hyperparams[hyperparam]` and returns the
  row entries `autolrs_learning_rate`, `autolrs_forecast`, `autolrs_stage`,
  `autolrs_tau`, `autolrs_lookahead_steps` (look-ahead updates so far, this
  stage's included) and every tried rate, its forecast and whether the rise
  rule set it (`autolrs_tried_lr_j`, `autolrs_tried_forecast_j`,
  `autolrs_tried_rose_j`, 1.0 or 0.0). Look-ahead updates are
  not counted in the loop's `num_steps`: for a budget of B updates in all,
  train `train_steps_for_budget(B, ...)` steps.

  A look-ahead whose loss rises to or above its first loss (the loss of the
  stage's starting state on the stage's first batch) is not extrapolated
  (`rise_rule`): its forecast is its current loss, the mean of its last 10
  losses. The authors' code has this rule for its validation-loss stages,
  against the run's first loss; without it, a rate that blows the loss up
  and then settles back fits as a fast decay and forecasts a loss near 0
  (measured: SGD-momentum on MNIST-1D picked a rate near the top of the range
  and the network died). Mini-batch noise also trips the rule once the loss
  is flat (later stages): those candidates are then compared by their
  current loss, not their extrapolation.

  Differences from the authors' code, all documented choices: the forecast uses training
  losses in every stage (the code switches to validation losses once τ reaches
  τ_max); the rise rule applies in every stage, against the stage's starting
  loss; each look-ahead uses the batches of the stage's first τ' updates,
  the same for every candidate; a non-finite look-ahead scores as the worst
  forecast seen (the code feeds 1e6 to the GP); the last stage forecasts at
  its cut length; `clean_series` notes its own.

  Args:
    loss_fn, tx, batch_fn: the ones given to `jaxlab.train.train`; `tx` must
      be `optax.inject_hyperparams(factory)(learning_rate=...)`; look-aheads
      reuse the loop's compiled step.
    num_steps: the loop's `num_steps` (training updates, look-aheads excluded).
    min_lr, max_lr: the search interval, 0 < min_lr < max_lr.
    tau: the first stage's length τ (also `every_steps`).
    tau_max: the longest stage; tau · 2^m for some m ≥ 0.
    num_lrs: k, candidates per stage (≥ 2).
    lookahead_fraction: τ'/τ in (0, 1].
    acquisition: "lcb" or "ei".
    kappa: κ of LCB (large: mostly exploration; the authors' code passes 1e6).
    xi: ξ of EI.
    select: "observed" or "posterior" (see Math).
    seed: the first candidate of stage i is uniform from (seed, i).
    hyperparam: the injected hyperparameter to set.
    mesh: the loop's mesh (default: all devices, the loop's default).
    loss_floor: optional lower bound of the loss (0 for a cross-entropy): the
      fitted asymptote c is kept ≥ it (`fit_exponential(c_min=...)`; our
      addition — short look-aheads otherwise extrapolate straight lines).
    clean: drop early outliers from the look-ahead losses before the fit, as
      the authors' code does (`clean_series`).
    rise_rule: a look-ahead whose loss rises to or above its first loss is
      not extrapolated; its forecast is the mean of its last 10 losses (see
      Math).

  Returns:
    An `AutoLRSHook` for `train(..., hooks=(hook,))`.

  Raises:
    ValueError: a bad argument (named with its value and what is allowed); at
      the first call, a `tx` without the injected hyperparameter.

  Example:
    >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    >>> hook = autolrs_hook(loss_fn, tx, batches, num_steps=2000, min_lr=1e-4, max_lr=1e-1,
    ...                     tau=100, tau_max=400)
    >>> train.train(loss_fn, params, tx, batches, num_steps=2000, key=key, hooks=(hook,))

  References:
    Jin, Zhou, Zhao, Zhu, Guo, Canini & Krishnamurthy, "AutoLRS: Automatic
    Learning-Rate Schedule by Bayesian Optimization on the Fly", ICLR 2021,
    arXiv:2105.10762.
  """
  for name, value, lo in (("num_steps", num_steps, 1), ("tau", tau, 1), ("tau_max", tau_max, 1),
                          ("num_lrs", num_lrs, 2), ("seed", seed, 0)):
    _check_int(name, value, lo)
  ratio = tau_max // tau
  if tau_max < tau or tau_max % tau or ratio & (ratio - 1):
    raise ValueError(f"tau_max={tau_max!r} with tau={tau!r}; allowed: tau · 2^m (m ≥ 0), so "
                     "stages double from tau up to tau_max")
  for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
        not math.isfinite(value) or value <= 0:
      raise ValueError(f"{name}={value!r}; allowed: a finite float > 0")
  if not min_lr < max_lr:
    raise ValueError(f"min_lr={min_lr!r}, max_lr={max_lr!r}; allowed: min_lr < max_lr")
  if isinstance(lookahead_fraction, bool) or not isinstance(lookahead_fraction, (int, float)) \
      or not 0 < lookahead_fraction <= 1:
    raise ValueError(f"lookahead_fraction={lookahead_fraction!r}; allowed: 0 < x <= 1")
  if acquisition not in ACQUISITIONS:
    raise ValueError(f"acquisition={acquisition!r}; allowed: {list(ACQUISITIONS)}")
  if select not in SELECTIONS:
    raise ValueError(f"select={select!r}; allowed: {list(SELECTIONS)}")
  for name, value in (("kappa", kappa), ("xi", xi)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
        not math.isfinite(value) or value < 0:
      raise ValueError(f"{name}={value!r}; allowed: a finite float >= 0")
  for name, fn in (("loss_fn", loss_fn), ("batch_fn", batch_fn)):
    if not callable(fn):
      raise ValueError(f"{name}={fn!r}; allowed: a callable")
  if not isinstance(tx, optax.GradientTransformation):
    raise ValueError(f"tx={tx!r}; allowed: an optax.GradientTransformation built with "
                     "optax.inject_hyperparams")
  if loss_floor is not None and (isinstance(loss_floor, bool) or not isinstance(
      loss_floor, (int, float)) or not math.isfinite(loss_floor)):
    raise ValueError(f"loss_floor={loss_floor!r}; allowed: None or a finite float")
  for name, value in (("clean", clean), ("rise_rule", rise_rule)):
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"{name}={value!r}; allowed: True or False")
  if not isinstance(hyperparam, str):
    raise ValueError(f"hyperparam={hyperparam!r}; allowed: the name of an injected "
                     "hyperparameter (a str)")
  return AutoLRSHook(loss_fn, tx, batch_fn, int(num_steps), float(min_lr), float(max_lr),
                     int(tau), int(tau_max), int(num_lrs), float(lookahead_fraction), acquisition,
                     float(kappa), float(xi), select, int(seed), hyperparam, mesh,
                     None if loss_floor is None else float(loss_floor), bool(clean),
                     bool(rise_rule))
