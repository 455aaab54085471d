"""Study: TrAct (Petersen et al. 2024) vs plain first-layer gradients, steps to a target accuracy.

Workloads: `SmallCNN` on sklearn digits (8×8×1) and the MLP on MNIST-1D; SGD
with momentum and Adam. Inputs are standardized (one mean and std over the
training set, as the paper's normalized pixels), then kept at full contrast or
contrast-reduced around each example's own mean, x ← m + c·(x − m). Each
(workload, optimizer, method) trains every contrast × `num_seeds` seeds one
after another through one jitted program, compiled once (paired: TrAct and
plain share each seed's initialization and batches; seeds are not vmapped, see
`make_trainer`); test accuracy every `eval_every_steps`.

Target: for each (workload, optimizer, contrast), `target_fraction` × the plain
arm's final test accuracy (mean of its last `final_window` evaluations, mean
over seeds) — the paper's "steps to the same accuracy" as the baseline's.
Steps to target: the first evaluation at which the trailing mean of the last
`smooth_window` evaluations (fewer at the start) reaches it — one lucky
evaluation of a noisy curve does not count. Speed-up per seed:
plain steps / TrAct steps; an arm that never reaches the target counts as
`num_steps + eval_every_steps` (censored; counted in the summary).
"""
from __future__ import annotations

import itertools
import logging
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab import data, models, optim  # noqa: E402
from jaxlab.models import tract as tract_lib  # noqa: E402
from jaxlab.train import checks, io  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

WORKLOADS = ("cnn_digits", "mlp_mnist1d")
OPTIMIZERS = ("momentum", "adam")
METHODS = ("plain", "tract")
log = logging.getLogger(__name__)


def validate(config) -> None:
  for key, allowed in (("workloads", WORKLOADS), ("optimizers", OPTIMIZERS)):
    values = tuple(config[key])
    if not values or any(v not in allowed for v in values) or len(set(values)) != len(values):
      raise ValueError(f"config key {key!r}: {values!r}; allowed: distinct names from "
                       f"{list(allowed)}")
  for w in config.workloads:
    for o in config.optimizers:
      lr = config.learning_rates[w][o] if w in config.learning_rates else None
      if not isinstance(lr, float) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"config key 'learning_rates.{w}.{o}': {lr!r}; allowed: a finite "
                         "float > 0")
  if not config.contrasts or any(not 0 < c <= 1 for c in config.contrasts):
    raise ValueError(f"config key 'contrasts': {tuple(config.contrasts)!r}; allowed: numbers "
                     "in (0, 1] (1 = unchanged inputs)")
  tract_lib.check_lam(config.lam, "config key 'lam'")
  for key in ("num_seeds", "num_steps", "batch_size", "eval_every_steps", "final_window",
              "smooth_window"):
    checks.positive(config, key)
  if config.num_steps % config.eval_every_steps:
    raise ValueError(f"config key 'eval_every_steps': {config.eval_every_steps} does not divide "
                     f"num_steps={config.num_steps}; allowed: a divisor of num_steps")
  if config.final_window > config.num_steps // config.eval_every_steps:
    raise ValueError(f"config key 'final_window': {config.final_window}; allowed: at most the "
                     f"number of evaluations, {config.num_steps // config.eval_every_steps}")
  if not 0 < config.target_fraction <= 1:
    raise ValueError(f"config key 'target_fraction': {config.target_fraction}; allowed: (0, 1]")
  if not 0 <= config.momentum < 1:
    raise ValueError(f"config key 'momentum': {config.momentum}; allowed: 0 <= momentum < 1")
  checks.positive_sizes(config, "cnn.features")
  checks.positive_sizes(config, "mlp.hidden_sizes")
  if not 0 <= config.cnn.dropout_rate < 1:
    raise ValueError(f"config key 'cnn.dropout_rate': {config.cnn.dropout_rate}; allowed: [0, 1)")
  if "mlp_mnist1d" in config.workloads:
    checks.mnist1d_samples(config, "data", "batch_size")
  if "cnn_digits" in config.workloads and config.batch_size > 1437:
    raise ValueError(f"config key 'batch_size': {config.batch_size}; allowed: at most 1437 "
                     "(the digits training split)")
  mesh_lib.check_config(config, ("batch_size",))


