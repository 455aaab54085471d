"""Study: optimizers × schedules on MNIST-1D, performance profile, annealing law, refinement."""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, optim, train  # noqa: E402
from jaxlab.optim import annealing_law, schedules  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

SCHEDULES = ("constant", "cosine", "linear", "wsd", "rex")


def validate_sweep(config, schedules=SCHEDULES) -> None:
  """The keys `optimizers`, `base_lrs` and `schedules` (also used by the autolrs study)."""
  for name in config.optimizers:
    if name not in optim.NAMES:
      raise ValueError(f"config key 'optimizers': {name!r} is not registered; "
                       f"allowed: {list(optim.NAMES)}")
    if name not in config.base_lrs or not config.base_lrs[name] > 0:
      raise ValueError(f"config key 'base_lrs.{name}': needs a learning rate > 0")
  for s in config.schedules:
    if s not in schedules:
      raise ValueError(f"config key 'schedules': {s!r}; allowed: {list(schedules)}")


def validate(config) -> None:
  validate_sweep(config)
  checks.choice(config, "refine_optimizer", config.optimizers)
  validate_law(config)
  if not config.lr_factors or min(config.lr_factors) <= 0:
    raise ValueError(f"config key 'lr_factors': {config.lr_factors!r}; allowed: positive floats")
  for key in ("num_steps", "batch_size", "eval_every_steps", "target_accuracy"):
    checks.positive(config, key)
  if config.num_steps % config.eval_every_steps:
    raise ValueError(f"config key 'eval_every_steps': {config.eval_every_steps} does not divide "
                     f"num_steps={config.num_steps}; allowed: a divisor of num_steps (the last "
                     "step is evaluated)")
  if not 0 < config.wsd_decay_fraction < 1:
    raise ValueError(f"config key 'wsd_decay_fraction': {config.wsd_decay_fraction}; "
                     "allowed: 0 < x < 1")
  checks.mnist1d_samples(config, "data", "batch_size")
  checks.divisible_by_devices(config, "batch_size")
  mesh_lib.check_config(config, ("batch_size", "law.batch_size"))
  models.precision.check_config(config, "model.compute_dtype")


def validate_law(config) -> None:
  """The annealing arm's `law.*` keys, checked before anything compiles."""
  law = config.law
  if law.optimizer not in optim.NAMES:
    raise ValueError(f"config key 'law.optimizer': {law.optimizer!r} is not registered; "
                     f"allowed: {list(optim.NAMES)}")
  try:  # the generic train loop passes no extra update arguments
    optim.registry.check_extra_args(law.optimizer)
  except ValueError as e:
    raise ValueError(f"config key 'law.optimizer': {e}") from None
  for key in ("learning_rate", "num_steps", "batch_size", "eval_every_steps", "input_dim",
              "num_classes", "teacher_temperature", "val_samples", "replicas"):
    checks.positive(config, f"law.{key}")
  for key in ("hidden_sizes", "teacher_hidden_sizes"):
    checks.positive_sizes(config, f"law.{key}")
  if not 0.0 <= law.decay < 1.0:
    raise ValueError(f"config key 'law.decay': {law.decay!r}; allowed: 0 <= x < 1")
  for key in ("wsd_decay_fraction", "fit_start_fraction", "drop_window_fraction"):
    if not 0.0 < law[key] < 1.0:
      raise ValueError(f"config key 'law.{key}': {law[key]!r}; allowed: 0 < x < 1")
  if law.num_steps % law.eval_every_steps:
    raise ValueError(f"config key 'law.eval_every_steps': {law.eval_every_steps} does not divide "
                     f"law.num_steps={law.num_steps}; allowed: a divisor of law.num_steps")
  evals = law.num_steps // law.eval_every_steps
  window = int(law.drop_window_fraction * law.num_steps)
  if evals < 8 or window < law.eval_every_steps:
    raise ValueError(
        f"config key 'law.eval_every_steps': {law.eval_every_steps} leaves {evals} evaluations and "
        f"{window // law.eval_every_steps} in the drop window (law.drop_window_fraction="
        f"{law.drop_window_fraction}); allowed: at least 8 evaluations and 1 in the window")
  checks.divisible_by_devices(config, "law.batch_size")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the model every run trains (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  shapes = {"model.hidden_sizes": checks.mlp_shapes(dim, config.model.hidden_sizes, classes)}
  if "law" in config:  # other studies (autolrs) reuse this for their MNIST-1D model only
    law = config.law
    shapes["law.hidden_sizes, law.input_dim"] = checks.mlp_shapes(law.input_dim, law.hidden_sizes,
                                                                  law.num_classes)
  return shapes


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
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes,
                     compute_dtype=config.model.compute_dtype)
  params = model.init(jax.random.key(config.seed))
  loss_fn = recipes.classification_loss(model.apply)
  val_eval = recipes.classification_eval(model.apply, ds.x_test, ds.y_test, "val")
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, config.batch_size, seed=config.seed)
  # Every trial starts from `params`: step 0 of each validation curve, so that
  # time to target can be interpolated inside the first evaluation interval.
  initial_accuracy = float(val_eval(params)["val_accuracy"])
  mesh = mesh_lib.from_config(config)

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
          log_every=log_every or config.eval_every_steps,
          hooks=[EvalHook(val_eval, config.eval_every_steps, opt)], lr_schedule=schedule,
          progress=config.progress, desc=tag, mesh=mesh)
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
           "val_curve": [(0, initial_accuracy)] + [(r["step"], r["val_accuracy"]) for r in evals],
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
      fastest[(opt, sched_name)] = time_to_target(runs, config.target_accuracy, interpolate=True)
      diverged += [f"{opt}/{sched_name}/lr={r['lr']:.3g}" for r in runs if "diverged" in r]

  profile = performance_profile(fastest, config.optimizers, config.schedules)
  law = annealing_arm(config, workdir)
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


