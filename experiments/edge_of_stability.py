"""Study: progressive sharpening and the edge of stability under full-batch GD.

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks
Typically Occurs at the Edge of Stability", ICLR 2021, arXiv:2103.00065.
For each step size η, full-batch GD on a fixed training subset; the sharpness
λ_max of the full-data-set Hessian first rises (progressive sharpening) and
then hovers at the stability threshold 2/η (the maximal stable curvature of
GD on a quadratic, Cohen et al. eq. 1), while the loss keeps decreasing over
long horizons but non-monotonically.
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
from matplotlib import ticker  # noqa: E402

from jaxlab import data, models, spectral, train  # noqa: E402
from jaxlab.spectral import studies  # noqa: E402
from jaxlab.train import checks, io  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

LOSSES = ("mse", "cross_entropy")


def validate(config) -> None:
  checks.positive(config, "data.num_train")
  checks.positive(config, "data.num_samples")
  checks.train_split(config, "data")
  checks.choice(config, "model.activation", models.ACTIVATIONS)
  checks.choice(config, "model.parametrization", models.PARAMETRIZATIONS)
  checks.positive_sizes(config, "model.hidden_sizes")
  checks.choice(config, "loss", LOSSES)
  mesh_lib.check_config(config, ("data.num_train",))  # the full batch
  models.precision.check_config(config, "model.compute_dtype")
  lrs = tuple(config.learning_rates)
  if not lrs or min(lrs) <= 0:
    raise ValueError(f"config key 'learning_rates': {lrs!r}; allowed: a non-empty tuple of "
                     "numbers > 0")
  for key in ("num_steps", "log_every_steps", "sharpness_every_steps"):
    checks.positive(config, f"train.{key}")
  if config.train.num_steps < 2 * config.train.sharpness_every_steps:
    raise ValueError(f"config key 'train.num_steps': {config.train.num_steps}; allowed: at least "
                     f"2 × train.sharpness_every_steps ({config.train.sharpness_every_steps})")
  checks.positive(config, "sharpness.lanczos_iters")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the model main builds (see checks.param_memory)."""
  dim, classes = checks.MNIST1D_DIMS
  m = config.model
  return {"model.hidden_sizes": checks.mlp_shapes(dim, m.hidden_sizes, classes,
                                                  parametrization=m.parametrization,
                                                  activation=m.activation)}


def full_batch_losses(apply_fn, kind: str, num_classes: int):
  """(train-loop loss `(p, batch, key) -> (loss, aux)`, probe loss `(p, batch) -> loss`).

  mse is Cohen et al.'s square loss ½‖f(x) − e_y‖² averaged over examples.
  """

  def probe(params, batch):
    out, _ = apply_fn(params, batch["x"])
    if kind == "mse":
      return 0.5 * jnp.mean(jnp.sum((out - jax.nn.one_hot(batch["y"], num_classes)) ** 2, -1))
    return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()

  def loss_fn(params, batch, key):
    del key
    out, _ = apply_fn(params, batch["x"])
    loss = probe(params, batch)
    return loss, {"accuracy": jnp.mean(out.argmax(-1) == batch["y"])}

  return loss_fn, probe


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  ds = ds.subset(config.data.num_train)
  model = models.mlp(ds.input_dim, config.model.hidden_sizes, ds.num_classes,
                     parametrization=config.model.parametrization,
                     activation=config.model.activation,
                     compute_dtype=config.model.compute_dtype)
  loss_fn, probe = full_batch_losses(model.apply, config.loss, ds.num_classes)
  batch = {"x": ds.x_train, "y": ds.y_train}
  params = model.init(jax.random.key(config.seed))
  summary: dict = {"arms": {}}
  curves = {}
  for lr in config.learning_rates:
    name = f"lr_{lr:g}"
    hook = spectral.sharpness_callback(probe, batch, config.train.sharpness_every_steps,
                                       num_iters=config.sharpness.lanczos_iters, seed=config.seed)
    result = train.train(loss_fn, params, optax.sgd(lr), data.full_batch(batch),
                         num_steps=config.train.num_steps,
                         key=jax.random.key(config.seed + 1),  # the loop donates its key
                         workdir=os.path.join(workdir, name),
                         log_every=config.train.log_every_steps, hooks=(hook,),
                         progress=config.train.progress, desc=f"eos {name}",
                         mesh=mesh_lib.from_config(config))
    rows = result.history
    s_steps = np.array([r["step"] for r in rows if "sharpness" in r])
    sharp = np.array([r["sharpness"] for r in rows if "sharpness" in r])
    l_steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    stats = studies.edge_of_stability_stats(s_steps, sharp, l_steps, loss, lr,
                                            config.train.num_steps)
    summary["arms"][name] = {"learning_rate": lr, **stats}
    curves[lr] = (s_steps, sharp, l_steps, loss)
  ratios = [a["median_sharpness_ratio_last_half"] for a in summary["arms"].values()]
  summary["median_ratios"] = ratios
  summary["all_ratios_in_0.95_1.05"] = bool(all(0.95 <= r <= 1.05 for r in ratios))
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(curves, workdir)
  return summary


def plot(curves: dict, workdir: str) -> None:
  fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, (lr, (s_steps, sharp, l_steps, loss)) in enumerate(sorted(curves.items())):
    color = f"C{i}"
    ax_l.plot(l_steps, loss, color=color, label=f"η = {lr:g}")
    ax_s.plot(s_steps, sharp, color=color, label=f"η = {lr:g}")
    ax_s.axhline(2.0 / lr, color=color, ls="--", lw=1)
  ax_l.set(xlabel="step", ylabel="train loss", yscale="log", title="full-batch GD: loss")
  ax_s.set(xlabel="step", ylabel="λ_max (Lanczos)", title="sharpness (dashed: 2/η)")
  for ax in (ax_l, ax_s):  # at most 6 step ticks: 16,000-step labels do not run together
    ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
  fig.legend(*ax_s.get_legend_handles_labels(), loc="lower center", ncol=len(curves))
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  io.save_figure(fig, workdir, "sharpness")