def reduce_contrast(x: np.ndarray, c: float) -> np.ndarray:
  """m + c·(x − m), m each example's mean over its features (brightness kept)."""
  m = x.reshape(len(x), -1).mean(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
  return (m + c * (x - m)).astype(np.float32)


def load_workload(name: str, config) -> data.Dataset:
  """The data set, standardized by the training set's mean and std (scalars)."""
  if name == "cnn_digits":
    ds = data.digits(seed=config.data.digits_seed)
    ds = ds._replace(x_train=ds.x_train.reshape(-1, 8, 8, 1),
                     x_test=ds.x_test.reshape(-1, 8, 8, 1))
  else:
    ds = data.mnist1d(config.data.num_samples, config.data.data_seed)
  mean, std = ds.x_train.mean(), ds.x_train.std()
  return ds._replace(x_train=((ds.x_train - mean) / std).astype(np.float32),
                     x_test=((ds.x_test - mean) / std).astype(np.float32))


def param_shapes(config) -> dict:
  """Each workload's parameter shapes (`jax.eval_shape`: no data, nothing compiled)."""
  cnn = models.SmallCNN(features=tuple(config.cnn.features), num_classes=10,
                        dropout_rate=config.cnn.dropout_rate, batch_norm=config.cnn.batch_norm)
  mlp = models.mlp(checks.MNIST1D_DIMS[0], tuple(config.mlp.hidden_sizes), 10)
  return {
      "cnn.features": jax.eval_shape(
          lambda: cnn.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]),
      "mlp.hidden_sizes": jax.eval_shape(lambda: mlp.init(jax.random.key(0))),
  }


