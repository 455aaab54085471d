"""Study: optimizers × schedules on MNIST-1D, performance profile, annealing law, refinement."""
from __future__ import annotations

import os
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, optim, train  # noqa: E402
from jaxlab.optim import annealing_law, schedules  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402

SCHEDULES = ("constant", "cosine", "linear", "wsd", "rex")


def validate(config) -> None:
  for name in config.optimizers:
    if name not in optim.NAMES:
      raise ValueError(f"config key 'optimizers': {name!r} is not registered; "
                       f"allowed: {list(optim.NAMES)}")
    if name not in config.base_lrs or not config.base_lrs[name] > 0:
      raise ValueError(f"config key 'base_lrs.{name}': needs a learning rate > 0")
  for s in config.schedules:
    if s not in SCHEDULES:
      raise ValueError(f"config key 'schedules': {s!r}; allowed: {list(SCHEDULES)}")
  for key in ("law_optimizer", "refine_optimizer"):
    checks.choice(config, key, config.optimizers)
  if not config.lr_factors or min(config.lr_factors) <= 0:
    raise ValueError(f"config key 'lr_factors': {config.lr_factors!r}; allowed: positive floats")
  for key in ("num_steps", "batch_size", "eval_every_steps", "target_accuracy"):
    checks.positive(config, key)
  if not 0 < config.wsd_decay_fraction < 1:
    raise ValueError(f"config key 'wsd_decay_fraction': {config.wsd_decay_fraction}; "
                     "allowed: 0 < x < 1")
  checks.mnist1d_samples(config, "data", "batch_size")
  checks.divisible_by_devices(config, "batch_size")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the model every run trains (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  return {"model.hidden_sizes": checks.mlp_shapes(dim, config.model.hidden_sizes, classes)}


def make_schedule(name: str, lr: float, num_steps: int, decay_fraction: float):
  if name == "constant":
    return schedules.linear_decay(lr, num_steps, end_value=lr)
  if name == "cosine":
    return recipes.make_schedule("cosine", lr, num_steps)
  if name == "linear":
    return schedules.linear_decay(lr, num_steps)
  if name == "rex":
    return schedules.rex(lr, num_steps)
  decay = max(1, int(decay_fraction * num_steps))
  return schedules.wsd(lr, num_steps - decay, decay, shape="1-sqrt")


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes)
  params = model.init(jax.random.key(config.seed))
  loss_fn = recipes.classification_loss(model.apply)
  val_eval = recipes.classification_eval(model.apply, ds.x_test, ds.y_test, "val")
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, config.batch_size, seed=config.seed)

  def run(opt: str, sched_name: str, lr: float, schedule=None, log_every=None) -> dict:
    # Runs logged every step (law and refinement arms) are kept apart from the sweep's.
    tag = f"{opt}_{sched_name}_{lr:.3g}" + ("_every_step" if log_every == 1 else "")
    rundir = os.path.join(workdir, "runs", tag)
    done = os.path.join(rundir, "run_summary.json")
    if os.path.exists(done):  # resume at run granularity
      return io.read_json(done)
    schedule = schedule or make_schedule(sched_name, lr, config.num_steps,
                                         config.wsd_decay_fraction)
    try:
      result = train.train(
          loss_fn, params, optim.get(opt, learning_rate=schedule), batches,
          num_steps=config.num_steps, key=jax.random.key(config.seed + 1), workdir=rundir,
          log_every=log_every or config.eval_every_steps, eval_every=config.eval_every_steps,
          eval_fn=val_eval, lr_schedule=schedule, progress=config.progress, desc=tag)
    except train.NonFiniteError as e:
      # A diverged trial is a trial that never reaches the target (AlgoPerf);
      # the sweep goes on.
      out = {"optimizer": opt, "schedule": sched_name, "lr": lr, "diverged": str(e),
             "best_val_accuracy": 0.0, "final_val_accuracy": 0.0, "curve": [],
             "val_curve": [], "grad_norms": [], "lrs": []}
      io.write_json(done, out)
      return out
    evals = [r for r in result.history if "val_accuracy" in r]
    out = {"optimizer": opt, "schedule": sched_name, "lr": lr,
           "best_val_accuracy": max(r["val_accuracy"] for r in evals),
           "final_val_accuracy": evals[-1]["val_accuracy"],
           "curve": [(r["step"], r["loss"]) for r in result.history],
           "val_curve": [(r["step"], r["val_accuracy"]) for r in evals],
           "grad_norms": [r["grad_norm"] for r in result.history],
           "lrs": [r["learning_rate"] for r in result.history]}
    io.write_json(done, out)
    return out

  best: dict[tuple[str, str], dict] = {}
  fastest: dict[tuple[str, str], dict] = {}
  diverged: list[str] = []
  for opt in config.optimizers:
    for sched_name in config.schedules:
      runs = [run(opt, sched_name, config.base_lrs[opt] * f) for f in config.lr_factors]
      best[(opt, sched_name)] = max(runs, key=lambda r: r["best_val_accuracy"])
      fastest[(opt, sched_name)] = time_to_target(runs, config.target_accuracy)
      diverged += [f"{opt}/{sched_name}/lr={r['lr']:.3g}" for r in runs if "diverged" in r]

  profile = performance_profile(fastest, config.optimizers, config.schedules)
  law = annealing_arm(config, run)
  refined = refined_arm(config, run)
  summary = {
      "best_val_accuracy": {f"{o}/{s}": best[(o, s)]["best_val_accuracy"] for o, s in best},
      "steps_to_target": {f"{o}/{s}": t["steps_to_target"] for (o, s), t in fastest.items()},
      "best_lr": {f"{o}/{s}": best[(o, s)]["lr"] for o, s in best},
      "fastest_lr": {f"{o}/{s}": t["lr"] for (o, s), t in fastest.items()},
      "diverged": diverged,
      "algoperf_score": profile["score"],
      "target_accuracy": config.target_accuracy,
      "annealing_law": law,
      "refined_schedule": refined,
      "wall_time_s": time.time() - start,
  }
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(best, profile, law, config, workdir)
  return summary


