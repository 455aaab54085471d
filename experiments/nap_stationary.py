"""Study: NaP with an explicit learning-rate schedule matches a normalized baseline on MNIST-1D.

Arms (each seed and arm in its own sub-workdir `seed_<s>/<arm>`): `baseline`
(LayerNorm MLP, constant LR, no projection), `nap` (projection, same constant
LR), `nap_schedule` (projection + the explicit schedule rebuilt from the
baseline's norms logged by `jaxlab.nap.norms_hook`: per projected group with
`jaxlab.nap.scale_by_implicit_schedule`, or one global
`jaxlab.nap.implicit_schedule`). The baseline always runs first, since the
schedule is derived from it. `num_seeds` seeds (config.seed, config.seed + 1,
...) each draw the init and the batch order; the summary averages the test
accuracies and the paired differences to the baseline over them.
"""
from __future__ import annotations

import os
import time

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, nap, optim, train  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

ARMS = ("baseline", "nap", "nap_schedule")


def validate(config) -> None:
  checks.positive(config, "data.num_samples")
  checks.positive_sizes(config, "model.hidden_sizes")
  checks.choice(config, "optimizer.name", optim.NAMES)
  checks.positive(config, "optimizer.learning_rate")
  bad = [a for a in config.arms if a not in ARMS]
  if bad or not config.arms:
    raise ValueError(f"config key 'arms': {tuple(config.arms)!r}; allowed: a non-empty tuple of "
                     f"{ARMS}")
  checks.positive(config, "schedule.power")
  checks.positive(config, "num_seeds")
  for key in ("num_steps", "batch_size", "log_every_steps", "eval_every_steps"):
    checks.positive(config, f"train.{key}")
  checks.positive(config, "train.checkpoint_every_steps", allow_zero=True)
  checks.mnist1d_samples(config, "data", "train.batch_size")
  checks.divisible_by_devices(config, "train.batch_size")
  mesh_lib.check_config(config)
  models.precision.check_config(config, "model.compute_dtype")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the model each arm builds (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  return {"model.hidden_sizes": checks.mlp_shapes(dim, config.model.hidden_sizes, classes,
                                                  normalize=True)}


def run_arm(config, arm, ds, schedule, scale, workdir, seed):
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes, normalize=True,
                     compute_dtype=config.model.compute_dtype)
  key_init, key_train = jax.random.split(jax.random.key(seed))
  params = model.init(key_init)
  base = optim.get(config.optimizer.name, learning_rate=schedule)
  if arm == "baseline":
    tx = base
  else:  # per-group implicit schedule (if any) between the optimizer and the projection
    tx = optax.chain(base, *([scale] if scale is not None else []), nap.nap_project())
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, config.train.batch_size,
                         seed=seed)
  test_eval = recipes.classification_eval(model.apply, ds.x_test, ds.y_test, "test")
  train_eval = recipes.classification_eval(model.apply, ds.x_train, ds.y_train, "train")
  hook = nap.norms_hook(config.train.eval_every_steps, schedule, power=config.schedule.power,
                        apply_fn=model.apply, probe_x=ds.x_train[:1000])
  start = time.time()
  result = train.train(
      recipes.classification_loss(model.apply), params, tx, batches,
      num_steps=config.train.num_steps, key=key_train, workdir=workdir,
      log_every=config.train.log_every_steps, eval_every=config.train.eval_every_steps,
      eval_fn=lambda p: {**test_eval(p), **train_eval(p)},
      checkpoint_every=config.train.checkpoint_every_steps, hooks=(hook,),
      lr_schedule=schedule if callable(schedule) else None, progress=config.train.progress,
      desc=f"nap_stationary/{arm}", mesh=mesh_lib.from_config(config))
  final = {k: float(v) for k, v in {**test_eval(result.state.params),
                                     **train_eval(result.state.params)}.items()}
  return params, result.history, {**final, "wall_time_s": time.time() - start}


def run_seed(config, seed: int, ds, workdir: str) -> tuple[dict, dict, dict]:
  """(results per arm, histories per arm, init norms ρ_g) of one seed."""
  lr = config.optimizer.learning_rate
  arms = ["baseline"] + [a for a in config.arms if a != "baseline"]
  results, histories, init = {}, {}, None
  for arm in arms:
    schedule, scale = lr, None
    if arm == "nap_schedule":
      groups = sorted(init)
      steps, norms = nap.norms_from_metrics(histories["baseline"], groups)
      if config.schedule.per_group:
        scale = nap.scale_by_implicit_schedule(steps, norms, init, power=config.schedule.power)
      else:
        schedule = nap.implicit_schedule(steps, norms, [init[g] for g in groups], base_lr=lr,
                                         power=config.schedule.power)
    params, history, final = run_arm(config, arm, ds, schedule, scale,
                                     os.path.join(workdir, f"seed_{seed}", arm), seed)
    if init is None:  # the groups NaP projects, and their radii ρ_g
      init = {g: float(v) for g, v in nap.group_norms(params, nap.nap_mask).items()}
    results[arm], histories[arm] = final, history
  return results, histories, init


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  seeds = [config.seed + i for i in range(config.num_seeds)]
  per_seed = [run_seed(config, s, ds, workdir) for s in seeds]
  results, histories, init = per_seed[0]
  groups = sorted(init)
  power = config.schedule.power
  arms = {}
  for arm in results:
    runs = [r[arm] for r, _, _ in per_seed]
    arms[arm] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    arms[arm]["test_accuracy_per_seed"] = [r["test_accuracy"] for r in runs]
  last = [h["baseline"][-1] for _, h, _ in per_seed]
  summary = {
      "arms": arms,
      "seeds": seeds,
      "projected_groups": groups,
      "init_norms_per_seed": [i for _, _, i in per_seed],
      "baseline_norm_growth": {g: float(np.mean([r[f"norm/{g}"] / i[g] for r, (_, _, i)
                                                 in zip(last, per_seed, strict=True)]))
                               for g in groups},
      "baseline_elr_ratio_final": float(np.mean(
          [(i[g] / r[f"norm/{g}"]) ** power for r, (_, _, i) in zip(last, per_seed, strict=True)
           for g in groups])),
      "wall_time_s": time.time() - start,
  }
  for arm in arms:
    if arm != "baseline":
      diff = [100 * (r[arm]["test_accuracy"] - r["baseline"]["test_accuracy"])
              for r, _, _ in per_seed]
      summary[f"{arm}_minus_baseline_test_points"] = float(np.mean(diff))
      summary[f"{arm}_minus_baseline_test_points_per_seed"] = diff
  if "nap_schedule" in histories:
    summary["schedule_final_lr"] = histories["nap_schedule"][-1]["lr"]
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(histories, init, groups, workdir)
  return summary


def plot(histories, init, groups, workdir):
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
  for arm, rows in histories.items():
    ev = [r for r in rows if "test_accuracy" in r]
    axes[0].plot([r["step"] for r in ev], [r["test_accuracy"] for r in ev], label=arm)
    axes[1].plot([r["step"] for r in ev],
                 [np.mean([r[f"norm/{g}"] / init[g] for g in groups]) for r in ev], label=arm)
    axes[2].plot([r["step"] for r in ev], [r["lr"] for r in ev], label=arm)
  axes[0].set(xlabel="step", ylabel="test accuracy", title="MNIST-1D, LayerNorm MLP (first seed)")
  axes[1].set(xlabel="step", ylabel="mean ‖θ_g‖/ρ_g (projected groups)")
  axes[2].set(xlabel="step", ylabel="learning rate η_t", yscale="log")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, workdir, "stationary")
