"""Study: an MLP on MNIST-1D with any registered optimizer."""
from __future__ import annotations

import os
import time

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, train  # noqa: E402
from jaxlab.models import precision  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402


def validate(config) -> None:
  checks.positive(config, "data.num_samples")
  checks.choice(config, "model.parametrization", models.PARAMETRIZATIONS)
  checks.choice(config, "model.activation", models.ACTIVATIONS)
  checks.positive_sizes(config, "model.hidden_sizes")
  precision.check_config(config, "model.compute_dtype")
  recipes.check_optimizer_config(config.optimizer)
  for key in ("num_steps", "batch_size", "log_every_steps"):
    checks.positive(config, f"train.{key}")
  for key in ("eval_every_steps", "checkpoint_every_steps"):
    checks.positive(config, f"train.{key}", allow_zero=True)
  checks.mnist1d_samples(config, "data", "train.batch_size")
  checks.warmup_below(config, "optimizer.warmup_steps", "train.num_steps")
  checks.divisible_by_devices(config, "train.batch_size")
  mesh_lib.check_config(config)
  nan_step = config.train.inject_nan_at_step
  if nan_step != -1 and nan_step < 1:
    raise ValueError(f"config key 'train.inject_nan_at_step': {nan_step!r}; allowed: -1 (off) or "
                     "an update index ≥ 1 (updates are counted from 1)")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the model main builds (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  m = config.model
  return {"model.hidden_sizes": checks.mlp_shapes(
      dim, m.hidden_sizes, classes, parametrization=m.parametrization, normalize=m.normalize,
      activation=m.activation)}


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes,
                     parametrization=config.model.parametrization,
                     normalize=config.model.normalize, activation=config.model.activation,
                     compute_dtype=config.model.compute_dtype)
  key_init, key_train = jax.random.split(jax.random.key(config.seed))
  tx, schedule = recipes.build_optimizer(config.optimizer, config.train.num_steps)
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, config.train.batch_size,
                         seed=config.seed)
  test_eval = recipes.classification_eval(model.apply, ds.x_test, ds.y_test, "test")
  train_eval = recipes.classification_eval(model.apply, ds.x_train, ds.y_train, "train")
  nan_step = config.train.inject_nan_at_step
  result = train.train(
      recipes.classification_loss(model.apply), model.init(key_init), tx, batches,
      num_steps=config.train.num_steps, key=key_train, workdir=workdir,
      log_every=config.train.log_every_steps, eval_every=config.train.eval_every_steps,
      eval_fn=lambda p: {**test_eval(p), **train_eval(p)},
      checkpoint_every=config.train.checkpoint_every_steps, lr_schedule=schedule,
      progress=config.train.progress, inject_nan_at_step=nan_step if nan_step >= 0 else None,
      desc="mlp_mnist1d", mesh=mesh_lib.from_config(config))
  final = {k: float(v) for k, v in {**test_eval(result.state.params),
                                     **train_eval(result.state.params)}.items()}
  evals = [r for r in result.history if "test_accuracy" in r]
  summary = {
      "final_train_loss": final["train_loss"],
      "final_train_accuracy": final["train_accuracy"],
      "test_loss": final["test_loss"],
      "test_accuracy": final["test_accuracy"],
      "best_test_accuracy": max([r["test_accuracy"] for r in evals] + [final["test_accuracy"]]),
      "num_steps": int(result.state.step),
      "optimizer": config.optimizer.name,
      "wall_time_s": time.time() - start,
  }
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot_curves(result.history, workdir)
  return summary


def plot_curves(history: list[dict], workdir: str) -> None:
  steps = [r["step"] for r in history]
  evals = [r for r in history if "test_accuracy" in r]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(steps, [r["loss"] for r in history], label="train (batch)")
  ax.plot([r["step"] for r in evals], [r["test_loss"] for r in evals], "o-", label="test")
  ax.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="MLP on MNIST-1D: loss")
  ax.legend()
  io.save_figure(fig, workdir, "loss")
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([r["step"] for r in evals], [r["train_accuracy"] for r in evals], "o-", label="train")
  ax.plot([r["step"] for r in evals], [r["test_accuracy"] for r in evals], "o-", label="test")
  ax.set(xlabel="step", ylabel="accuracy", title="MLP on MNIST-1D: accuracy")
  ax.legend()
  io.save_figure(fig, workdir, "accuracy")
