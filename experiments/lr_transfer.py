"""Study: under µP the optimal learning rate and the sharpness transfer across width.

Noci, Meterez, Hofmann & Orvieto, "Why do Learning Rates Transfer? Reconciling
Optimization and Scaling Limits for Deep Learning" (2024), arXiv:2402.17457:
in µP (Yang & Hu 2021; Tensor Programs V, Yang et al. 2022, arXiv:2203.03466)
the training loss as a function of the learning rate, and the sharpness
λ_max(∇²L) along training, are nearly width-independent; in standard (SP) and
NTK parametrizations they drift with width, so the learning rate tuned at a
small width does not transfer.

For each parametrization and width, every learning rate of a geometric grid is
trained as one jitted program (`jax.vmap` over the learning rates of a
`lax.scan` over the steps, same initialization and mini-batches for all); the
training loss at the end gives the optimum j*(w) (`studies.optimum_shift`).
Then, at the learning rate tuned at the narrowest width, one run per width logs
the sharpness every few steps (Lanczos on a fixed training subset).

Per-layer learning rates: `jaxlab.models.mlp`'s µP moves Table 3 of Tensor
Programs V into multipliers for SGD, so SGD uses one global learning rate. Adam
has the other abc-symmetry, so its µP needs per-layer learning-rate factors
(`lr_multipliers`), relative to the narrowest width: input weights, hidden
biases and readout weights × (n₀/n)^½, hidden weights × n₀/n, readout bias × 1.
SP and NTK use one global learning rate (their definition).

Sharpness: the largest eigenvalue of the Hessian of the training loss in the
coordinates where one global learning rate η applies, ``λ_max(D^½ ∇²L D^½)``
with D = diag(s) for SGD (the plain Hessian when s = 1: SP, NTK, µP-SGD), and
for Adam the preconditioned ("adaptive") sharpness of Cohen et al. 2022
(arXiv:2207.14484, §2), D = diag(s / ((1 − β₁ᵗ)(√v̂_t + ε))), whose stability
threshold is (2 + 2β₁)/((1 − β₁)η) = 38/η instead of SGD's 2/η. Noci et al.
track λ_max of the training-loss Hessian during training (their Fig. 1) and,
for Adam-trained models, the preconditioned Hessian (our reading of the paper).
"""
from __future__ import annotations

import hashlib
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import tqdm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, spectral  # noqa: E402
from jaxlab.spectral import studies  # noqa: E402
from jaxlab.train import checks, io  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

OPTIMIZERS = {"sgd": optax.identity, "adam": optax.scale_by_adam}
LOSSES = ("cross_entropy", "mse")


def _ints(key, value, lo=1):
  value = tuple(value)
  if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < lo for v in value):
    raise ValueError(f"config key {key!r}: {value!r}; allowed: a non-empty tuple of ints >= {lo}")
  return value


def validate(config) -> None:
  checks.positive(config, "data.num_samples")
  checks.positive(config, "data.num_train")
  checks.train_split(config, "data")
  widths = _ints("widths", config.widths)
  if list(widths) != sorted(set(widths)):
    raise ValueError(f"config key 'widths': {widths!r}; allowed: strictly increasing ints")
  checks.positive(config, "model.depth")
  checks.choice(config, "model.activation", models.ACTIVATIONS)
  params = tuple(config.parametrizations)
  if not params or any(p not in models.PARAMETRIZATIONS for p in params):
    raise ValueError(f"config key 'parametrizations': {params!r}; allowed: a non-empty tuple "
                     f"from {list(models.PARAMETRIZATIONS)}")
  checks.choice(config, "optimizer", OPTIMIZERS)
  checks.choice(config, "loss", LOSSES)
  exps = tuple(config.lr_grid.log2_learning_rates)
  if len(exps) < 2 or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in exps) \
     or list(exps) != sorted(set(exps)):
    raise ValueError(f"config key 'lr_grid.log2_learning_rates': {exps!r}; allowed: at least two "
                     "strictly increasing numbers (learning rates 2**e)")
  for key in ("train.num_steps", "train.batch_size", "sharpness.every_steps",
              "sharpness.lanczos_iters", "sharpness.num_examples"):
    checks.positive(config, key)
  if config.train.batch_size > config.data.num_train:
    raise ValueError(f"config key 'train.batch_size': {config.train.batch_size}; allowed: at most "
                     f"data.num_train ({config.data.num_train})")
  if config.sharpness.num_examples > config.data.num_train:
    raise ValueError(f"config key 'sharpness.num_examples': {config.sharpness.num_examples}; "
                     f"allowed: at most data.num_train ({config.data.num_train})")
  mesh_lib.resolve(config.mesh.data, config.mesh.fsdp)
  models.precision.check_config(config, "model.compute_dtype")
  if config.mesh.fsdp != 1:
    raise ValueError(f"config key 'mesh.fsdp': {config.mesh.fsdp}; allowed: 1 (the learning "
                     "rates of a grid are split whole over the devices, mesh.data; no run's "
                     "parameters are sharded)")
  if config.train.num_steps % config.sharpness.every_steps:
    raise ValueError(f"config key 'sharpness.every_steps': {config.sharpness.every_steps}; "
                     f"allowed: a divisor of train.num_steps ({config.train.num_steps})")