def crossing_step(val_curve, target: float) -> float | None:
  """Steps to reach `target` accuracy, linear in steps between evaluations.

  With (s0, a0) the last evaluation below the target and (s1, a1) the first at
  or above it, the crossing is s0 + (target - a0) / (a1 - a0) * (s1 - s0): a
  ranking is resolved inside an evaluation interval instead of to it (two
  trials that cross in the same interval no longer tie). The curve should
  start with the evaluation at step 0 (the initial parameters); without an
  earlier point, a hit at the first evaluation counts at that evaluation's
  step. None when the curve never reaches the target.
  """
  prev = None
  for step, acc in val_curve:
    if acc >= target:
      if prev is None:
        return float(step)
      (s0, a0), (s1, a1) = prev, (step, acc)
      return float(s0 + (target - a0) / (a1 - a0) * (s1 - s0))
    prev = (step, acc)
  return None


def eval_params(opt: str, state) -> object:
  """The parameters a method is judged at: schedule-free AdamW's averaged point
  x = (y - (1 - b1) z) / b1 (Defazio et al. 2024, eq. 1; optax's
  `schedule_free_eval_params`), the training point for every other method."""
  if opt == "schedule_free_adamw":
    return optax.contrib.schedule_free_eval_params(state.opt_state, state.params)
  return state.params


class EvalHook:
  """Validation every `every_steps` steps at `eval_params(opt, state)` (a train-loop hook)."""

  def __init__(self, eval_fn, every_steps: int, opt: str):
    self.eval_fn, self.every_steps, self.opt = eval_fn, every_steps, opt

  def __call__(self, step: int, state) -> dict:
    del step
    return self.eval_fn(eval_params(self.opt, state))


def time_to_target(runs: list[dict], target: float, interpolate: bool = False) -> dict:
  """AlgoPerf's time to result over a tuning sweep: the fastest trial that reaches the target.

  A trial's time is the step of its first evaluation at or above `target`, or
  with ``interpolate=True`` its `crossing_step` (this study's scoring: rankings
  resolved inside an evaluation interval). Read from each run's `val_curve`,
  so a new target needs no re-training; ``{"steps_to_target": None, "lr":
  None}`` when no trial reaches it.
  """
  def time(curve):
    if interpolate:
      return crossing_step(curve, target)
    return next((step for step, acc in curve if acc >= target), None)

  hits = [(time(r["val_curve"]), r["lr"]) for r in runs]
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


