"""Study: hyperparameter-free learners vs tuned baselines, AlgoPerf-style (Kasimbeg et al. 2025).

"How far away are truly hyperparameter-free learning algorithms?" (Kasimbeg,
Roulet, Agarwal, Medapati, Pedregosa, Agarwala & Dahl 2025, arXiv:2505.24005)
scores learning-rate-free methods under AlgoPerf's self-tuning ruleset: one
fixed configuration for every workload, no per-workload sweep. Here each
self-tuning learner (`LEARNERS`) trains once per workload with the same
configuration; the externally tuned baselines (AdamW and NAdamW, warmup +
cosine) get a small learning-rate sweep per workload.

Scoring (AlgoPerf, Dahl et al. 2023, arXiv:2306.07179, Sec. 4): a run's time
is the first evaluation step whose validation metric reaches the workload's
target (a run that never does, or diverges, has time infinity); a swept
baseline's time is its fastest trial (`optimizer_benchmark.time_to_target`).
Per workload r = time / best time over all learners; the performance profile
rho(tau) is the fraction of workloads with r <= tau, and the score is its area
over [1, 4] divided by 3 (`optimizer_benchmark.performance_profile`). Time is
counted in steps (every learner takes one gradient per step; wall time on a
shared CPU is too noisy to score). Targets come from the tuned baselines: the
best validation metric any tuned trial reaches, m_best, pulled toward the
metric at initialization m_0 by `target_fraction` f: target = m_0 + f (m_best -
m_0) (AlgoPerf's rule is f = 1; see the config for the value used).

Workloads (three kinds): an MLP on MNIST-1D, a small CNN (`models.SmallCNN`)
on sklearn digits, and in-context linear regression with a small GPT-2-style
transformer (`jaxlab.icl`). Validation metric: accuracy (classification) and
minus the squared error / d over all prompt positions (ICL), so higher is
better everywhere.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import optimizer_benchmark  # noqa: E402
from jaxlab import data, models, optim, train  # noqa: E402
from jaxlab.icl import tasks, training  # noqa: E402
from jaxlab.models.transformer import ICLTransformer  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

WORKLOADS = ("mnist1d_mlp", "digits_cnn", "icl_linreg")

# AlgoPerf's self-tuning NAdamW baseline (its qualification baseline
# `self_tuning/jax_nadamw_full_budget.py`): one configuration for every
# workload, linear warmup over 2% of the step budget, then cosine decay to 0.
ALGOPERF_NADAMW = dict(learning_rate=1.7486387539278373e-3, b1=1.0 - 0.06733926164,
                       b2=0.9955159689799007, weight_decay=0.08121616522670176)
ALGOPERF_WARMUP = 0.02

# label -> (registry name, fixed hyperparameters, learning-rate schedule). The
# learning-rate-free learners run at optim.get(name) (their published defaults,
# learning_rate = 1.0 multiplies the step they estimate); "warmup_cosine" puts
# AlgoPerf's 2% warmup + cosine decay on that multiplier (what the Prodigy,
# D-Adaptation and Mechanic papers pair them with), the other arms are constant.
LEARNERS = {
    "prodigy": ("prodigy", {}, "constant"),
    "dog": ("dog", {}, "constant"),
    "dowg": ("dowg", {}, "constant"),
    "mechanic": ("mechanic", {}, "constant"),
    "cocob": ("cocob", {}, "constant"),
    "dadapt_adamw": ("dadapt_adamw", {}, "constant"),
    # optax's (and the reference implementation's) defaults: lr 0.0025, betas (0.9, 0.999).
    "schedule_free_adamw": ("schedule_free_adamw", {}, "constant"),
    # What a user gets out of the box (PyTorch's AdamW defaults).
    "adamw_default": ("adamw", dict(learning_rate=1e-3, weight_decay=1e-2), "constant"),
    "nadamw_algoperf": ("nadamw", ALGOPERF_NADAMW, "warmup_cosine"),
    "prodigy_cosine": ("prodigy", {}, "warmup_cosine"),
    "dadapt_adamw_cosine": ("dadapt_adamw", {}, "warmup_cosine"),
    "mechanic_cosine": ("mechanic", {}, "warmup_cosine"),
}
# The externally tuned baselines: the learning rate is swept per workload
# (config.tuned.learning_rates), everything else fixed, warmup + cosine.
TUNED = {"adamw": ("adamw", dict(weight_decay=1e-2)),
         "nadamw": ("nadamw", {k: v for k, v in ALGOPERF_NADAMW.items() if k != "learning_rate"})}


def validate(config) -> None:
  for label in config.learners:
    if label not in LEARNERS:
      raise ValueError(f"config key 'learners': {label!r} is not a self-tuning learner; "
                       f"allowed: {list(LEARNERS)}")
  if len(set(config.learners)) != len(config.learners):
    raise ValueError(f"config key 'learners': {config.learners!r} repeats a learner")
  if not config.tuned.optimizers:
    raise ValueError("config key 'tuned.optimizers': () ; allowed: a non-empty tuple of "
                     f"{list(TUNED)} (the targets come from the tuned baselines)")
  for name in config.tuned.optimizers:
    if name not in TUNED:
      raise ValueError(f"config key 'tuned.optimizers': {name!r}; allowed: {list(TUNED)}")
  lrs = config.tuned.learning_rates
  if not lrs or min(lrs) <= 0:
    raise ValueError(f"config key 'tuned.learning_rates': {lrs!r}; allowed: a non-empty tuple "
                     "of numbers > 0")
  if not 0 < config.target_fraction <= 1:
    raise ValueError(f"config key 'target_fraction': {config.target_fraction!r}; allowed: "
                     "0 < f <= 1 (1 = AlgoPerf's target, the tuned baselines' best)")
  if not config.close_ratio >= 1:
    raise ValueError(f"config key 'close_ratio': {config.close_ratio!r}; allowed: a number >= 1")
  for w in WORKLOADS:
    for key in ("num_steps", "eval_every_steps", "batch_size"):
      checks.positive(config, f"{w}.{key}")
    steps, every = config[w].num_steps, config[w].eval_every_steps
    if steps % every:
      raise ValueError(f"config key '{w}.eval_every_steps': {every} does not divide "
                       f"{w}.num_steps={steps}; allowed: a divisor (the last step is evaluated)")
    checks.divisible_by_devices(config, f"{w}.batch_size")
  checks.positive_sizes(config, "mnist1d_mlp.hidden_sizes")
  checks.mnist1d_samples(config, "mnist1d_mlp", "mnist1d_mlp.batch_size")
  checks.positive_sizes(config, "digits_cnn.features")
  if config.digits_cnn.batch_size > 1437:
    raise ValueError(f"config key 'digits_cnn.batch_size': {config.digits_cnn.batch_size}; "
                     "allowed: at most the 1,437 training images of sklearn digits")
  icl = config.icl_linreg
  for key in ("dim", "n_points", "num_layers", "num_heads", "width", "eval_prompts"):
    checks.positive(config, f"icl_linreg.{key}")
  if icl.width % icl.num_heads:
    raise ValueError(f"config key 'icl_linreg.width': {icl.width} is not divisible by "
                     f"icl_linreg.num_heads={icl.num_heads}")
  mesh_lib.check_config(config, tuple(f"{w}.batch_size" for w in WORKLOADS))


# ---------------------------------------------------------------- workloads


class Workload:
  """What a learner needs: loss, initial params, batches, budget and a validation metric."""

  def __init__(self, name, loss_fn, params, batches, metric_fn, num_steps, eval_every, metric):
    self.name, self.loss_fn, self.params, self.batches = name, loss_fn, params, batches
    self.metric_fn = jax.jit(metric_fn)  # params -> scalar, higher is better
    self.num_steps, self.eval_every, self.metric = num_steps, eval_every, metric


def mnist1d_mlp(config, seed: int) -> Workload:
  c = config.mnist1d_mlp
  ds = data.mnist1d(c.num_samples, c.data_seed)
  model = models.mlp(ds.input_dim, c.hidden_sizes, ds.num_classes)
  x, y = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  return Workload("mnist1d_mlp", recipes.classification_loss(model.apply),
                  model.init(jax.random.key(seed)),
                  data.Batches({"x": ds.x_train, "y": ds.y_train}, c.batch_size, seed=seed),
                  lambda p: jnp.mean(model.apply(p, x)[0].argmax(-1) == y),
                  c.num_steps, c.eval_every_steps, "val accuracy")


def digits_cnn(config, seed: int) -> Workload:
  c = config.digits_cnn
  ds = data.digits(seed=0)  # one fixed split; the seed moves init and batch order
  img = lambda a: a.reshape(-1, 8, 8, 1)  # noqa: E731
  # No BatchNorm or dropout: schedule-free AdamW is evaluated at its averaged
  # point, where running statistics gathered at the training point do not belong.
  module = models.SmallCNN(features=tuple(c.features), num_classes=10, dropout_rate=0.0,
                           batch_norm=False)
  params, _ = models.linen_init(module, jax.random.key(seed), jnp.asarray(img(ds.x_train[:1])))
  x, y = jnp.asarray(img(ds.x_test)), jnp.asarray(ds.y_test)
  return Workload("digits_cnn", models.linen_classifier_loss(module), params,
                  data.Batches({"x": img(ds.x_train), "y": ds.y_train}, c.batch_size, seed=seed),
                  lambda p: jnp.mean(module.apply({"params": p}, x).argmax(-1) == y),
                  c.num_steps, c.eval_every_steps, "val accuracy")


def icl_linreg(config, seed: int) -> Workload:
  c = config.icl_linreg
  model = ICLTransformer(num_layers=c.num_layers, num_heads=c.num_heads, width=c.width,
                         max_points=c.n_points)
  k_init, k_eval = jax.random.split(jax.random.key(seed))
  params = model.init(k_init, jnp.zeros((1, c.n_points, c.dim)), jnp.zeros((1, c.n_points)))
  ev = tasks.sample_prompts(k_eval, c.eval_prompts, c.n_points, c.dim)
  batches = training.PromptBatches(seed + 1, c.batch_size, c.n_points, c.dim)
  # Squared error / d averaged over every prompt position (Garg et al. 2022's
  # reporting), negated so that higher is better.
  metric = lambda p: -jnp.mean((model.apply(p, ev.xs, ev.ys)[0] - ev.ys) ** 2) / c.dim  # noqa: E731
  return Workload("icl_linreg", training.regression_loss(model.apply), params, batches, metric,
                  c.num_steps, c.eval_every_steps, "-(val squared error / d)")


BUILD = {"mnist1d_mlp": mnist1d_mlp, "digits_cnn": digits_cnn, "icl_linreg": icl_linreg}


def param_shapes(config) -> dict:
  """Each workload's parameter shapes (`jax.eval_shape`: no data, nothing compiled)."""
  c = config.mnist1d_mlp
  dim, classes = checks.MNIST1D_DIMS
  mlp = models.mlp(dim, c.hidden_sizes, classes)
  cnn = models.SmallCNN(features=tuple(config.digits_cnn.features), num_classes=10,
                        dropout_rate=0.0, batch_norm=False)
  i = config.icl_linreg
  icl = ICLTransformer(num_layers=i.num_layers, num_heads=i.num_heads, width=i.width,
                       max_points=i.n_points)
  return {
      "mnist1d_mlp.hidden_sizes": jax.eval_shape(lambda: mlp.init(jax.random.key(0))),
      "digits_cnn.features": jax.eval_shape(
          lambda: cnn.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]),
      "icl_linreg.width": jax.eval_shape(
          lambda: icl.init(jax.random.key(0), jnp.zeros((1, i.n_points, i.dim)), jnp.zeros((1, i.n_points)))),
  }


