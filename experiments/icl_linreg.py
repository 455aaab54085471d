"""Study: in-context linear regression, a transformer vs the textbook algorithms.

Trains one GPT-2-style model per arm (noiseless, noisy labels, ill-conditioned
inputs) with the jaxlab train loop, then compares it with least squares, ridge,
k-NN, averaging, GD-k and iterative Newton-k, and matches each layer (linear
probes) to a number of Newton iterations and of GD steps. See
experiments/configs/icl_linreg.py for the setups and the papers.
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

from jaxlab.icl import analysis, evaluation, tasks, training  # noqa: E402
from jaxlab.models import precision  # noqa: E402
from jaxlab.models.transformer import ICLTransformer  # noqa: E402
from jaxlab.train import checks, io, recipes, restarts  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

ARMS = ("noiseless", "noisy", "ill_conditioned")


def _int_tuple(config, key, minimum=0):
  value = checks._get(config, key)
  if (not isinstance(value, tuple) or not value
      or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value)
      or list(value) != sorted(set(value))):
    raise ValueError(f"config key {key!r}: {value!r}; allowed: a non-empty increasing tuple "
                     f"of ints >= {minimum}")


def validate(config) -> None:
  for key in ("task.dim", "task.n_points", "task.condition_number", "model.num_layers",
              "model.num_heads", "model.width", "train.batch_size", "train.log_every_steps",
              "eval.num_prompts", "eval.probe_prompts", "eval.weight_prompts", "eval.knn_k"):
    checks.positive(config, key)
  for key in ("task.noise_std", "train.clip_norm", "train.checkpoint_every_steps"):
    checks.positive(config, key, allow_zero=True)
  if config.task.condition_number < 1:
    raise ValueError(f"config key 'task.condition_number': {config.task.condition_number!r}; "
                     "allowed: a number >= 1")
  if config.model.width % config.model.num_heads:
    raise ValueError(f"config key 'model.width': {config.model.width} is not divisible by "
                     f"model.num_heads={config.model.num_heads}")
  if set(config.arms) != set(ARMS):
    raise ValueError(f"config key 'arms': {sorted(config.arms)}; allowed: exactly {list(ARMS)}")
  for arm in ARMS:
    checks.positive(config, f"arms.{arm}", allow_zero=True)
  if not any(config.arms[a] for a in ARMS):
    raise ValueError("config key 'arms': every arm has 0 steps; allowed: at least one > 0")
  if config.arms.noisy and config.task.noise_std <= 0:
    raise ValueError("config key 'task.noise_std': 0 with arms.noisy > 0; allowed: > 0")
  if config.task.curriculum:
    for key in ("task.dims_start", "task.points_start", "task.curriculum_interval"):
      checks.positive(config, key)
    for key in ("task.dims_inc", "task.points_inc"):
      checks.positive(config, key, allow_zero=True)
    if config.task.dims_start > config.task.dim or config.task.points_start > config.task.n_points:
      raise ValueError("config keys 'task.dims_start'/'task.points_start': "
                       f"{config.task.dims_start}/{config.task.points_start}; allowed: <= "
                       f"task.dim={config.task.dim} / task.n_points={config.task.n_points}")
  _int_tuple(config, "eval.newton_steps")
  _int_tuple(config, "eval.gd_steps")
  if config.eval.weight_contexts:
    _int_tuple(config, "eval.weight_contexts")
    if max(config.eval.weight_contexts) >= config.task.n_points:
      raise ValueError(f"config key 'eval.weight_contexts': {config.eval.weight_contexts}; "
                       f"allowed: values < task.n_points={config.task.n_points}")
  precision.check_config(config, "model.compute_dtype")
  recipes.check_optimizer_config(config.optimizer)
  checks.warmup_below(config, "optimizer.warmup_steps", *(f"arms.{a}" for a in ARMS))
  checks.divisible_by_devices(config, "train.batch_size")
  mesh_lib.check_config(config)
  checks.positive(config, "train.candidates")
  if config.train.candidates > 1:
    checks.positive(config, "train.candidate_steps")
    checks.positive(config, "train.candidate_eval_prompts")
    if not config.train.checkpoint_every_steps:
      raise ValueError("config key 'train.checkpoint_every_steps': 0 with train.candidates="
                       f"{config.train.candidates}; allowed: >= 1 (the chosen candidate is "
                       "handed to the main run through a checkpoint)")
    for arm in ARMS:
      if trains_from_scratch(config, arm) and config.arms[arm] \
          and config.train.candidate_steps >= config.arms[arm]:
        raise ValueError(f"config key 'train.candidate_steps': {config.train.candidate_steps} "
                         f">= arms.{arm}={config.arms[arm]}; allowed: fewer than the arm's steps")
  checks.choice(config, "arms_init", ("scratch", "noiseless"))
  if config.arms_init == "noiseless" and not config.arms.noiseless \
      and (config.arms.noisy or config.arms.ill_conditioned):
    raise ValueError("config key 'arms_init': 'noiseless' needs arms.noiseless > 0; "
                     "allowed: 'scratch' when the noiseless arm is skipped")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the transformer each arm trains (see checks.param_memory)."""
  t, m = config.task, config.model
  model = ICLTransformer(num_layers=m.num_layers, num_heads=m.num_heads, width=m.width,
                         max_points=t.n_points, normalize=m.normalize)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, t.n_points, t.dim)),
                                             jnp.zeros((1, t.n_points))))
  return {"model.num_layers, model.width, task.n_points": shapes}


