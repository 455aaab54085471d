"""Study: AutoLRS vs tuned cosine and WSD schedules on the optimizer benchmark's workload."""
from __future__ import annotations

import os
import time

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import optimizer_benchmark  # noqa: E402
from jaxlab import data, models, optim, train  # noqa: E402
from jaxlab.optim import autolrs  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

SCHEDULES = ("cosine", "wsd")


def validate(config) -> None:
  optimizer_benchmark.validate_sweep(config, SCHEDULES)
  if not config.lr_factors or min(config.lr_factors) <= 0:
    raise ValueError(f"config key 'lr_factors': {config.lr_factors!r}; allowed: positive floats")
  for key in ("budget_steps", "batch_size", "eval_every_steps", "checkpoint_every_steps"):
    checks.positive(config, key)
  if not 0 < config.wsd_decay_fraction < 1:
    raise ValueError(f"config key 'wsd_decay_fraction': {config.wsd_decay_fraction}; "
                     "allowed: 0 < x < 1")
  lo, hi = config.autolrs.lr_range_factors
  if not 0 < lo < hi:
    raise ValueError(f"config key 'autolrs.lr_range_factors': {(lo, hi)!r}; allowed: "
                     "(low, high) with 0 < low < high")
  a = config.autolrs
  try:  # the hook's own argument checks, before anything compiles
    autolrs.autolrs_hook(lambda *_: 0.0, optax.sgd(0.1), lambda s: None, num_steps=1,
                         min_lr=lo, max_lr=hi, tau=a.tau, tau_max=a.tau_max,
                         num_lrs=a.num_lrs, lookahead_fraction=a.lookahead_fraction,
                         acquisition=a.acquisition, kappa=a.kappa, select=a.select,
                         loss_floor=a.loss_floor)
  except ValueError as e:
    raise ValueError(f"config key 'autolrs': {e}") from None
  if _train_steps(config) < 1:
    raise ValueError(f"config key 'budget_steps': {config.budget_steps} leaves no training step "
                     "after AutoLRS's look-ahead; allowed: a larger budget or a smaller "
                     "autolrs.tau / autolrs.num_lrs")
  checks.mnist1d_samples(config, "data", "batch_size")
  checks.divisible_by_devices(config, "batch_size")
  mesh_lib.check_config(config, ("batch_size",))
  models.precision.check_config(config, "model.compute_dtype")


def param_shapes(config) -> dict:
  return optimizer_benchmark.param_shapes(config)


def _plan_kwargs(config) -> dict:
  a = config.autolrs
  return dict(tau=a.tau, tau_max=a.tau_max, num_lrs=a.num_lrs,
              lookahead_fraction=a.lookahead_fraction)


def _train_steps(config) -> int:
  """AutoLRS's training updates: the budget less its look-ahead updates."""
  return autolrs.train_steps_for_budget(config.budget_steps, **_plan_kwargs(config))


