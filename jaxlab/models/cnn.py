"""A small convolutional classifier with BatchNorm and dropout, and contract losses
for any flax classifier (linen or nnx).

`SmallCNN` is the "your own model" of the tests, notebooks and benchmarks: two
3×3 convolutions (each Conv → BatchNorm → ReLU), global average pooling,
dropout and a Dense readout; it runs on sklearn digits (8×8×1) and any other
NHWC images.

`linen_classifier_loss(module)` and `nnx_classifier_loss(graphdef)` turn a
classifier into a loss of the model contract (`jaxlab.models.contract`):
`loss_fn(params, batch, key=None, *, state=None, train=True) -> (loss, aux)`,
mean softmax cross-entropy on `batch["y"]`, aux = accuracy and the new state.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxlab.models.tract import TrActConv


class SmallCNN(nn.Module):
  """Conv(3×3) → BatchNorm → ReLU per entry of `features`, mean-pool, dropout, Dense.

  `__call__(x, train)`: in train mode BatchNorm uses the batch's statistics and
  updates its running averages (collection `batch_stats`), dropout draws from
  the `dropout` rng; in eval mode both are deterministic. `tract_lam=λ` makes
  the first convolution a `TrActConv` (Petersen et al. 2024; same parameters,
  kernel gradient (XᵀX/b + λI)⁻¹ ∇W over its 3×3×C patches); None (default):
  a plain nn.Conv.
  """

  features: Sequence[int] = (16, 32)
  num_classes: int = 10
  dropout_rate: float = 0.1
  batch_norm: bool = True
  tract_lam: float | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, f in enumerate(self.features):
      # Explicit names are the ones flax gave before (Conv_0, Conv_1, ...), so the
      # TrAct first layer keeps the parameter tree of the plain one.
      if i == 0 and self.tract_lam is not None:
        x = TrActConv(f, (3, 3), lam=self.tract_lam, padding="SAME", name="Conv_0")(x)
      else:
        x = nn.Conv(f, (3, 3), padding="SAME", name=f"Conv_{i}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = x.mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def _ce(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, dict]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, {"accuracy": jnp.mean(logits.argmax(-1) == y)}


def linen_init(module: nn.Module, key: jax.Array, x: jax.Array) -> tuple[Any, Any]:
  """`(params, state)` of a linen module: state is every collection but `params`
  (None when there is none)."""
  variables = module.init({"params": key, "dropout": key}, x, train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return params, (variables or None)


def linen_classifier_loss(module: nn.Module, *, rng_collections: Sequence[str] = ("dropout",)):
  """A contract loss for a linen classifier whose `__call__(x, train)` returns logits.

  Train mode: the mutable collections in `state` are updated (returned under
  aux["state"]) and `key` feeds `rng_collections`. Eval mode: running
  statistics, no rng, state unchanged.
  """

  def loss_fn(params, batch, key=None, *, state=None, train=True):
    variables = {"params": params, **(state or {})}
    if train:
      rngs = {c: jax.random.fold_in(key, i) for i, c in enumerate(rng_collections)} \
          if key is not None else None
      if state:
        logits, new_state = module.apply(variables, batch["x"], train=True, rngs=rngs,
                                         mutable=list(state))
        new_state = dict(new_state)
      else:
        logits, new_state = module.apply(variables, batch["x"], train=True, rngs=rngs), state
    else:
      logits, new_state = module.apply(variables, batch["x"], train=False), state
    loss, metrics = _ce(logits, batch["y"])
    return loss, {**metrics, "state": new_state}

  return loss_fn


def nnx_classifier_loss(graphdef: Any):
  """A contract loss for an nnx classifier split as `graphdef, params, state =
  nnx.split(model, nnx.Param, ...)`; `model(x)` returns logits.

  The module is merged inside the loss, switched to train or eval mode
  (`model.train()` / `model.eval()`: BatchNorm statistics, dropout), called,
  and split again: the non-Param part (batch statistics, rng counters) is the
  new state. Dropout draws from the module's own `nnx.Rngs` (carried in the
  state), so `key` is not used.
  """
  from flax import nnx

  def loss_fn(params, batch, key=None, *, state=None, train=True):
    del key
    # copy=True: fresh Variables in this trace (merging the cached ones and
    # then updating BatchNorm's statistics under jax.grad is a TraceContextError).
    model = nnx.merge(graphdef, params, *([state] if state is not None else []), copy=True)
    model.train() if train else model.eval()
    logits = model(batch["x"])
    loss, metrics = _ce(logits, batch["y"])
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return loss, {**metrics, "state": new_state if train else state}

  return loss_fn
