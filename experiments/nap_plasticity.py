"""Study: plasticity over a sequence of random-label tasks — plain vs LayerNorm vs NaP vs weight decay.

Each arm trains one MLP through all tasks without resetting (its own
sub-workdir with metrics.jsonl and checkpoints). A hook evaluates the training
accuracy on the current task's full data every `eval_every_steps`; the
`jaxlab.nap.norms_hook` logs per-layer norms, the effective learning rate
η/‖θ_l‖^p and the dead-unit fraction. summary.json holds, per arm, the
end-of-task training accuracy, parameter-norm growth, effective-LR ratio and
dead units, plus the checks the repro test asserts.
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

from jaxlab import data, models, nap, optim, train  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

ARMS = ("plain", "norm", "nap", "wd")
NORMALIZED = {"plain": False, "norm": True, "nap": True, "wd": False}


def validate(config) -> None:
  checks.positive(config, "data.num_samples")
  checks.positive(config, "data.num_train")
  checks.mnist1d_samples(config, "data")
  if config.data.num_train > 0.8 * config.data.num_samples:
    raise ValueError(f"config key 'data.num_train': {config.data.num_train}; allowed: ≤ "
                     f"{int(0.8 * config.data.num_samples)} (the training split of "
                     f"data.num_samples={config.data.num_samples})")
  checks.choice(config, "tasks.kind", nap.tasks.KINDS)
  checks.positive(config, "tasks.num_tasks")
  checks.positive(config, "tasks.steps_per_task")
  checks.positive_sizes(config, "model.hidden_sizes")
  checks.choice(config, "optimizer.name", optim.NAMES)
  checks.positive(config, "optimizer.learning_rate")
  checks.positive(config, "optimizer.weight_decay", allow_zero=True)
  for key, arms in (("arms", config.arms), ("long_horizon.arms", config.long_horizon.arms)):
    bad = [a for a in arms if a not in ARMS]
    if bad or (key == "arms" and not arms):
      raise ValueError(f"config key {key!r}: {tuple(arms)!r}; allowed: a tuple of {ARMS}"
                       + (" (non-empty)" if key == "arms" else ""))
  checks.positive(config, "long_horizon.num_tasks")
  checks.positive(config, "long_horizon.learning_rate")
  checks.positive(config, "diagnostics.elr_power")
  for key in ("batch_size", "log_every_steps", "eval_every_steps"):
    checks.positive(config, f"train.{key}")
  checks.positive(config, "train.checkpoint_every_steps", allow_zero=True)
  if config.tasks.steps_per_task % config.train.eval_every_steps:
    raise ValueError(f"config key 'train.eval_every_steps': {config.train.eval_every_steps}; "
                     f"allowed: a divisor of tasks.steps_per_task={config.tasks.steps_per_task}")
  if config.train.batch_size > config.data.num_train:
    raise ValueError(f"config key 'train.batch_size': {config.train.batch_size}; allowed: ≤ "
                     f"data.num_train={config.data.num_train}")
  checks.divisible_by_devices(config, "train.batch_size")
  mesh_lib.check_config(config)
  models.precision.check_config(config, "model.compute_dtype")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the arms' largest model (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  return {"model.hidden_sizes": checks.mlp_shapes(dim, config.model.hidden_sizes, classes,
                                                  normalize=True)}


def build_tx(arm: str, name: str, learning_rate: float, weight_decay: float):
  """The arm's optimizer: base; base + NaP projection; base + decoupled weight decay."""
  base = optim.get(name, learning_rate=learning_rate)
  if arm == "nap":
    return optax.chain(base, nap.nap_project())
  if arm == "wd":
    # Decoupled decay θ ← θ − η·λ·θ after the base update (AdamW's form for any optimizer).
    return optax.chain(base, optax.add_decayed_weights(-learning_rate * weight_decay))
  return base