def arm_distribution(config, arm: str) -> tuple[float, float]:
  """(condition_number, noise_std) of an arm's prompts."""
  return {"noiseless": (1.0, 0.0), "noisy": (1.0, float(config.task.noise_std)),
          "ill_conditioned": (float(config.task.condition_number), 0.0)}[arm]


def trains_from_scratch(config, arm: str) -> bool:
  """Whether the arm trains from initialization (else it fine-tunes the noiseless model)."""
  return arm == "noiseless" or config.arms_init == "scratch"


def arm_curriculum(config, from_scratch: bool) -> tasks.Curriculum | None:
  """The prompt curriculum of an arm: Garg et al.'s (Sec. 3) when task.curriculum is set.

  The curriculum is for a model trained from initialization; an arm that fine-tunes a
  trained model (arms_init = "noiseless") sees full-size prompts from its first step.
  """
  t = config.task
  if not (t.curriculum and from_scratch):
    return None
  return tasks.Curriculum(t.dims_start, t.dim, t.dims_inc, t.points_start, t.n_points,
                          t.points_inc, t.curriculum_interval)


def train_arm(config, arm: str, workdir: str, init_params=None):
  """Trains the arm's model (from `init_params` if given).

  Returns (model, params, history, seconds, choice): `choice` is the best-of-k
  record of `jaxlab.train.restarts` (None without restarts).
  """
  t, m = config.task, config.model
  kappa, sigma = arm_distribution(config, arm)
  # bfloat16 compute, float32 params and optimizer state (jaxlab.models.precision).
  model = ICLTransformer(num_layers=m.num_layers, num_heads=m.num_heads, width=m.width,
                         max_points=t.n_points, normalize=m.normalize,
                         dtype=precision.resolve(m.compute_dtype, "model.compute_dtype"))
  curriculum = arm_curriculum(config, from_scratch=init_params is None)
  seed = config.seed * 1000 + ARMS.index(arm)
  batches = training.PromptBatches(seed, config.train.batch_size, t.n_points, t.dim,
                                   condition_number=kappa, noise_std=sigma, curriculum=curriculum)
  k_init, k_train = jax.random.split(jax.random.key(seed))

  def init(k):
    return model.init(k, jnp.zeros((1, t.n_points, t.dim)), jnp.zeros((1, t.n_points)))

  # Best-of-k restarts for a model trained from scratch (train.candidates > 1):
  # candidate 0 is the single run's init, candidate j > 0 uses fold_in(k_init, j).
  k = int(config.train.candidates) if init_params is None else 1
  inits = [init_params] if init_params is not None else \
      [init(k_init)] + [init(jax.random.fold_in(k_init, j)) for j in range(1, k)]
  steps = int(config.arms[arm])
  tx, schedule = recipes.build_optimizer(config.optimizer, steps)
  if config.train.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.train.clip_norm), tx)
  loss_fn = training.regression_loss(model.apply)
  select_steps = int(config.train.candidate_steps)
  score = None
  if k > 1:
    # The choice is scored on held-out prompts of the arm's distribution, at the
    # curriculum stage of the last candidate update.
    held_out = training.PromptBatches(seed + 500, int(config.train.candidate_eval_prompts),
                                      t.n_points, t.dim, condition_number=kappa,
                                      noise_std=sigma, curriculum=curriculum)(select_steps - 1)
    score = jax.jit(lambda p: loss_fn(p, held_out, None)[0])
  start = time.time()
  result, choice = restarts.train_best_of(
      loss_fn, inits, tx, batches, num_steps=steps, select_steps=select_steps,
      score_fn=score, key=k_train, workdir=workdir, log_every=config.train.log_every_steps,
      checkpoint_every=config.train.checkpoint_every_steps, lr_schedule=schedule,
      progress=config.train.progress, desc=f"icl_linreg/{arm}",
      mesh=mesh_lib.from_config(config))
  return model, result.state.params, result.history, time.time() - start, choice