def build_model(name: str, config, tract_lam: float | None, input_dim: int):
  """(init(key, x) -> (params, state), loss(params, state, batch, key) -> (loss, state), logits)."""
  if name == "cnn_digits":
    module = models.SmallCNN(features=tuple(config.cnn.features), num_classes=10,
                             dropout_rate=config.cnn.dropout_rate,
                             batch_norm=config.cnn.batch_norm, tract_lam=tract_lam)
    contract_loss = models.linen_classifier_loss(module)

    def init(key, x):
      return models.linen_init(module, key, x)

    def loss(params, state, batch, key):
      value, aux = contract_loss(params, batch, key, state=state, train=True)
      return value, aux["state"]

    def logits(params, state, x):
      return module.apply({"params": params, **(state or {})}, x, train=False)

    return init, loss, logits
  model = models.mlp(input_dim, tuple(config.mlp.hidden_sizes), 10, tract_lam=tract_lam)

  def init(key, x):
    del x
    return model.init(key), None

  def loss(params, state, batch, key):
    del key
    out, _ = model.apply(params, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean(), state

  def logits(params, state, x):
    del state
    return model.apply(params, x)[0]

  return init, loss, logits


def make_optimizer(name: str, lr: float, momentum: float) -> optax.GradientTransformation:
  if name == "momentum":
    return optim.get("momentum", learning_rate=lr, momentum=momentum)
  return optim.get("adam", learning_rate=lr)


def make_trainer(init, loss, logits, tx, config, mesh=None):
  """A jitted `run(x_train, y_train, x_test, y_test, seed) -> (test acc, train loss)` per evaluation.

  Init from key(seed), batches drawn with replacement from fold_in(key(seed),
  step); the train loss is the mean over each evaluation interval. The data
  and the seed are arguments, not constants, so one compile serves every
  contrast and seed. (Seeds are not vmapped: a vmapped conv becomes a grouped
  conv, several times slower on CPU.)

  On a `mesh` of several devices (`jaxlab.train.mesh`) each mini-batch is split
  over all its devices and, with `fsdp > 1`, the parameters and optimizer state
  are sharded by `mesh.leaf_spec`, as in the train loop: sharding constraints
  inside the program; XLA inserts the collectives.
  """
  bs, every = config.batch_size, config.eval_every_steps
  num_evals = config.num_steps // every
  if mesh is not None and mesh.size > 1:
    constrain = jax.lax.with_sharding_constraint
    split = mesh_lib.split_sharding(mesh)

    def place(params, opt_state, batch):
      return (constrain(params, mesh_lib.tree_shardings(params, mesh)),
              constrain(opt_state, mesh_lib.tree_shardings(opt_state, mesh)),
              batch if batch is None else constrain(batch, split))
  else:
    def place(params, opt_state, batch):
      return params, opt_state, batch

  def one_seed(x_tr, y_tr, x_te, y_te, seed):
    key_init, key_data = jax.random.split(jax.random.key(seed))
    params, state = init(key_init, x_tr[:2])
    params, opt_state, _ = place(params, tx.init(params), None)

    def step(carry, t):
      params, state, opt_state = carry
      k = jax.random.fold_in(key_data, t)
      idx = jax.random.randint(k, (bs,), 0, x_tr.shape[0])
      _, _, batch = place(params, opt_state, {"x": x_tr[idx], "y": y_tr[idx]})
      (value, state), g = jax.value_and_grad(loss, has_aux=True)(params, state, batch, k)
      updates, opt_state = tx.update(g, opt_state, params)
      params, opt_state, _ = place(optax.apply_updates(params, updates), opt_state, None)
      return (params, state, opt_state), value

    def chunk(carry, e):
      carry, values = jax.lax.scan(step, carry, e * every + jnp.arange(every))
      acc = jnp.mean(logits(carry[0], carry[1], x_te).argmax(-1) == y_te)
      return carry, (acc, values.mean())

    _, (acc, train_loss) = jax.lax.scan(chunk, (params, state, opt_state), jnp.arange(num_evals))
    return acc, train_loss

  return jax.jit(one_seed)


def steps_to_target(steps, accuracy, target: float, window: int = 1) -> int | None:
  """The first step whose trailing mean over `window` evaluations is >= target (None: never)."""
  acc = np.asarray(accuracy, float)
  smooth = [acc[max(0, i + 1 - window):i + 1].mean() for i in range(len(acc))]
  return next((s for s, a in zip(steps, smooth, strict=True) if a >= target), None)


def arm_name(w: str, o: str, c: float, m: str) -> str:
  return f"{w}/{o}/contrast={c:g}/{m}"


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  mesh = mesh_lib.from_config(config)  # each run's batches (and state, fsdp > 1) split on it
  seeds = [config.seed + i for i in range(config.num_seeds)]
  arms: dict[str, dict] = {}
  steps = [config.eval_every_steps * (i + 1)
           for i in range(config.num_steps // config.eval_every_steps)]
  for w in config.workloads:
    ds = load_workload(w, config)
    x_tr = np.stack([reduce_contrast(ds.x_train, c) for c in config.contrasts])
    x_te = np.stack([reduce_contrast(ds.x_test, c) for c in config.contrasts])
    for o, m in itertools.product(config.optimizers, METHODS):
      # One record per compiled program (all contrasts and seeds): resume at that grain.
      path = os.path.join(workdir, "arms", f"{w}_{o}_{m}.json")
      if not os.path.exists(path):
        init, loss, logits = build_model(w, config, config.lam if m == "tract" else None,
                                         ds.input_dim)
        run = make_trainer(init, loss, logits,
                           make_optimizer(o, config.learning_rates[w][o], config.momentum),
                           config, mesh)
        t0 = time.time()
        out = [[run(x_tr[k], ds.y_train, x_te[k], ds.y_test, s) for s in seeds]
               for k in range(len(config.contrasts))]
        acc = np.asarray([[np.asarray(a) for a, _ in row] for row in out])
        train_loss = np.asarray([[np.asarray(v) for _, v in row] for row in out])
        if not np.isfinite(train_loss).all():
          log.warning("%s/%s/%s: non-finite train loss (diverged runs never reach the target)",
                      w, o, m)
        io.write_json(path, {"contrasts": list(config.contrasts), "seeds": seeds, "steps": steps,
                             "test_accuracy": acc.tolist(), "train_loss": train_loss.tolist(),
                             "wall_time_s": time.time() - t0})
      record = io.read_json(path)
      for k, c in enumerate(config.contrasts):
        arms[arm_name(w, o, c, m)] = {
            "steps": record["steps"], "test_accuracy": record["test_accuracy"][k],
            "train_loss": record["train_loss"][k], "wall_time_s": record["wall_time_s"]}
  summary = summarize(arms, config)
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot_steps(summary, config, workdir)
  plot_curves(arms, summary, config, workdir)
  return summary


def summarize(arms: dict[str, dict], config) -> dict:
  censor = config.num_steps + config.eval_every_steps
  groups = {}
  for w, o, c in itertools.product(config.workloads, config.optimizers, config.contrasts):
    plain, tr = (arms[arm_name(w, o, c, m)] for m in METHODS)
    finals = np.asarray(plain["test_accuracy"])[:, -config.final_window:].mean(axis=1)
    target = float(config.target_fraction * finals.mean())
    steps = {m: [steps_to_target(arm["steps"], acc, target, config.smooth_window)
                 for acc in arm["test_accuracy"]]
             for m, arm in (("plain", plain), ("tract", tr))}
    filled = {m: np.asarray([censor if s is None else s for s in v], float)
              for m, v in steps.items()}
    speedup = filled["plain"] / filled["tract"]
    groups[f"{w}/{o}/contrast={c:g}"] = {
        "target_accuracy": target,
        "steps_to_target": steps,
        "not_reached": {m: sum(s is None for s in v) for m, v in steps.items()},
        "speedup_per_seed": speedup.tolist(),
        "speedup_geomean": float(np.exp(np.mean(np.log(speedup)))),
        "speedup_min": float(speedup.min()),
        "final_accuracy": {m: float(np.asarray(a["test_accuracy"])[:, -config.final_window:].mean())
                           for m, a in (("plain", plain), ("tract", tr))},
    }
  return {"groups": groups, "seeds": [config.seed + i for i in range(config.num_seeds)],
          "lam": config.lam, "target_fraction": config.target_fraction,
          "program_wall_time_s": {k.rsplit("/contrast=", 1)[0] + "/" + k.rsplit("/", 1)[1]:
                                  a["wall_time_s"] for k, a in arms.items()}}


def plot_steps(summary: dict, config, workdir: str) -> None:
  """Steps to target per (optimizer, contrast), plain vs TrAct; bars = mean, whiskers = seed range."""
  ws = config.workloads
  fig, axes = plt.subplots(1, len(ws), figsize=(4.2 * len(ws), 3.4), squeeze=False)
  censor = config.num_steps + config.eval_every_steps
  for ax, w in zip(axes[0], ws, strict=True):
    labels = []
    for i, (o, c) in enumerate(itertools.product(config.optimizers, config.contrasts)):
      g = summary["groups"][f"{w}/{o}/contrast={c:g}"]
      labels.append(f"{o}\nc={c:g}\n×{g['speedup_geomean']:.2f}")
      for j, m in enumerate(METHODS):
        v = np.asarray([censor if s is None else s for s in g["steps_to_target"][m]], float)
        err = [[v.mean() - v.min()], [v.max() - v.mean()]]
        ax.bar(i + (j - 0.5) * 0.38, v.mean(), 0.38, yerr=err, capsize=3, color=f"C{j}",
               label={"plain": "plain gradient", "tract": f"TrAct (λ={config.lam:g})"}[m]
               if i == 0 else None)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(title=w, ylabel="steps to target")
    ax.axhline(censor, color="0.5", ls=":", lw=1)  # the censoring height: never reached
  handles, names = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, names, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.06))
  fig.suptitle(f"steps to {config.target_fraction:g} × plain's final accuracy (mean, whiskers: "
               f"min–max over {config.num_seeds} seeds; ×: speed-up; dotted: not reached)",
               fontsize=8, y=0.9)
  fig.tight_layout(rect=(0, 0, 1, 0.88))
  io.save_figure(fig, workdir, "steps_to_target")


def plot_curves(arms: dict, summary: dict, config, workdir: str) -> None:
  """Test accuracy vs step: rows (workload, optimizer), columns contrast; mean ± seed range."""
  rows = list(itertools.product(config.workloads, config.optimizers))
  cols = list(config.contrasts)
  fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.3 * len(cols), 2.4 * len(rows)),
                           squeeze=False, sharex=True)
  for (r, (w, o)), (k, c) in itertools.product(enumerate(rows), enumerate(cols)):
    ax = axes[r][k]
    for j, m in enumerate(METHODS):
      arm = arms[arm_name(w, o, c, m)]
      acc = np.asarray(arm["test_accuracy"])
      label = {"plain": "plain gradient", "tract": f"TrAct (λ={config.lam:g})"}[m]
      ax.plot(arm["steps"], acc.mean(0), color=f"C{j}", label=label if r == k == 0 else None)
      ax.fill_between(arm["steps"], acc.min(0), acc.max(0), color=f"C{j}", alpha=0.2, lw=0)
    target = summary["groups"][f"{w}/{o}/contrast={c:g}"]["target_accuracy"]
    ax.axhline(target, color="k", ls=":", lw=1, label="target" if r == k == 0 else None)
    ax.set_title(f"{w}, {o}, contrast {c:g}", fontsize=8)
    if k == 0:
      ax.set_ylabel("test accuracy")
    if r == len(rows) - 1:
      ax.set_xlabel("step")
  handles, names = axes[0][0].get_legend_handles_labels()
  height = fig.get_size_inches()[1]
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the one legend on top
  fig.legend(handles, names, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.0))
  io.save_figure(fig, workdir, "accuracy_curves")