def total_steps(step: int, plan: list, num_lrs: int) -> int:
  """Updates spent by AutoLRS after `step` training updates, the look-aheads before them included.

  A stage's search runs at its start, so the look-ahead of the stage holding
  `step` (start < step ≤ start + length) is counted in full.
  """
  spent = sum(num_lrs * s.lookahead for s in plan if s.start < max(step, 1))
  return step + spent


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes,
                     compute_dtype=config.model.compute_dtype)
  params = model.init(jax.random.key(config.seed))
  loss_fn = recipes.classification_loss(model.apply)
  val_eval = recipes.classification_eval(model.apply, ds.x_test, ds.y_test, "val")
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, config.batch_size, seed=config.seed)
  key = jax.random.key(config.seed + 1)

  def finish(rundir, out, result):
    evals = [r for r in result.history if "val_accuracy" in r]
    out.update(final_val_accuracy=evals[-1]["val_accuracy"], final_val_loss=evals[-1]["val_loss"],
               val_curve=[(r["step"], r["val_loss"], r["val_accuracy"]) for r in evals])
    io.write_json(os.path.join(rundir, "run_summary.json"), out)
    return out

  def baseline(opt: str, sched: str, lr: float) -> dict:
    tag = f"{opt}_{sched}_{lr:.3g}"
    rundir = os.path.join(workdir, "runs", tag)
    done = os.path.join(rundir, "run_summary.json")
    if os.path.exists(done):  # resume at run granularity
      return io.read_json(done)
    schedule = optimizer_benchmark.make_schedule(sched, lr, config.budget_steps,
                                                 config.wsd_decay_fraction)
    out = {"optimizer": opt, "schedule": sched, "lr": lr, "steps": config.budget_steps}
    try:
      result = train.train(
          loss_fn, params, optim.get(opt, learning_rate=schedule), batches,
          num_steps=config.budget_steps, key=key, workdir=rundir,
          log_every=config.eval_every_steps, eval_every=config.eval_every_steps,
          eval_fn=val_eval, lr_schedule=schedule, progress=config.progress, desc=tag,
          mesh=mesh_lib.from_config(config))
    except train.NonFiniteError as e:  # a diverged trial loses the sweep; it goes on
      out.update(diverged=str(e), final_val_accuracy=0.0, final_val_loss=float("inf"),
                 val_curve=[])
      io.write_json(done, out)
      return out
    return finish(rundir, out, result)

  def auto(opt: str) -> dict:
    rundir = os.path.join(workdir, "runs", f"{opt}_autolrs")
    done = os.path.join(rundir, "run_summary.json")
    if os.path.exists(done):
      return io.read_json(done)
    a = config.autolrs
    lo, hi = (config.base_lrs[opt] * f for f in a.lr_range_factors)
    tx = optax.inject_hyperparams(optim.factory(opt), static_args=optim.STATIC_ARGS.get(opt, ()))(
        learning_rate=config.base_lrs[opt])
    steps = _train_steps(config)
    hook = optim.autolrs_hook(loss_fn, tx, batches, num_steps=steps, min_lr=lo, max_lr=hi,
                              acquisition=a.acquisition, kappa=a.kappa, select=a.select,
                              loss_floor=a.loss_floor, seed=config.seed, mesh=mesh_lib.from_config(config),
                              **_plan_kwargs(config))
    # Checkpointed: a killed run resumes mid-run, bit for bit (the hook's
    # decisions live in the optimizer state).
    result = train.train(loss_fn, params, tx, batches, num_steps=steps, key=key, workdir=rundir,
                         log_every=config.eval_every_steps, eval_every=config.eval_every_steps,
                         eval_fn=val_eval, checkpoint_every=config.checkpoint_every_steps,
                         hooks=(hook,), progress=config.progress, desc=f"{opt}_autolrs",
                         mesh=mesh_lib.from_config(config))
    plan = autolrs.stages(steps, a.tau, a.tau_max, a.lookahead_fraction)
    stage_rows = [r for r in result.history if "autolrs_learning_rate" in r]
    out = {"optimizer": opt, "schedule": "autolrs", "lr_range": [lo, hi], "train_steps": steps,
           "lookahead_steps": int(stage_rows[-1]["autolrs_lookahead_steps"]),
           "stages": [{"start": int(r["step"]), "length": int(r["autolrs_tau"]),
                       "lr": r["autolrs_learning_rate"], "forecast": r["autolrs_forecast"],
                       "tried_lrs": [r[f"autolrs_tried_lr_{j}"] for j in range(a.num_lrs)],
                       "tried_forecasts": [r[f"autolrs_tried_forecast_{j}"]
                                           for j in range(a.num_lrs)],
                       "tried_rose": [bool(r[f"autolrs_tried_rose_{j}"])
                                      for j in range(a.num_lrs)]}
                      for r in stage_rows]}
    out["total_steps"] = out["train_steps"] + out["lookahead_steps"]
    finish(rundir, out, result)
    # The validation curve on the budget's axis: look-ahead updates counted.
    out["val_curve_total_steps"] = [(total_steps(s, plan, a.num_lrs), loss, acc)
                                    for s, loss, acc in out["val_curve"]]
    io.write_json(done, out)
    return out

  results: dict = {}
  for opt in config.optimizers:
    arms = {}
    for sched in config.schedules:
      runs = [baseline(opt, sched, config.base_lrs[opt] * f) for f in config.lr_factors]
      # Tuned: the sweep's best final validation accuracy (ties: lower loss).
      arms[sched] = dict(max(runs, key=lambda r: (r["final_val_accuracy"],
                                                  -r["final_val_loss"])))
      arms[sched]["sweep"] = {f"{r['lr']:.3g}": r["final_val_accuracy"] for r in runs}
    arms["autolrs"] = auto(opt)
    results[opt] = arms

  summary = {"budget_steps": config.budget_steps, "optimizers": {}}
  for opt, arms in results.items():
    best_sched = max(config.schedules, key=lambda s: arms[s]["final_val_accuracy"])
    au = arms["autolrs"]
    summary["optimizers"][opt] = {
        "autolrs": {k: au[k] for k in ("final_val_accuracy", "final_val_loss", "train_steps",
                                       "lookahead_steps", "total_steps", "lr_range")}
        | {"stage_lrs": [s["lr"] for s in au["stages"]]},
        **{s: {"tuned_lr": arms[s]["lr"], "final_val_accuracy": arms[s]["final_val_accuracy"],
               "final_val_loss": arms[s]["final_val_loss"], "sweep": arms[s]["sweep"]}
           for s in config.schedules},
        "best_schedule": best_sched,
        "autolrs_minus_best_accuracy": au["final_val_accuracy"]
        - arms[best_sched]["final_val_accuracy"],
        "autolrs_minus_best_loss": au["final_val_loss"] - arms[best_sched]["final_val_loss"],
    }
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(results, config, workdir)
  return summary