def _headline(ev: dict, dim: int, arm: str) -> dict:
  """The arm's scalar results (the acceptance numbers)."""
  e = {k: np.asarray(v) for k, v in ev["error"].items()}
  n = np.asarray(ev["n_examples"])
  full = n >= dim + 1  # enough examples for least squares to be exact (noiseless)
  spd = {k: np.asarray(v) for k, v in ev["prediction_difference"].items()}
  knn = [k for k in spd if k.endswith("_nn")][0]
  newton = np.asarray(ev["layer_newton_steps"][1:])  # block outputs (layer 0 = embedding)
  out = {
      "model_error_max_n_ge_d_plus_1": float(e["model"][full].max()),
      "averaging_over_model_min_n_ge_d_plus_1": float((e["averaging"][full]
                                                        / e["model"][full]).min()),
      "closer_to_least_squares_than_knn_all_n": bool(np.all(
          spd["least_squares"][1:] < spd[knn][1:])),
      "layer_newton_steps": ev["layer_newton_steps"],
      "layer_gd_steps": ev["layer_gd_steps"],
      # Monotone trend over the blocks: Spearman rank correlation of block index vs
      # best-matching Newton iterations (and the strict non-decreasing flag).
      "layer_newton_nondecreasing": bool(np.all(np.diff(newton) >= 0)
                                         and newton[-1] > newton[0]),
      "layer_newton_spearman": analysis.spearman(np.arange(len(newton)), newton),
      "layer_gd_spearman": analysis.spearman(np.arange(len(newton)),
                                             ev["layer_gd_steps"][1:]),
      "error_similarity": ev["error_similarity"],
  }
  if arm == "noisy":
    # Where least squares and ridge differ most (n ~ d), which one the model tracks.
    out["spd_model_ridge_mean"] = float(spd["ridge"][1:].mean())
    out["spd_model_least_squares_mean"] = float(spd["least_squares"][1:].mean())
    out["closer_to_ridge_than_least_squares"] = bool(
        out["spd_model_ridge_mean"] < out["spd_model_least_squares_mean"])
  if arm == "ill_conditioned":
    gd_err = np.asarray(ev["gd_error"])
    steps = ev["gd_steps"]
    # The fewest GD steps whose error matches the model's at every n >= d + 1.
    ok = [s for s, g in zip(steps, gd_err, strict=True) if np.all(g[full] <= e["model"][full])]
    out["gd_steps_to_match_model"] = ok[0] if ok else f"> {steps[-1]}"
    out["model_error_mean_n_ge_d_plus_1"] = float(e["model"][full].mean())
    out["gd_max_steps_error_mean_n_ge_d_plus_1"] = float(gd_err[-1][full].mean())
    newt_err = np.asarray(ev["newton_error"])
    okn = [s for s, g in zip(ev["newton_steps"], newt_err, strict=True)
           if np.all(g[full] <= e["model"][full])]
    out["newton_steps_to_match_model"] = okn[0] if okn else f"> {ev['newton_steps'][-1]}"
  return out


def main(config, workdir: str) -> dict:
  validate(config)
  start = time.time()
  t = config.task
  summary: dict = {"dim": t.dim, "n_points": t.n_points, "arms_init": config.arms_init}
  evals = {}
  trained = {}
  for arm in ARMS:
    if not config.arms[arm]:
      continue
    arm_dir = os.path.join(workdir, arm)
    warm = not trains_from_scratch(config, arm)  # fine-tunes the noiseless model; validate() checked
    model, params, history, seconds, choice = train_arm(
        config, arm, arm_dir, init_params=trained["noiseless"] if warm else None)
    trained[arm] = params
    kappa, sigma = arm_distribution(config, arm)
    predict = training.predict_fn(model.apply)
    ev = evaluation.evaluate_model(
        lambda x, y, params=params, predict=predict: predict(params, x, y),
        dim=t.dim, n_points=t.n_points,
        key=jax.random.fold_in(jax.random.key(config.seed), 7 + ARMS.index(arm)),
        num_prompts=config.eval.num_prompts, probe_prompts=config.eval.probe_prompts,
        condition_number=kappa, noise_std=sigma, newton_steps=config.eval.newton_steps,
        gd_steps=config.eval.gd_steps, weight_contexts=config.eval.weight_contexts,
        weight_prompts=config.eval.weight_prompts, knn_k=config.eval.knn_k)
    io.write_json(os.path.join(arm_dir, "eval.json"), ev)
    evals[arm] = ev
    head = _headline(ev, t.dim, arm)
    head["train_seconds"] = seconds
    head["final_train_loss"] = history[-1]["loss"] if history else None
    if choice is not None:
      head["candidates"] = choice
    summary[arm] = head
  if "noiseless" in summary:
    for k in ("model_error_max_n_ge_d_plus_1", "averaging_over_model_min_n_ge_d_plus_1",
              "closer_to_least_squares_than_knn_all_n", "layer_newton_spearman"):
      summary[f"noiseless_{k}"] = summary["noiseless"][k]
  summary["wall_time_s"] = time.time() - start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  plot_error_curves(evals, workdir)
  plot_layer_matches(evals, workdir)
  return summary