def time_to_target(runs: list[dict], target: float) -> dict:
  """AlgoPerf's time to result over a tuning sweep: the fastest trial that reaches the target.

  Steps are the first evaluation with validation accuracy >= `target` (read
  from each run's `val_curve`, so a new target needs no re-training);
  ``{"steps_to_target": None, "lr": None}`` when no trial reaches it.
  """
  hits = [(next((step for step, acc in r["val_curve"] if acc >= target), None), r["lr"])
          for r in runs]
  hits = [h for h in hits if h[0] is not None]
  steps, lr = min(hits, key=lambda h: h[0]) if hits else (None, None)
  return {"steps_to_target": steps, "lr": lr}


def performance_profile(times, optimizers, scheds, r_max: float = 4.0) -> dict:
  """AlgoPerf scoring: r = steps / best steps per workload; ρ(τ) = fraction with r ≤ τ."""
  taus = np.linspace(1.0, r_max, 301)
  rho, score = {}, {}
  for o in optimizers:
    ratios = []
    for s in scheds:
      t = times[(o, s)]["steps_to_target"]
      ts = [times[(p, s)]["steps_to_target"] for p in optimizers]
      ts = [x for x in ts if x is not None]
      ratios.append(np.inf if t is None else t / min(ts))
    rho[o] = [float(np.mean(np.asarray(ratios) <= tau)) for tau in taus]
    score[o] = float(np.trapezoid(rho[o], taus) / (r_max - 1.0))
  return {"taus": taus.tolist(), "rho": rho, "score": score}


def _smooth(x, beta=0.9):
  out, m = [], x[0]
  for v in x:
    m = beta * m + (1 - beta) * v
    out.append(m)
  return np.asarray(out)