LAW_FIT = ("constant", "cosine")  # the paper fits constant + cosine ...
LAW_PREDICT = ("wsd", "multistep")  # ... and predicts schedules it has not seen


def law_schedule(name: str, lr: float, num_steps: int, decay_fraction: float):
  """The annealing arm's schedules: constant, cosine to 0, WSD (1-sqrt cooldown over
  `decay_fraction` of the run, to 0) and multistep (×0.3 at half, ×0.1 of the peak at 3/4)."""
  if name == "multistep":
    return optax.piecewise_constant_schedule(lr, {num_steps // 2: 0.3, 3 * num_steps // 4: 1 / 3})
  return make_schedule(name, lr, num_steps, decay_fraction)


def teacher_task(law, seed: int):
  """A stream of fresh classification samples labelled by a fixed random teacher.

  x ~ N(0, I_d); y ~ softmax(temperature * teacher(x)), the teacher an MLP
  drawn from `seed`. Every step sees new samples, so nothing is memorised and
  the loss tends to the teacher's entropy, not to 0, as in LLM pre-training
  where the annealing law was found. Returns (batch_fn(step, stream_key),
  eval_fn(params) -> {"val_loss"}, floor): val_loss is the expected
  cross-entropy over labels, E_x[-sum_k p_teacher(k|x) log p(k|x)], on fixed
  `val_samples` inputs (the same for every run: common random numbers), and
  floor is the teacher's entropy on them, the lowest val_loss any model gets.
  """
  k_teacher, k_val = jax.random.split(jax.random.key(seed))
  teacher = models.mlp(law.input_dim, law.teacher_hidden_sizes, law.num_classes)
  t_params = teacher.init(k_teacher)
  student = models.mlp(law.input_dim, law.hidden_sizes, law.num_classes)

  @functools.partial(jax.jit, static_argnums=2)
  def sample(t_params, key, n):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, law.input_dim))
    logits = law.teacher_temperature * teacher.apply(t_params, x)[0]
    return x, jax.random.categorical(ky, logits), jax.nn.log_softmax(logits)

  x_val, _, logp_val = sample(t_params, k_val, law.val_samples)
  floor = float(-jnp.sum(jnp.exp(logp_val) * logp_val, -1).mean())

  @jax.jit
  def val_loss(params, x, logp):
    logq = jax.nn.log_softmax(student.apply(params, x)[0])
    return -jnp.sum(jnp.exp(logp) * logq, -1).mean()

  def batch_fn(step, stream_key):
    x, y, _ = sample(t_params, jax.random.fold_in(stream_key, step), law.batch_size)
    return {"x": x, "y": y}

  return student, batch_fn, lambda params: {"val_loss": val_loss(params, x_val, logp_val)}, floor