def param_shapes(config) -> dict:
  """{keys: abstract params} held at once (see checks.param_memory).

  main builds every width's model of a parametrization up front, and trains
  one width's learning-rate grid as one vmapped program (a copy of the
  parameters per learning rate).
  """
  dim, classes = checks.MNIST1D_DIMS
  per_width = [checks.mlp_shapes(dim, (w,) * config.model.depth, classes,
                                 activation=config.model.activation) for w in config.widths]
  grid = checks.stacked(per_width[-1], len(config.lr_grid.log2_learning_rates))
  return {"widths, model.depth, lr_grid.log2_learning_rates": {"widths": per_width,
                                                               "lr_grid": grid}}


def lr_multipliers(params: dict, parametrization: str, optimizer: str, width: int,
                   base_width: int) -> dict:
  """Per-leaf learning-rate factors s (1 at ``base_width``); see the module docstring.

  Only µP with Adam needs them: with the MLP's multipliers (input ×√n, input
  and hidden biases ×√n, readout ×1/√n) Adam's entry-wise Θ(1) steps must be
  scaled so that each layer's effective update matches Tensor Programs V,
  Table 3 (Adam): Θ(1) entries for input weights and biases, Θ(1/n) for hidden
  and readout weights. Exponents p in (n₀/n)^p: input kernel, biases ½; hidden
  kernel 1; readout kernel ½; readout bias 0.
  """
  def exponent(layer: str, leaf: str) -> float:
    if parametrization != "mup" or optimizer != "adam":
      return 0.0
    if layer == "readout":
      return 0.5 if leaf == "kernel" else 0.0
    if layer == "dense_0" or leaf == "bias":
      return 0.5
    return 1.0

  return {layer: {leaf: jnp.full((), (base_width / width) ** exponent(layer, leaf), jnp.float32)
                  for leaf in leaves} for layer, leaves in params.items()}


def make_loss(apply_fn, kind: str, num_classes: int):
  """Mean loss ``(params, x, y) -> scalar`` (mse: ½‖f(x) − e_y‖²)."""

  def loss(params, x, y):
    out, _ = apply_fn(params, x)
    if kind == "mse":
      return 0.5 * jnp.mean(jnp.sum((out - jax.nn.one_hot(y, num_classes)) ** 2, -1))
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

  return loss


def make_trainer(loss, base: optax.GradientTransformation, scales: dict, x, y):
  """``run(params, opt_state, lr, idx_TxB) -> (params, opt_state, losses_T)``.

  θ ← θ − η·s⊙u with u the base transform's direction (the gradient for SGD,
  Adam's m̂/(√v̂+ε)) and s the per-leaf factors; one scan over the steps.
  """

  def run(params, opt_state, lr, idx):
    def step(carry, i):
      params, opt_state = carry
      value, grads = jax.value_and_grad(loss)(params, x[i], y[i])
      u, opt_state = base.update(grads, opt_state, params)
      params = jax.tree.map(lambda p, d, s: p - lr * s * d, params, u, scales)
      return (params, opt_state), value

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, losses

  return run


def lr_grid_losses(run, loss, params, base, lrs, idx, x, y,
                   mesh=None) -> tuple[np.ndarray, float]:
  """(final full-train loss per lr, the first mini-batch loss), all lrs in one program.

  With a `mesh` of several devices the grid's learning rates are split over
  them (`jaxlab.train.mesh.put_split`; the grid padded with copies of its last
  rate to a multiple of the device count): each device trains its own rates.
  """

  @jax.jit
  def grid(lrs):
    def one(lr):
      p, _, curve = run(params, base.init(params), lr, idx)
      return loss(p, x, y), curve
    return jax.vmap(one)(lrs)

  n = lrs.shape[0]
  if mesh is not None and mesh.size > 1:
    pad = mesh_lib.padded_size(n, mesh) - n
    lrs = np.asarray(lrs)
    lrs = mesh_lib.put_split(np.concatenate([lrs, np.repeat(lrs[-1:], pad)]), mesh)
  final, curves = mesh_lib.to_host(grid(lrs))
  return np.asarray(final[:n], np.float64), float(curves[0, 0])