class TaskAccuracy:
  """Hook: accuracy and loss on the current task's full training data."""

  def __init__(self, every_steps: int, apply_fn, seq: nap.tasks.TaskSequence):
    self.every_steps, self.seq = every_steps, seq

    @jax.jit
    def evaluate(params, x, y):
      logits, _ = apply_fn(params, x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return jnp.mean(logits.argmax(-1) == y), loss

    self._eval = evaluate

  def __call__(self, step, state):
    k = self.seq.task_of(step - 1)  # the task the last update trained on
    x, y = self.seq.task(k)
    acc, loss = jax.device_get(self._eval(state.params, x, y))
    return {"task": k, "task_accuracy": float(acc), "task_loss": float(loss)}


def run_arm(config, arm: str, num_tasks: int, learning_rate: float, workdir: str,
            ds: data.Dataset) -> dict:
  seq = nap.tasks.TaskSequence(ds.x_train, ds.y_train, kind=config.tasks.kind,
                               num_tasks=num_tasks, steps_per_task=config.tasks.steps_per_task,
                               batch_size=config.train.batch_size, num_classes=ds.num_classes,
                               seed=config.seed)
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes,
                     normalize=NORMALIZED[arm], compute_dtype=config.model.compute_dtype)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  params = model.init(key_init)
  tx = build_tx(arm, config.optimizer.name, learning_rate, config.optimizer.weight_decay)
  every = config.train.eval_every_steps
  hooks = (TaskAccuracy(every, model.apply, seq),
           nap.norms_hook(every, learning_rate, power=config.diagnostics.elr_power,
                          apply_fn=model.apply, probe_x=ds.x_train))
  start = time.time()
  result = train.train(recipes.classification_loss(model.apply), params, tx, seq,
                       num_steps=seq.num_steps, key=key_train, workdir=workdir,
                       log_every=config.train.log_every_steps,
                       checkpoint_every=config.train.checkpoint_every_steps, hooks=hooks,
                       progress=config.train.progress, desc=f"nap_plasticity/{arm}",
                       mesh=mesh_lib.from_config(config))
  return summarize_arm(result.history, params, seq, learning_rate, config.diagnostics.elr_power,
                       time.time() - start)


def summarize_arm(history, init_params, seq, learning_rate, power, wall) -> dict:
  rows = [r for r in history if "task_accuracy" in r]
  ends = {r["task"]: r for r in rows if r["step"] % seq.steps_per_task == 0}
  tasks = sorted(ends)
  dense = sorted(k for k in init_params if k.startswith("dense_"))
  init = {g: float(v) for g, v in nap.group_norms(init_params, nap.layer_labels).items()}
  total0 = float(np.sqrt(sum(v ** 2 for v in init.values())))

  def total(r):
    return float(np.sqrt(sum(r[f"norm/{g}"] ** 2 for g in init)))

  elr0 = {g: learning_rate / init[g] ** power for g in dense}
  # The effective LR of the hidden layers (those that feed a normalization in the normalized arms).
  elr_ratio = [float(np.mean([r[f"elr/{g}"] / elr0[g] for g in dense])) for r in rows]
  acc = [ends[k]["task_accuracy"] for k in tasks]
  return {
      "end_of_task_train_accuracy": acc,
      "first_task_accuracy": acc[0],
      "last_task_accuracy": acc[-1],
      "mean_last3_accuracy": float(np.mean(acc[-3:])),
      "param_norm_init": total0,
      "param_norm_end_of_task": [total(ends[k]) for k in tasks],
      "param_norm_growth": total(ends[tasks[-1]]) / total0,
      "hidden_norm_growth": {g: ends[tasks[-1]][f"norm/{g}"] / init[g] for g in dense},
      "elr_ratio_end_of_task": [float(np.mean([ends[k][f"elr/{g}"] / elr0[g] for g in dense]))
                                for k in tasks],
      "elr_ratio_final": elr_ratio[-1],
      "elr_max_rel_change": float(np.max(np.abs(np.asarray(elr_ratio) - 1.0))),
      "dead_fraction_end_of_task": [ends[k]["dead/mean"] for k in tasks],
      "steps_to_90pct": steps_to(rows, seq, 0.9),
      "wall_time_s": wall,
  }