# ---------------------------------------------------------------- runs


def _schedule(kind: str, value: float, num_steps: int):
  if kind == "constant":
    return value
  warmup = max(1, int(ALGOPERF_WARMUP * num_steps))
  return recipes.make_schedule("cosine", value, num_steps, warmup)


def build_learner(label: str, num_steps: int) -> optax.GradientTransformation:
  """The fixed configuration `label` (see `LEARNERS`) for a budget of `num_steps`."""
  name, hparams, kind = LEARNERS[label]
  hparams = dict(hparams)
  lr = hparams.pop("learning_rate", None)
  if kind != "constant":
    hparams["learning_rate"] = _schedule(kind, 1.0 if lr is None else lr, num_steps)
  elif lr is not None:
    hparams["learning_rate"] = lr
  return optim.get(name, **hparams)


def build_tuned(name: str, lr: float, num_steps: int) -> optax.GradientTransformation:
  opt, hparams = TUNED[name]
  return optim.get(opt, learning_rate=_schedule("warmup_cosine", lr, num_steps), **hparams)


class _EvalHook:
  """Validation metric every `every_steps` steps, at the point the learner evaluates
  (schedule-free AdamW: its average x, `optax.contrib.schedule_free_eval_params`)."""

  def __init__(self, workload: Workload, schedule_free: bool):
    self.every_steps, self.workload, self.schedule_free = workload.eval_every, workload, schedule_free

  def __call__(self, step, state):
    params = state.params
    if self.schedule_free:
      params = optax.contrib.schedule_free_eval_params(state.opt_state, params)
    return {"val_metric": self.workload.metric_fn(params)}