def plot_error_curves(evals: dict, workdir: str) -> None:
  """Error/d of the transformer and the baselines vs n, one panel per arm, one legend.

  Log y axis floored at 1e-4 (exact least squares, ~1e-12, is drawn on the floor) so
  that errors of a few 1e-2 stay apart from it; dotted line at n = d, where least
  squares becomes exact on noiseless prompts (needs the workdir's config.json).
  """
  floor = 1e-4
  cfg_path = os.path.join(workdir, "config.json")
  task = io.read_json(cfg_path)["task"] if os.path.exists(cfg_path) else {}
  titles = {"noiseless": "noiseless",
            "noisy": f"noisy (σ = {task['noise_std']:g})" if task else "noisy",
            "ill_conditioned": (f"ill-conditioned (κ = {task['condition_number']:g})"
                                if task else "ill-conditioned")}
  style = {"model": ("transformer", "C0", "o-", 2.5),  # (label, colour, format, width)
           "least_squares": ("least squares", "C1", "-", 1.5),
           "ridge": ("ridge (λ = σ²)", "C4", "--", 1.5),
           "averaging": ("averaging", "C2", "-", 1.2)}
  fig, axes = plt.subplots(1, len(evals), figsize=(4.2 * len(evals), 3.6), squeeze=False,
                           sharey=True)
  handles = {}
  top = 2 * max(max(err) for ev in evals.values() for err in ev["error"].values())
  for ax, (arm, ev) in zip(axes[0], evals.items(), strict=True):
    n = np.asarray(ev["n_examples"])
    for name, err in ev["error"].items():
      label, color, fmt, lw = style.get(
          name, (name.replace("_nn", "-NN") if name.endswith("_nn") else name, "C3", "-", 1.2))
      (line,) = ax.plot(n, np.maximum(np.asarray(err), floor), fmt, color=color, lw=lw,
                        ms=4, label=label)
      handles.setdefault(label, line)
    if task:
      handles.setdefault("n = d", ax.axvline(task["dim"], color="0.4", ls=":", lw=1,
                                             label="n = d"))
    ax.set(xlabel="in-context examples n", yscale="log", ylim=(floor / 2, top),
           title=titles.get(arm, arm))
    ax.grid(True, which="major", alpha=0.3)
  axes[0][0].set_ylabel(f"squared error / d (clipped at {floor:g})")
  order = [v[0] for v in style.values()]
  labels = sorted(handles, key=lambda k: order.index(k) if k in order else len(order))
  fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=len(labels),
             fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  io.save_figure(fig, workdir, "error_curves")


def plot_layer_matches(evals: dict, workdir: str) -> None:
  """Per layer, the Newton iterations / GD steps whose predictions the layer's probe
  matches best. The GD axis is symlog (linear below 1) so that 0 steps is drawn at 0."""
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
  gd_ticks = set()
  for i, (arm, ev) in enumerate(evals.items()):
    layers = np.arange(len(ev["layer_newton_steps"]))
    kw = dict(marker="os^"[i % 3], ms=9 - 2 * i, label=arm.replace("_", "-"))  # overlaps show
    a1.plot(layers, ev["layer_newton_steps"], "-", **kw)
    a2.plot(layers, ev["layer_gd_steps"], "-", **kw)
    gd_ticks.update(int(s) for s in ev["gd_steps"])
  a1.set(xlabel="layer (0 = embedding)", ylabel="best-matching Newton iterations",
         title="layer → iterative Newton")
  a2.set_yscale("symlog", linthresh=1, base=2)
  a2.set_yticks(sorted(gd_ticks), [str(s) for s in sorted(gd_ticks)])
  a2.minorticks_off()
  a2.set(xlabel="layer (0 = embedding)", ylabel="best-matching GD steps (symlog)",
         title="layer → gradient descent")
  for ax in (a1, a2):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
  a1.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  top = max(max(ev["layer_newton_steps"]) for ev in evals.values())
  a1.set_ylim(-0.05 * max(top, 1) - 0.2, 1.05 * max(top, 1) + 0.2)
  handles, labels = a1.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.06, 1, 1))
  io.save_figure(fig, workdir, "layer_matches")
