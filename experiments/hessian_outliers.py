"""Study: the Hessian of a trained MLP is a bulk near zero plus ~C outliers.

Sagun, Evci, Güney, Dauphin & Bottou, "Empirical Analysis of the Hessian of
Over-Parametrized Neural Networks", arXiv:1706.04454: after training, the
Hessian spectrum splits into a bulk concentrated near zero, set by the
architecture, and a few large outliers whose number tracks the number of
classes C, set by the data. Arms: Gaussian mixtures with C classes, MNIST-1D
(C = 10), and a width sweep at the largest C (the bulk moves with width, the
outliers much less). The outlier count uses the largest log-ratio gap of the
top Lanczos Ritz values (jaxlab.spectral.studies.count_outliers).
"""
from __future__ import annotations

import os
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from jaxlab import data, models, spectral, train  # noqa: E402
from jaxlab.spectral import studies  # noqa: E402
from jaxlab.train import checks, io, recipes  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402


def _positive_ints(config, key, value, lo=1):
  value = tuple(value)
  if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < lo for v in value):
    raise ValueError(f"config key {key!r}: {value!r}; allowed: a non-empty tuple of ints >= {lo}")


def validate(config) -> None:
  _positive_ints(config, "mixture.num_classes", config.mixture.num_classes, lo=2)
  for key in ("mixture.dim", "mixture.num_train", "mixture.separation", "mnist1d.num_samples",
              "mnist1d.num_train", "train.num_steps", "train.batch_size",
              "train.log_every_steps", "spectrum.lanczos_iters", "spectrum.top_k",
              "spectrum.hessian_examples", "spectrum.density_iters", "spectrum.density_draws"):
    checks.positive(config, key)
  mesh_lib.check_config(config)
  models.precision.check_config(config, "model.compute_dtype")
  if config.mixture.num_train < max(config.mixture.num_classes):
    raise ValueError(f"config key 'mixture.num_train': {config.mixture.num_train}; allowed: at "
                     f"least max(mixture.num_classes) = {max(config.mixture.num_classes)}")
  _positive_ints(config, "model.hidden_sizes", config.model.hidden_sizes)
  _positive_ints(config, "widths", config.widths)
  checks.choice(config, "model.activation", models.ACTIVATIONS)
  checks.choice(config, "model.parametrization", models.PARAMETRIZATIONS)
  recipes.check_optimizer_config(config.optimizer)
  checks.warmup_below(config, "optimizer.warmup_steps", "train.num_steps")
  if config.spectrum.top_k < 2 * max(config.mixture.num_classes) + 2:
    raise ValueError(f"config key 'spectrum.top_k': {config.spectrum.top_k}; allowed: at least "
                     f"2·max(C) + 2 = {2 * max(config.mixture.num_classes) + 2} so the bulk is seen")
  if config.spectrum.lanczos_iters < config.spectrum.top_k:
    raise ValueError(f"config key 'spectrum.lanczos_iters': {config.spectrum.lanczos_iters}; "
                     f"allowed: >= spectrum.top_k ({config.spectrum.top_k})")
  if config.mnist1d.enabled:
    checks.train_split(config, "mnist1d")
  for key, n in (("mixture.num_train", config.mixture.num_train),
                 ("mnist1d.num_train", config.mnist1d.num_train)):
    if config.train.batch_size > n:
      raise ValueError(f"config key 'train.batch_size': {config.train.batch_size}; allowed: at "
                       f"most {key} ({n})")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the largest model of each sweep (see checks.param_memory).

  The arms run one after another: the mixture and MNIST-1D arms at
  model.hidden_sizes, the width sweep at widths × len(model.hidden_sizes).
  """
  m, mix = config.model, config.mixture
  dim = max(mix.dim, checks.MNIST1D_DIMS[0] if config.mnist1d.enabled else 0)
  classes = max(max(mix.num_classes), checks.MNIST1D_DIMS[1] if config.mnist1d.enabled else 0)
  kw = dict(parametrization=m.parametrization, activation=m.activation)
  widest = (max(config.widths),) * len(m.hidden_sizes)
  return {"model.hidden_sizes": checks.mlp_shapes(dim, m.hidden_sizes, classes, **kw),
          "widths": checks.mlp_shapes(mix.dim, widest, max(mix.num_classes), **kw)}


def run_arm(config, ds, hidden_sizes, workdir: str) -> dict:
  """Trains one MLP, then measures the top Hessian eigenvalues and the SLQ density."""
  model = models.mlp(ds.input_dim, hidden_sizes, ds.num_classes,
                     parametrization=config.model.parametrization,
                     activation=config.model.activation,
                     compute_dtype=config.model.compute_dtype)
  key_init, key_train, key_l, key_d = jax.random.split(jax.random.key(config.seed), 4)
  tx, schedule = recipes.build_optimizer(config.optimizer, config.train.num_steps)
  loss_fn = recipes.classification_loss(model.apply)
  result = train.train(loss_fn, model.init(key_init), tx,
                       data.Batches({"x": ds.x_train, "y": ds.y_train}, config.train.batch_size,
                                    seed=config.seed),
                       num_steps=config.train.num_steps, key=key_train, workdir=workdir,
                       log_every=config.train.log_every_steps, lr_schedule=schedule,
                       progress=config.train.progress, desc=os.path.basename(workdir),
                       mesh=mesh_lib.from_config(config))
  params = result.state.params
  n = min(config.spectrum.hessian_examples, len(ds.x_train))
  batch = {"x": ds.x_train[:n], "y": ds.y_train[:n]}
  probe = lambda p, b: loss_fn(p, b, None)[0]  # noqa: E731
  mv = spectral.hessian_vp(probe, params, batch)
  pairs = spectral.top_eigenpairs(mv, params, config.spectrum.top_k, key_l,
                                  num_iters=config.spectrum.lanczos_iters)
  dens = spectral.spectral_density(mv, params, config.spectrum.density_iters,
                                   config.spectrum.density_draws, key_d)
  out = studies.count_outliers(pairs.eigenvalues, max_count=config.spectrum.top_k // 2)
  ev = recipes.classification_eval(model.apply, ds.x_train, ds.y_train, "train")(params)
  return {**out, "top_eigenvalues": np.asarray(pairs.eigenvalues).tolist(),
          "num_classes": ds.num_classes, "hidden_sizes": list(hidden_sizes),
          "train_accuracy": float(ev["train_accuracy"]), "train_loss": float(ev["train_loss"]),
          "density": (np.asarray(dens.nodes), np.asarray(dens.weights))}


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  arms = {}
  mix = config.mixture
  for c in mix.num_classes:
    ds = data.gaussian_mixture(c, mix.dim, mix.num_train, 0, separation=mix.separation,
                               seed=mix.data_seed)
    arms[f"mixture_C{c}"] = run_arm(config, ds, config.model.hidden_sizes,
                                    os.path.join(workdir, f"mixture_C{c}"))
  if config.mnist1d.enabled:
    ds = data.mnist1d(config.mnist1d.num_samples, config.mnist1d.data_seed)
    arms["mnist1d"] = run_arm(config, ds.subset(config.mnist1d.num_train),
                              config.model.hidden_sizes, os.path.join(workdir, "mnist1d"))
  c_max = max(mix.num_classes)
  ds = data.gaussian_mixture(c_max, mix.dim, mix.num_train, 0, separation=mix.separation,
                             seed=mix.data_seed)
  width_arms = {}
  for w in config.widths:
    sizes = (w,) * len(config.model.hidden_sizes)
    width_arms[w] = run_arm(config, ds, sizes, os.path.join(workdir, f"width_{w}"))
  densities = {k: a.pop("density") for k, a in {**arms, **{
      f"width_{w}": a for w, a in width_arms.items()}}.items()}
  summary = {
      "outlier_count": {k: a["count"] for k, a in arms.items()},
      "num_classes": {k: a["num_classes"] for k, a in arms.items()},
      "arms": arms,
      "width_sweep": {
          "num_classes": c_max,
          "widths": list(config.widths),
          "outlier_count": [width_arms[w]["count"] for w in config.widths],
          "bulk_edge": [width_arms[w]["bulk_edge"] for w in config.widths],
          "mean_outlier": [float(np.mean(width_arms[w]["top_eigenvalues"][:int(width_arms[w][
              "count"])])) for w in config.widths],
          "arms": {str(w): a for w, a in width_arms.items()},
      },
      "gap_rule": "outliers = Ritz values above the largest log-ratio gap among the top_k "
                  "(count <= top_k // 2)",
  }
  sw = summary["width_sweep"]
  summary["width_sweep"]["bulk_edge_ratio_widest_over_narrowest"] = sw["bulk_edge"][-1] / \
      sw["bulk_edge"][0]
  summary["width_sweep"]["mean_outlier_ratio_widest_over_narrowest"] = sw["mean_outlier"][-1] / \
      sw["mean_outlier"][0]
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(summary, densities, workdir)
  return summary


def plot(summary: dict, densities: dict, workdir: str) -> None:
  arms = summary["arms"]
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (name, a) in enumerate(arms.items()):
    lam = np.asarray(a["top_eigenvalues"])
    lam = lam[lam > 0]
    ax.semilogy(np.arange(1, lam.size + 1), lam, "o-", color=f"C{i}", ms=3,
                label=f"{name} (C={a['num_classes']}, {int(a['count'])} outliers)")
    ax.axvline(a["count"] + 0.5, color=f"C{i}", ls=":", lw=1)
  ax.set(xlabel="rank i", ylabel="λ_i", title="top Hessian eigenvalues (dotted: gap rule)")
  ax.legend(fontsize=7)
  io.save_figure(fig, workdir, "top_eigenvalues")
  # A grid of at most 4 columns (8 arms in one row made a 2,600-pixel strip).
  ncols = min(4, len(densities))
  nrows = -(-len(densities) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.5 * ncols, 2.8 * nrows), squeeze=False)
  for ax, (name, (nodes, weights)) in zip(axes.flat, densities.items(), strict=False):
    dens = spectral.SpectralDensity(nodes, weights)
    spectral.plot_density(dens, ax=ax)
    ax.set_title(name, fontsize=8)
    ax.set_ylabel("density", fontsize=8)
  for ax in axes.flat[len(densities):]:
    ax.set_visible(False)
  fig.tight_layout()
  io.save_figure(fig, workdir, "density")
  sw = summary["width_sweep"]
  widths = np.asarray(sw["widths"])
  outliers = [np.asarray(sw["arms"][str(w)]["top_eigenvalues"])[:int(c)]
              for w, c in zip(sw["widths"], sw["outlier_count"], strict=True)]
  mean = np.asarray(sw["mean_outlier"])
  lo = mean - np.array([o.min() for o in outliers])
  hi = np.array([o.max() for o in outliers]) - mean
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(widths, sw["bulk_edge"], "o-", label="bulk edge λ_{k+1}")
  ax.errorbar(widths, mean, yerr=(lo, hi), fmt="s-", capsize=3,
              label="outliers: mean, bars min–max")
  ax.set(xscale="log", yscale="log", xlabel="hidden width", ylabel="eigenvalue",
         title=f"width sweep, mixture C={sw['num_classes']} (one seed)")
  ax.set_xticks(widths, [str(w) for w in widths])  # the widths themselves, no 10^k labels
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))  # 0.1, 0.2, 0.5, 1, ...
  ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax.legend(fontsize=8)
  fig.tight_layout()
  io.save_figure(fig, workdir, "width_sweep")