def steps_to(rows, seq, level: float) -> list:
  """Per task, the first evaluated step (counted within the task) with accuracy ≥ level."""
  out = []
  for k in range(seq.num_tasks):
    hit = [r["step"] - k * seq.steps_per_task for r in rows
           if r["task"] == k and r["task_accuracy"] >= level]
    out.append(min(hit) if hit else None)
  return out


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed).subset(
      num_train=config.data.num_train)
  lr = config.optimizer.learning_rate
  arms, histories = {}, {}
  for arm in config.arms:
    sub = os.path.join(workdir, arm)
    arms[arm] = run_arm(config, arm, config.tasks.num_tasks, lr, sub, ds)
    histories[arm] = io.read_jsonl(os.path.join(sub, "metrics.jsonl"))
  long = {}
  for arm in config.long_horizon.arms:
    sub = os.path.join(workdir, f"long_{arm}")
    long[arm] = run_arm(config, arm, config.long_horizon.num_tasks,
                        config.long_horizon.learning_rate, sub, ds)
    histories[f"long_{arm}"] = io.read_jsonl(os.path.join(sub, "metrics.jsonl"))
  checks = {**checks_of(arms), **checks_of({f"long_{k}": v for k, v in long.items()},
                                           config.tasks.steps_per_task)}
  summary = {"arms": arms, "long_horizon": long, "checks": checks,
             "kind": config.tasks.kind, "num_tasks": config.tasks.num_tasks,
             "steps_per_task": config.tasks.steps_per_task, "wall_time_s": time.time() - start}
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(histories, {**arms, **{f"long_{k}": v for k, v in long.items()}}, config, workdir)
  return summary


def checks_of(arms: dict, steps_per_task: int | None = None) -> dict:
  """The quantities the acceptance criteria are about (points = accuracy × 100).

  With `steps_per_task`, also the learning speed: the mean over the first and
  the last three tasks of the steps to reach 90% training accuracy (a task
  that never reaches it counts as steps_per_task).
  """
  out = {}
  for arm, s in arms.items():
    out[f"{arm}_drop_points"] = 100 * (s["first_task_accuracy"] - s["last_task_accuracy"])
    out[f"{arm}_elr_ratio_final"] = s["elr_ratio_final"]
    out[f"{arm}_elr_max_rel_change"] = s["elr_max_rel_change"]
    out[f"{arm}_norm_growth"] = s["param_norm_growth"]
    if steps_per_task is not None:
      hit = [steps_per_task if n is None else n for n in s["steps_to_90pct"]]
      out[f"{arm}_steps_to_90_first3"] = float(np.mean(hit[:3]))
      out[f"{arm}_steps_to_90_last3"] = float(np.mean(hit[-3:]))
  return out


def plot(histories: dict, arms: dict, config, workdir: str) -> None:
  steps_per_task = config.tasks.steps_per_task
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for arm, rows in histories.items():
    rows = [r for r in rows if "task_accuracy" in r]
    ax.plot([r["step"] / steps_per_task for r in rows], [r["task_accuracy"] for r in rows],
            label=arm, lw=1)
  ax.set(xlabel="task (steps / steps per task)", ylabel="train accuracy (current task)",
         title="Random-label tasks: learning curves")
  ax.legend(fontsize=7)
  io.save_figure(fig, workdir, "task_curves")

  fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
  for arm, s in arms.items():
    t = np.arange(1, len(s["end_of_task_train_accuracy"]) + 1)
    axes[0].plot(t, s["end_of_task_train_accuracy"], "o-", ms=3, label=arm)
    axes[1].plot(t, np.asarray(s["param_norm_end_of_task"]) / s["param_norm_init"], "o-", ms=3)
    axes[2].plot(t, s["elr_ratio_end_of_task"], "o-", ms=3)
    axes[3].plot(t, s["dead_fraction_end_of_task"], "o-", ms=3)
  axes[0].set(xlabel="task", ylabel="end-of-task train accuracy")
  axes[1].set(xlabel="task", ylabel="‖θ‖ / ‖θ₀‖", yscale="log")
  axes[2].set(xlabel="task", ylabel="effective LR / initial (hidden layers)", yscale="log")
  axes[3].set(xlabel="task", ylabel="dead ReLU fraction")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, workdir, "per_task")