@jax.jit
def preconditioner(opt_state, scales: dict, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> dict:
  """D of the module docstring: s for SGD; s/((1 − β₁ᵗ)(√v̂ + ε)) from an Adam state."""
  adam = [st for st in jax.tree.leaves(opt_state, is_leaf=lambda z: isinstance(
      z, optax.ScaleByAdamState)) if isinstance(st, optax.ScaleByAdamState)]
  if not adam:
    return scales
  count, nu = adam[0].count, adam[0].nu
  bc1, bc2 = 1.0 - b1 ** count, 1.0 - b2 ** count
  return jax.tree.map(lambda s, v: s / (bc1 * (jnp.sqrt(v / bc2) + eps)), scales, nu)


def make_sharpness(loss):
  """``sharpness(params, batch, root, key, iters)``: λ_max of v ↦ √D ⊙ H(√D ⊙ v) by Lanczos."""

  def precond_hvp(params, batch, root, v):
    u = jax.tree.map(jnp.multiply, root, v)
    grad = jax.grad(lambda p: loss(p, batch["x"], batch["y"]))
    hu = jax.jvp(grad, (params,), (u,))[1]
    return jax.tree.map(jnp.multiply, root, hu)

  def sharpness(params, batch, root, key, iters):
    # One function object per model, so the fused Lanczos loop compiles once.
    mv = jax.tree_util.Partial(precond_hvp, params, batch, root)
    return float(spectral.top_eigenpairs(mv, params, 1, key, num_iters=iters).eigenvalues[0])

  return sharpness


@jax.jit
def _root_and_finite(params, opt_state, scales):
  root = jax.tree.map(jnp.sqrt, preconditioner(opt_state, scales))
  leaves = jax.tree.leaves((params, root))
  return root, jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in leaves]))