def annealing_arm(config, workdir: str) -> dict:
  """The LR-annealing law (Tissue et al. 2024, eq. 1 with S2 of eq. 5) on a teacher-student stream.

  For each schedule, `law.replicas` runs (student init and data stream from
  the study seed; one teacher) give the mean validation-loss curve. The law
  is fitted on the constant and cosine curves from `fit_start_fraction` of the
  run (the paper drops the early transient) and predicts the WSD and
  multistep curves: mean relative error, error relative to the reducible loss
  (L - floor), and the cooldown drop (loss over the `drop_window_fraction` of
  steps before the first LR decrease minus the loss over the last 1% of steps)
  predicted / measured.
  """
  law = config.law
  student, batch_fn, eval_fn, floor = teacher_task(law, config.seed)
  loss_fn = recipes.classification_loss(student.apply)
  n, every = law.num_steps, law.eval_every_steps
  curves, lrs = {}, {}
  for name in LAW_FIT + LAW_PREDICT:
    schedule = law_schedule(name, law.learning_rate, n, law.wsd_decay_fraction)
    lrs[name] = np.asarray(jax.vmap(schedule)(jnp.arange(n)), np.float64)
    runs = []
    for r in range(law.replicas):
      rundir = os.path.join(workdir, "law", f"{name}_replica{r}")
      done = os.path.join(rundir, "run_summary.json")
      if not os.path.exists(done):  # resume at run granularity
        key = jax.random.fold_in(jax.random.key(config.seed), 1000 + r)
        k_init, k_stream, k_step = jax.random.split(key, 3)
        result = train.train(
            loss_fn, student.init(k_init), optim.get(law.optimizer, learning_rate=schedule),
            functools.partial(batch_fn, stream_key=k_stream), num_steps=n, key=k_step,
            workdir=rundir, log_every=every, eval_every=every, eval_fn=eval_fn,
            lr_schedule=schedule, progress=config.progress, desc=f"law {name} {r}",
            mesh=mesh_lib.from_config(config))
        io.write_json(done, {"steps": [row["step"] for row in result.history],
                             "val_loss": [row["val_loss"] for row in result.history]})
      runs.append(io.read_json(done))
    steps = np.asarray(runs[0]["steps"])
    curves[name] = np.mean([rr["val_loss"] for rr in runs], axis=0)
  # Row `step` holds the loss after `step` updates: S1 sums the first `step` rates.
  idx = steps - 1
  keep = steps > law.fit_start_fraction * n
  fitted = annealing_law.fit([lrs[s] for s in LAW_FIT], [curves[s][keep] for s in LAW_FIT],
                             steps=[idx[keep]] * len(LAW_FIT), decay=law.decay)
  window, end_window = max(1, int(law.drop_window_fraction * n)), max(1, n // 100)
  out = {"params": dict(fitted._asdict()), "floor": floor, "steps": steps.tolist(),
         "fit_start_step": int(steps[keep][0]), "curves": {}, "predicted": {}, "schedules": {}}
  for name in LAW_FIT + LAW_PREDICT:
    pred, act = fitted.predict(lrs[name], idx), curves[name]
    out["curves"][name], out["predicted"][name] = act.tolist(), pred.tolist()
    err = np.abs(pred - act)[keep]
    row = {"mean_relative_error": float(np.mean(err / act[keep])),
           "reducible_relative_error": float(np.mean(err) / np.mean(act[keep] - floor))}
    if name in LAW_PREDICT:
      d_act, d_pred = (annealing_law.cooldown_drop(c, lrs[name], idx, window, end_window)
                       for c in (act, pred))
      row.update(drop_measured=d_act, drop_predicted=d_pred, drop_ratio=d_pred / d_act)
    out["schedules"][name] = row
  out["wsd_mean_relative_error"] = out["schedules"]["wsd"]["mean_relative_error"]
  return out


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
  plot_law(law, workdir)


def plot_law(law, workdir) -> None:
  """Measured vs fitted/predicted validation loss per schedule, one panel each (2 x 2)."""
  names = LAW_FIT + LAW_PREDICT
  steps = np.asarray(law["steps"])
  fig, axes = plt.subplots(2, 2, figsize=(9, 6.5), sharex=True)
  for ax, name in zip(axes.ravel(), names, strict=True):
    act, pred = np.asarray(law["curves"][name]), np.asarray(law["predicted"][name])
    ax.plot(steps, act, color="C0", lw=1, label="measured (mean of replicas)")
    ax.plot(steps, pred, "--", color="C3", lw=1.5, label="law fitted on constant + cosine")
    ax.axhline(law["floor"], color="0.5", ls=":", label="floor (teacher entropy)")
    ax.axvline(law["fit_start_step"], color="0.7", ls="-.", lw=1, label="fit starts")
    row = law["schedules"][name]
    title = f"{name} ({'fitted' if name in LAW_FIT else 'predicted'}): "
    title += f"mean rel. err {100 * row['mean_relative_error']:.2f}%"
    if "drop_ratio" in row:
      title += f"\ncooldown drop predicted/measured {row['drop_ratio']:.2f}"
    top = act[steps >= law["fit_start_step"]].max()
    ax.set(title=title, ylim=(law["floor"] - 0.01, top + 0.2 * (top - law["floor"])))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
  for ax in axes[1]:
    ax.set_xlabel("step")
  for ax in axes[:, 0]:
    ax.set_ylabel("validation loss")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
  fig.suptitle(f"annealing law L0 + A·S1^-α − C·S2 (λ = {law['params']['decay']})")
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  io.save_figure(fig, workdir, "annealing_law")
