"""Reusable pieces that turn a config into training ingredients.

`build_optimizer(config.optimizer, num_steps)` → (tx, schedule) from the
optimizer registry (`jaxlab.optim.get`); `classification_loss(apply_fn)` and
`classification_eval(apply_fn, x, y)` for softmax cross-entropy models.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(name: str, learning_rate: float, num_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
  """A learning-rate schedule with an optional linear warmup from 0.

  constant: lr; cosine: cosine decay to 0 (Loshchilov & Hutter 2017);
  linear: linear decay to 0. Decay runs over the steps after warmup.
  """
  if name not in SCHEDULES:
    raise ValueError(f"schedule={name!r}; allowed: {SCHEDULES}")
  if isinstance(learning_rate, numbers.Real) and not math.isfinite(learning_rate):
    raise ValueError(f"learning_rate={learning_rate!r}; allowed: a finite number (not nan or inf)")
  if not 0 <= warmup_steps < num_steps:
    raise ValueError(f"warmup_steps={warmup_steps}; allowed: 0 ≤ warmup_steps < {num_steps}")
  decay_steps = num_steps - warmup_steps
  main = {
      "constant": lambda: optax.constant_schedule(learning_rate),
      "cosine": lambda: optax.cosine_decay_schedule(learning_rate, decay_steps),
      "linear": lambda: optax.linear_schedule(learning_rate, 0.0, decay_steps),
  }[name]()
  if not warmup_steps:
    return main
  warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def check_optimizer_config(opt: Any, key: str = "optimizer") -> None:
  """Checks name, learning rate, schedule and warmup before anything compiles."""
  from jaxlab import optim

  if opt.name not in optim.NAMES:
    raise ValueError(
        f"config key '{key}.name': {opt.name!r} is not a registered optimizer; "
        f"allowed: {list(optim.NAMES)}")
  try:  # an optimizer that needs extra update arguments cannot run in the generic loop
    optim.registry.check_extra_args(opt.name)
  except ValueError as e:
    raise ValueError(f"config key '{key}.name': {e}") from None
  lr = opt.learning_rate
  if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
    why = ", which is not finite" if isinstance(lr, numbers.Real) and not math.isfinite(lr) else ""
    raise ValueError(
        f"config key '{key}.learning_rate': {lr!r}{why}; allowed: a number > 0 that is finite "
        "(not nan or inf; 1e999 parses as inf)")
  if opt.schedule not in SCHEDULES:
    raise ValueError(f"config key '{key}.schedule': {opt.schedule!r}; allowed: {list(SCHEDULES)}")
  if opt.warmup_steps < 0:
    raise ValueError(f"config key '{key}.warmup_steps': {opt.warmup_steps}; allowed: ≥ 0")


def build_optimizer(opt: Any, num_steps: int,
                    **hyperparams: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule) for a config block with name, learning_rate, schedule, warmup_steps."""
  from jaxlab import optim

  schedule = make_schedule(opt.schedule, opt.learning_rate, num_steps, opt.warmup_steps)
  return optim.get(opt.name, learning_rate=schedule, **hyperparams), schedule


def classification_loss(apply_fn: Callable) -> Callable:
  """`(params, batch, key) -> (mean cross-entropy, {"accuracy": ...})` for `apply_fn(params, x) -> (logits, aux)`.

  Labels ``batch["y"]`` must lie in [0, C), C = logits.shape[-1]. Checked in
  the loss: an out-of-range label makes the loss NaN, the run stops with
  NonFiniteError naming the step. (The loss is multiplied by NaN, so the
  gradient and then the parameters go NaN too and the loop's cheap check of
  the last step's flag sees it; optax alone would read label -1 as class C - 1.)
  """

  def loss_fn(params, batch, key):
    del key
    logits, _ = apply_fn(params, batch["x"])
    y = batch["y"]
    in_range = jnp.all((y >= 0) & (y < logits.shape[-1]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = loss * jnp.where(in_range, 1.0, jnp.nan).astype(loss.dtype)
    return loss, {"accuracy": jnp.mean(logits.argmax(-1) == y)}

  return loss_fn


def _check_labels(y: np.ndarray, num_classes: int | None, name: str = "y") -> None:
  """Host-side: integer labels in [0, num_classes) (only >= 0 when num_classes is None)."""
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name} has dtype {y.dtype}; allowed: integer class labels")
  bad = y < 0 if num_classes is None else (y < 0) | (y >= num_classes)
  if bad.any():
    values = np.unique(y[bad])
    shown = ", ".join(map(str, values[:10])) + (", ..." if values.size > 10 else "")
    allowed = (f"in [0, {num_classes}) (num_classes = logits.shape[-1])" if num_classes is not None
               else "in [0, num_classes) (num_classes = logits.shape[-1], read at the first call)")
    raise ValueError(f"{name} has {int(bad.sum())} label(s) out of range, values {shown}; "
                     f"allowed: labels {allowed}")


def classification_eval(apply_fn: Callable, x: Any, y: Any, prefix: str = "test") -> Callable:
  """A jitted `eval_fn(params) -> {prefix_loss, prefix_accuracy}` on fixed data.

  The labels are checked on the host: negative ones at construction, the
  upper bound at the first call (the class count is the logits' last axis,
  read with `jax.eval_shape`, which needs params). Raises ValueError naming
  the bad label values and the allowed range.
  """
  y_host = np.asarray(y)
  _check_labels(y_host, None)
  x, y = jnp.asarray(x), jnp.asarray(y_host)
  checked = False

  @jax.jit
  def evaluate(params):
    logits, _ = apply_fn(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return {f"{prefix}_loss": loss, f"{prefix}_accuracy": jnp.mean(logits.argmax(-1) == y)}

  def eval_fn(params):
    nonlocal checked
    if not checked:
      logits, _ = jax.eval_shape(apply_fn, params, x)
      _check_labels(y_host, logits.shape[-1])
      checked = True
    return evaluate(params)

  return eval_fn