def run_one(w: Workload, tag: str, tx, schedule_free: bool, lr, workdir: str, seed: int,
            progress: bool, mesh=None) -> dict:
  """One training run, recorded in `workdir/runs/<workload>/<tag>`; resumed whole."""
  rundir = os.path.join(workdir, "runs", w.name, tag)
  done = os.path.join(rundir, "run_summary.json")
  if os.path.exists(done):
    return io.read_json(done)
  start = time.time()
  init_metric = float(w.metric_fn(w.params))
  try:
    result = train.train(w.loss_fn, w.params, tx, w.batches, num_steps=w.num_steps,
                         key=jax.random.key(seed + 2), workdir=rundir, log_every=w.eval_every,
                         hooks=[_EvalHook(w, schedule_free)], progress=progress,
                         desc=f"{w.name}/{tag}", mesh=mesh)
    rows = result.history
    out = {"val_curve": [(r["step"], r["val_metric"]) for r in rows],
           "loss_curve": [(r["step"], r["loss"]) for r in rows]}
  except train.NonFiniteError as e:
    # A diverged run never reaches the target (AlgoPerf); the study goes on.
    out = {"val_curve": [], "loss_curve": [], "diverged": str(e)}
  # The metric at initialization stays out of val_curve: step 0 is no time to target.
  out.update(tag=tag, lr=lr, init_metric=init_metric, wall_time_s=time.time() - start)
  io.write_json(done, out)
  return out


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  runs: dict[str, dict] = {}  # workload -> {"learners": {label: run}, "tuned": {name: [runs]}}
  mesh = mesh_lib.from_config(config)  # every run trains on it (FSDP with mesh.fsdp > 1)
  for wname in WORKLOADS:
    w = BUILD[wname](config, config.seed)
    fixed = {}
    for label in config.learners:
      tx = build_learner(label, w.num_steps)
      fixed[label] = run_one(w, label, tx, LEARNERS[label][0] == "schedule_free_adamw", None,
                             workdir, config.seed, config.progress, mesh)
    tuned = {name: [run_one(w, f"{name}_tuned_lr{lr:.3g}", build_tuned(name, lr, w.num_steps),
                            False, lr, workdir, config.seed, config.progress, mesh)
                    for lr in config.tuned.learning_rates]
             for name in config.tuned.optimizers}
    runs[wname] = {"learners": fixed, "tuned": tuned, "metric": w.metric,
                   "num_steps": w.num_steps}
  summary = score(runs, config)
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(runs, summary, config, workdir)
  return summary