def annealing_arm(config, run) -> dict:
  """Fit L(s) = L0 + A S1^-α − C S2 on constant + cosine, predict WSD (Tissue et al. 2024)."""
  opt, lr = config.law_optimizer, config.base_lrs[config.law_optimizer]
  runs = {s: run(opt, s, lr, log_every=1) for s in ("constant", "cosine", "wsd")}
  # With log_every=1 the logged rows are every step: losses and lrs align.
  lrs = {s: np.asarray(r["lrs"]) for s, r in runs.items()}
  losses = {s: _smooth(np.asarray([v for _, v in r["curve"]])) for s, r in runs.items()}
  skip = max(1, config.num_steps // 20)  # early transient: the paper fits after warmup
  law = annealing_law.fit([lrs["constant"][skip:], lrs["cosine"][skip:]],
                          [losses["constant"][skip:], losses["cosine"][skip:]])
  pred = law.predict(lrs["wsd"])[skip:]
  err = float(np.mean(np.abs(pred - losses["wsd"][skip:]) / losses["wsd"][skip:]))
  return {"optimizer": opt, "lr": lr, "params": dict(law._asdict()),
          "wsd_mean_relative_error": err, "wsd_pred": pred.tolist(),
          "wsd_actual": losses["wsd"][skip:].tolist(), "skip": skip}


def refined_arm(config, run) -> dict:
  """Refined schedule from the linear run's gradient norms (Defazio et al. 2023), re-run."""
  opt, lr = config.refine_optimizer, config.base_lrs[config.refine_optimizer]
  linear = run(opt, "linear", lr, log_every=1)
  sched = schedules.refined(linear["grad_norms"], peak_value=lr, norm="l2")
  refined = run(opt, "refined", lr, schedule=sched, log_every=1)
  return {"optimizer": opt, "lr": lr,
          "linear_best_val_accuracy": linear["best_val_accuracy"],
          "refined_best_val_accuracy": refined["best_val_accuracy"],
          "linear_final_loss": float(np.mean([v for _, v in linear["curve"][-20:]])),
          "refined_final_loss": float(np.mean([v for _, v in refined["curve"][-20:]])),
          "refined_lrs": refined["lrs"][:: max(1, len(refined["lrs"]) // 200)]}


def _style(i: int) -> dict:
  """Distinct line styles past matplotlib's ten default colours."""
  return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[i // 10 % 3]}


def plot(best, profile, law, config, workdir) -> None:
  fig, axes = plt.subplots(1, len(config.schedules), figsize=(3.2 * len(config.schedules), 3),
                           sharey=True, squeeze=False)
  for ax, s in zip(axes[0], config.schedules, strict=True):
    for i, o in enumerate(config.optimizers):
      if best[(o, s)]["curve"]:  # empty when every trial of the sweep diverged
        steps, losses = zip(*best[(o, s)]["curve"], strict=True)
        ax.plot(steps, losses, label=o, **_style(i))
    ax.set(title=s, xlabel="step", yscale="log")
  axes[0][0].set_ylabel("train loss (best LR)")
  axes[0][-1].legend(fontsize=7)
  io.save_figure(fig, workdir, "loss_curves")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for i, o in enumerate(config.optimizers):
    ax.step(profile["taus"], profile["rho"][o], where="post",
            label=f"{o} ({profile['score'][o]:.2f})", **_style(i))
  ax.set(xlabel="τ (steps / best steps)", ylabel="fraction of workloads solved",
         title=f"performance profile (target acc {config.target_accuracy})", ylim=(-0.02, 1.02))
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  io.save_figure(fig, workdir, "performance_profile")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  x = np.arange(len(law["wsd_actual"])) + law["skip"]
  ax.plot(x, law["wsd_actual"], label="WSD run (smoothed)")
  ax.plot(x, law["wsd_pred"], "--", label="law fitted on constant + cosine")
  ax.set(xlabel="step", ylabel="train loss", yscale="log",
         title=f"annealing law: mean rel. error {law['wsd_mean_relative_error']:.3f}")
  ax.legend()
  io.save_figure(fig, workdir, "annealing_law")
