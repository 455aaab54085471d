"""The train state and the jitted train step."""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


class TrainState(NamedTuple):
  """Everything a run needs to continue: params, optimizer state, step, key."""

  params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar: the number of updates applied so far
  key: jax.Array  # typed PRNG key; the step's key is fold_in(key, step)


def init_state(params: Any, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), key)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
                    inject_nan_at_step: int | None = None,
                    jit: bool = True) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """Builds `step(state, batch) -> (state, metrics)`, jitted once, state donated.

  Args:
    loss_fn: `(params, batch, key) -> (loss, aux)`; aux is a dict of scalars
      that is added to the metrics.
    tx: any optax transformation; `update` gets `params` (for weight decay,
      projections, ...).
    lr_schedule: if given, the step logs `learning_rate = lr_schedule(step)`.
    inject_nan_at_step: test hook — the loss of step k (the k-th update,
      counted from 1) becomes NaN.
    jit: set False to get the raw function (e.g. to wrap it in your own jit).

  Metrics: loss, the aux metrics, the L2 norms grad_norm, param_norm,
  update_norm, learning_rate (with a schedule), and `finite` (true when the
  loss, the gradient and the updated parameters are finite).
  """

  def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
    key = jax.random.fold_in(state.key, state.step)

    def loss_with_hook(params):
      loss, aux = loss_fn(params, batch, key)
      if inject_nan_at_step is not None:
        # Multiplied, not replaced, so that the gradient goes NaN too, as in a
        # real divergence.
        loss = loss * jnp.where(state.step + 1 == inject_nan_at_step, jnp.nan, 1.0)
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_with_hook, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    param_norm = optax.tree.norm(params)
    metrics = {
        "loss": loss,
        **aux,
        "grad_norm": grad_norm,
        "param_norm": param_norm,
        "update_norm": optax.tree.norm(updates),
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm),
    }
    if lr_schedule is not None:
      metrics["learning_rate"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    return TrainState(params, opt_state, state.step + 1, state.key), metrics

  return jax.jit(step, donate_argnums=0) if jit else step