def score(runs: dict, config) -> dict:
  """Targets from the tuned baselines, times to target, performance profile and score."""
  labels = list(config.learners) + [f"{n}_tuned" for n in config.tuned.optimizers]
  targets, times, best_lr = {}, {}, {}
  for wname, r in runs.items():
    trials = [t for ts in r["tuned"].values() for t in ts]
    m0 = trials[0]["init_metric"]  # the same initial params for every run
    evals = [m for t in trials for _, m in t["val_curve"]]
    if not evals:
      raise RuntimeError(f"workload {wname}: every tuned trial diverged, so there is no target; "
                         "move config key 'tuned.learning_rates' lower")
    m_best = max(evals)
    # min(): a sweep that never beats initialization sets its best as the target,
    # so the target is always reached by the tuned baseline.
    target = min(m_best, m0 + config.target_fraction * (m_best - m0))
    targets[wname] = {"target": target, "tuned_best": m_best, "init": m0}
    for label, run in r["learners"].items():
      times[(label, wname)] = optimizer_benchmark.time_to_target([run], target)
    for name, ts in r["tuned"].items():
      times[(f"{name}_tuned", wname)] = optimizer_benchmark.time_to_target(ts, target)
      best_lr[f"{name}_tuned/{wname}"] = times[(f"{name}_tuned", wname)]["lr"]
  profile = optimizer_benchmark.performance_profile(times, labels, list(runs))
  # Close to a tuned baseline: reaches the target on every workload within
  # close_ratio x the fastest tuned baseline's steps there.
  ratio_to_tuned = {}
  for label in config.learners:
    for wname in runs:
      t = times[(label, wname)]["steps_to_target"]
      tuned = [times[(f"{n}_tuned", wname)]["steps_to_target"] for n in config.tuned.optimizers]
      tuned = [x for x in tuned if x is not None]
      ratio_to_tuned[f"{label}/{wname}"] = (None if t is None or not tuned else t / min(tuned))
  close = [label for label in config.learners
           if all(ratio_to_tuned[f"{label}/{w}"] is not None
                  and ratio_to_tuned[f"{label}/{w}"] <= config.close_ratio for w in runs)]
  final = {f"{label}/{w}": (r["learners"][label]["val_curve"] or [(0, None)])[-1][1]
           for w, r in runs.items() for label in config.learners}
  return {
      "targets": targets,
      "steps_to_target": {f"{lab}/{w}": t["steps_to_target"] for (lab, w), t in times.items()},
      "tuned_fastest_lr": best_lr,
      "ratio_to_tuned": ratio_to_tuned,
      "final_val_metric": final,
      "diverged": [f"{w}/{t['tag']}" for w, r in runs.items()
                   for t in list(r["learners"].values()) + [x for ts in r["tuned"].values()
                                                            for x in ts] if "diverged" in t],
      "algoperf_score": profile["score"],
      "profile": {"taus": profile["taus"], "rho": profile["rho"]},
      "close_to_tuned": close,
      "num_close_to_tuned": len(close),
      "num_self_tuning": len(config.learners),
      "target_fraction": config.target_fraction,
      "close_ratio": config.close_ratio,
  }