def _schedule_values(arm: dict, config) -> np.ndarray:
  sched = optimizer_benchmark.make_schedule(arm["schedule"], arm["lr"], config.budget_steps,
                                            config.wsd_decay_fraction)
  return np.asarray([float(sched(t)) for t in range(config.budget_steps)])


def plot(results: dict, config, workdir: str) -> None:
  opts = list(results)
  styles = {"autolrs": dict(color="C3", lw=2), "cosine": dict(color="C0"),
            "wsd": dict(color="C2", linestyle="--")}
  fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.4), squeeze=False)
  for ax, opt in zip(axes[0], opts, strict=True):
    au = results[opt]["autolrs"]
    for s in config.schedules:
      arm = results[opt][s]
      ax.plot(np.arange(config.budget_steps), _schedule_values(arm, config),
              label=f"{s} (tuned peak)", **styles[s])
    starts = [st["start"] for st in au["stages"]] + [au["train_steps"]]
    lrs = [st["lr"] for st in au["stages"]]
    ax.step(starts, lrs + lrs[-1:], where="post", label="AutoLRS (chosen)", **styles["autolrs"])
    for st in au["stages"]:
      ax.scatter([st["start"]] * len(st["tried_lrs"]), st["tried_lrs"], s=8, color="0.6",
                 zorder=1, label="AutoLRS (tried)" if st is au["stages"][0] else None)
    ax.set(title=opt, xlabel="training update (look-ahead not shown)", yscale="log",
           ylim=(au["lr_range"][0] / 3, au["lr_range"][1] * 3))  # the decays' tails cut
  axes[0][0].set_ylabel("learning rate")
  axes[0][-1].legend(fontsize=7, loc="lower left")
  io.save_figure(fig, workdir, "lr_schedule")

  fig, axes = plt.subplots(1, len(opts), figsize=(4.6 * len(opts), 3.6), squeeze=False)
  for ax, opt in zip(axes[0], opts, strict=True):
    accs = []
    for s in config.schedules:
      arm = results[opt][s]
      accs.append(f"{s} {arm['final_val_accuracy']:.3f}")
      if arm["val_curve"]:
        steps, losses, _ = zip(*arm["val_curve"], strict=True)
        ax.plot(steps, losses, label=f"{s} (tuned peak LR)", **styles[s])
    au = results[opt]["autolrs"]
    steps, losses, _ = zip(*au["val_curve_total_steps"], strict=True)
    ax.plot(steps, losses, label="AutoLRS", **styles["autolrs"])
    accs.append(f"AutoLRS {au['final_val_accuracy']:.3f}")
    ax.set(title=f"{opt}\nfinal val. acc.: " + ", ".join(accs),
           xlabel="updates, AutoLRS look-ahead counted", yscale="log")
    ax.title.set_fontsize(8)
  axes[0][0].set_ylabel("validation loss")
  axes[0][-1].legend(fontsize=7)
  io.save_figure(fig, workdir, "loss_curves")