def sharpness_run(run, loss, params, base, scales, lr, idx, probe_batch, every, iters, key,
                  logger) -> dict:
  """Trains at one lr and logs λ_max(D^½ ∇²L D^½) on ``probe_batch`` every ``every`` steps."""
  chunk = jax.jit(run)
  sharpness = make_sharpness(loss)
  opt_state = base.init(params)
  adam = bool(jax.tree.leaves(opt_state))  # SGD's base transform has an empty state
  steps, sharp, losses = [], [], []
  for t in range(every if adam else 0, idx.shape[0] + 1, every):  # Adam: v̂ needs a step
    if t:
      params, opt_state, curve = chunk(params, opt_state, lr, idx[t - every:t])
      losses.append(float(np.mean(np.asarray(curve))))
    root, finite = _root_and_finite(params, opt_state, scales)
    lam = np.nan
    if bool(finite):
      lam = sharpness(params, probe_batch, root, jax.random.fold_in(key, t), iters)
    steps.append(t)
    sharp.append(lam)
    logger.write(t, {"sharpness": lam, **({"loss": losses[-1]} if t else {})})
  return {"steps": steps, "sharpness": sharp, "loss": losses,
          "stability_threshold": float((38.0 if adam else 2.0) / lr)}


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  ds = data.mnist1d(config.data.num_samples, config.data.data_seed).subset(config.data.num_train)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  batches = data.Batches({"y": ds.y_train}, config.train.batch_size, seed=config.seed)
  idx = jnp.asarray(np.stack([batches.indices(t) for t in range(config.train.num_steps)]))
  exps = [float(e) for e in config.lr_grid.log2_learning_rates]
  lrs = jnp.asarray([2.0 ** e for e in exps], jnp.float32)
  n = config.sharpness.num_examples
  probe_batch = {"x": x[:n], "y": y[:n]}
  key_init, key_lanczos = jax.random.split(jax.random.key(config.seed))
  base = OPTIMIZERS[config.optimizer]()
  widths = tuple(config.widths)
  mesh = mesh_lib.from_config(config)  # the learning-rate grid split over its devices

  def setup(p, w):
    model = models.mlp(ds.input_dim, (w,) * config.model.depth, ds.num_classes,
                       parametrization=p, activation=config.model.activation,
                       compute_dtype=config.model.compute_dtype)
    params = jax.jit(model.init)(key_init)
    scales = lr_multipliers(params, p, config.optimizer, w, widths[0])
    loss = make_loss(model.apply, config.loss, ds.num_classes)
    return params, scales, loss, make_trainer(loss, base, scales, x, y)

  summary: dict = {"widths": list(widths), "log2_learning_rates": exps,
                   "learning_rates": [2.0 ** e for e in exps], "parametrizations": {}}
  # One tick per (parametrization, width) for the learning-rate grid and one for
  # the sharpness run: the full config spends minutes on each wide cell.
  bar = tqdm.tqdm(total=2 * len(config.parametrizations) * len(widths), desc="lr_transfer")
  # Each finished cell is kept in workdir/cells, so a re-run on the same workdir
  # with the same config resumes where it stopped.
  fingerprint = hashlib.sha1(config.to_json(sort_keys=True).encode()).hexdigest()

  def cached(name, compute):
    path = os.path.join(workdir, "cells", name + ".json")
    if os.path.exists(path):
      record = io.read_json(path)
      if record.get("fingerprint") == fingerprint:
        return record["value"]
    value = compute()
    io.write_json(path, {"fingerprint": fingerprint, "value": value})
    return value

  def floats(values):  # NaN comes back from JSON as the string "nan"
    return [float(v) for v in values]

  for p in config.parametrizations:
    table, initial, arms = [], [], {w: setup(p, w) for w in widths}
    for w in widths:
      bar.set_postfix_str(f"{p} width {w}: {len(exps)} rates x {config.train.num_steps} steps")
      params, _, loss, run = arms[w]
      cell = cached(f"{p}_width_{w}_grid", lambda params=params, loss=loss, run=run: dict(zip(
          ("final", "first"), lr_grid_losses(run, loss, params, base, lrs, idx, x, y, mesh),
          strict=True)))
      table.append(np.asarray(floats(cell["final"]), np.float64))
      initial.append(float(cell["first"]))
      bar.update()
    shift = studies.optimum_shift(np.asarray(table))
    j_ref = shift["indices"][0]
    sharp = {}
    for w in widths:
      bar.set_postfix_str(f"{p} width {w}: sharpness every {config.sharpness.every_steps} steps")
      params, scales, loss, run = arms[w]

      def measure(params=params, scales=scales, loss=loss, run=run, w=w, p=p, j_ref=j_ref):
        logger = io.MetricsLogger(os.path.join(workdir, f"{p}_width_{w}"))
        logger.reset()
        return sharpness_run(run, loss, params, base, scales, lrs[j_ref], idx, probe_batch,
                             config.sharpness.every_steps, config.sharpness.lanczos_iters,
                             key_lanczos, logger)

      sharp[w] = cached(f"{p}_width_{w}_sharpness_lr_{j_ref}", measure)
      sharp[w].update(sharpness=floats(sharp[w]["sharpness"]), loss=floats(sharp[w]["loss"]))
      bar.update()
    curves = [np.asarray(sharp[w]["sharpness"], np.float64) for w in widths]
    early = [np.nanmedian(c[:max(len(c) // 2, 1)]) for c in curves]
    late = [np.nanmedian(c[len(c) // 2:]) for c in curves]
    summary["parametrizations"][p] = {
        "final_loss": [row.tolist() for row in table],
        "initial_loss": initial,
        "optimal_index": shift["indices"],
        "optimal_log2_lr": [exps[j] for j in shift["indices"]],
        "optimal_loss": [float(row[j]) for row, j in zip(table, shift["indices"], strict=True)],
        "optimum_shift_grid_steps": shift["shift"],
        "sharpness_learning_rate": float(2.0 ** exps[j_ref]),
        "sharpness": {str(w): sharp[w] for w in widths},
        "median_sharpness_last_half": [float(v) for v in late],
        "sharpness_ratio_widest_over_narrowest": float(late[-1] / late[0]),
        "median_sharpness_first_half": [float(v) for v in early],
        "sharpness_ratio_first_half": float(early[-1] / early[0]),
    }
  summary["optimum_shift"] = {p: s["optimum_shift_grid_steps"]
                              for p, s in summary["parametrizations"].items()}
  bar.close()
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot(summary, workdir)
  return summary


def plot(summary: dict, workdir: str) -> None:
  params = summary["parametrizations"]
  widths, lrs = summary["widths"], np.asarray(summary["learning_rates"])
  fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.6), squeeze=False)
  for ax, (p, s) in zip(axes[0], params.items(), strict=True):
    for i, (w, row) in enumerate(zip(widths, s["final_loss"], strict=True)):
      row = np.asarray(row, np.float64)
      ax.plot(lrs, np.where(np.isfinite(row), row, np.nan), "o-", ms=3, color=f"C{i}",
              label=f"width {w}")
      j = s["optimal_index"][i]
      ax.plot(lrs[j], row[j], "*", ms=11, color=f"C{i}")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final train loss",
           title=f"{p}: optimum shift {s['optimum_shift_grid_steps']} grid steps")
    ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, workdir, "loss_vs_lr")
  fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.6), squeeze=False)
  for ax, (p, s) in zip(axes[0], params.items(), strict=True):
    for i, w in enumerate(widths):
      arm = s["sharpness"][str(w)]
      ax.plot(arm["steps"], arm["sharpness"], "o-", ms=3, color=f"C{i}", label=f"width {w}")
    ax.axhline(arm["stability_threshold"], color="k", ls="--", lw=1)
    ax.set(yscale="log", xlabel="step", ylabel="λ_max(D^½ H D^½)",
           title=f"{p}: sharpness at η = {s['sharpness_learning_rate']:.2g} (dashed: threshold)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, workdir, "sharpness")