# ---------------------------------------------------------------- plots


def _style(i: int) -> dict:
  return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[i // 10 % 3]}


def plot(runs: dict, summary: dict, config, workdir: str) -> None:
  labels = list(config.learners) + [f"{n}_tuned" for n in config.tuned.optimizers]
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  prof = summary["profile"]
  for i, label in enumerate(labels):
    ax.step(prof["taus"], prof["rho"][label], where="post",
            label=f"{label} ({summary['algoperf_score'][label]:.2f})", **_style(i))
  ax.set(xlabel="τ (steps to target / best steps)", ylabel="fraction of workloads",
         title=f"performance profile over {len(runs)} workloads (score in legend)",
         ylim=(-0.03, 1.03))
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  io.save_figure(fig, workdir, "performance_profile")

  fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
  handles = {}
  for ax, (wname, r) in zip(axes[0], runs.items(), strict=True):
    icl = wname == "icl_linreg"
    curves = dict(r["learners"])
    for name, ts in r["tuned"].items():  # the sweep's fastest trial (else its best)
      lr = summary["tuned_fastest_lr"][f"{name}_tuned/{wname}"]
      curves[f"{name}_tuned"] = next((t for t in ts if t["lr"] == lr), None) or max(
          ts, key=lambda t: max([m for _, m in t["val_curve"]] + [t["init_metric"]]))
    for i, label in enumerate(labels):
      run = curves[label]
      steps, vals = zip(*([(0, run["init_metric"])] + run["val_curve"]), strict=True)
      vals = -np.asarray(vals) if icl else np.asarray(vals)
      (h,) = ax.plot(steps, vals, marker=".", ms=3, **_style(i))
      handles[label] = h
    target = summary["targets"][wname]["target"]
    ax.axhline(-target if icl else target, color="k", lw=0.8, ls="--")
    ax.set(title=f"{wname} (dashed: target)", xlabel="step",
           ylabel="val squared error / d" if icl else "val accuracy")
    if icl:
      ax.set_yscale("log")
    else:
      ax.set_ylim(max(0.0, summary["targets"][wname]["init"] - 0.05), 1.0)
  fig.legend(list(handles.values()), list(handles), loc="center left",
             bbox_to_anchor=(1.0, 0.5), fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, workdir, "curves")
