"""The train state and the jitted train step."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxlab.models import contract

LossFn = Callable[..., Any]  # the model contract's loss, see jaxlab.models.contract


class TrainState(NamedTuple):
  """Everything a run needs to continue: params, optimizer state, step, key,
  and the model's carried state (e.g. BatchNorm's `batch_stats`; None if none)."""

  params: Any
  opt_state: Any
  step: jax.Array  # int32 scalar: the number of updates applied so far
  key: jax.Array  # typed PRNG key; the step's key is fold_in(key, step)
  model_state: Any = None  # carried, never differentiated (jaxlab.models.contract)


def init_state(params: Any, tx: optax.GradientTransformation, key: jax.Array,
               model_state: Any = None) -> TrainState:
  return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), key, model_state)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
                    inject_nan_at_step: int | None = None,
                    jit: bool = True) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """Builds `step(state, batch) -> (state, metrics)`, jitted once, state donated.

  Args:
    loss_fn: a loss of the model contract (`jaxlab.models.contract`):
      `(params, batch[, key][, *, state, train]) -> loss or (loss, aux)`; aux
      is a dict of scalars added to the metrics, and with a model state its
      entry "state" is the new state. Called with `train=True` and the step's
      key `fold_in(state.key, state.step)`.
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
      loss, aux, model_state = contract.call(loss_fn, params, batch, key=key,
                                             state=state.model_state, train=True)
      if inject_nan_at_step is not None:
        # Multiplied, not replaced, so that the gradient goes NaN too, as in a
        # real divergence.
        loss = loss * jnp.where(state.step + 1 == inject_nan_at_step, jnp.nan, 1.0)
      return loss, (aux, model_state)

    (loss, (aux, model_state)), grads = jax.value_and_grad(
        loss_with_hook, has_aux=True)(state.params)
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
    return TrainState(params, opt_state, state.step + 1, state.key, model_state), metrics

  return jax.jit(step, donate_argnums=0) if jit else step
