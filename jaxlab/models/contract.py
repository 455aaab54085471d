"""The one model contract that training, the spectral probes, NTK and NaP read.

A model has three kinds of inputs, kept apart (the conventions of flax.linen's
`Module.apply(variables, x, mutable=..., rngs=...)` and Haiku's
`transform_with_state`):

- **params**: the pytree that is differentiated and updated by the optimizer;
- **state**: mutable model state that is carried, not differentiated
  (flax collections such as `batch_stats`; the non-Param part of an nnx
  module); `None` for a model without it;
- **key**: the rng of stochastic layers (dropout).

A user writes one loss and uses it everywhere:

    def loss_fn(params, batch, key=None, *, state=None, train=True):
      variables = {"params": params, **state}
      if train:   # batch statistics of this batch; running averages updated
        logits, new_state = model.apply(variables, batch["x"], train=True,
                                        rngs={"dropout": key}, mutable=list(state))
      else:       # running averages, no dropout; state unchanged
        logits, new_state = model.apply(variables, batch["x"], train=False), state
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
      return loss, {"accuracy": (logits.argmax(-1) == batch["y"]).mean(), "state": new_state}

Every consumer calls it through :func:`call`, which accepts, read once from
the signature:

| form | used for |
|---|---|
| `loss_fn(params, batch) -> loss` | a stateless, deterministic loss |
| `loss_fn(params, batch, key) -> (loss, aux)` | stochastic layers, no state |
| `loss_fn(params, batch, key, *, state, train) -> (loss, aux)` | the full contract |

The return value is a scalar or `(scalar, aux)`; `aux` is a dict of scalar
metrics and, under the key `"state"`, the updated model state (training only;
a probe evaluates at fixed state and ignores it). Training calls it with
`train=True` and the step's key; probes call it with `train=False` (running
statistics, no dropout) unless asked for train-mode batch statistics.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax

STATE_KEY = "state"


class LossSpec(NamedTuple):
  """Which of key / state / train a loss function takes."""

  takes_key: bool
  takes_state: bool
  takes_train: bool


@functools.lru_cache(maxsize=256)
def _spec_cached(fn: Callable) -> LossSpec:
  return _spec(fn)


def _spec(fn: Callable) -> LossSpec:
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):  # a builtin or C callable: assume the training form
    return LossSpec(True, False, False)
  params = list(sig.parameters.values())
  var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
  var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
  positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  names = {p.name for p in params}
  takes_key = var_pos or len(positional) >= 3 or "key" in names
  return LossSpec(takes_key, var_kw or "state" in names, var_kw or "train" in names)


def _requires_state(fn: Callable) -> bool:
  """Whether `fn` has a `state` parameter without a default (so a call without one fails)."""
  try:
    p = inspect.signature(fn).parameters.get(STATE_KEY)
  except (TypeError, ValueError):
    return False
  return p is not None and p.default is p.empty and p.kind in (p.KEYWORD_ONLY,
                                                               p.POSITIONAL_OR_KEYWORD)


def loss_spec(loss_fn: Callable) -> LossSpec:
  """The contract form of `loss_fn`, from its signature."""
  try:
    return _spec_cached(loss_fn)
  except TypeError:  # unhashable callable
    return _spec(loss_fn)


def check_loss(loss_fn: Callable, *, state: Any = None, name: str = "loss_fn") -> LossSpec:
  """Raises ValueError (before anything compiles) when `loss_fn` cannot take a given state."""
  if not callable(loss_fn):
    raise ValueError(f"{name}={loss_fn!r} is not callable; allowed: a function "
                     "(params, batch[, key][, *, state, train]) -> loss or (loss, aux)")
  spec = loss_spec(loss_fn)
  if state is None and _requires_state(loss_fn):
    raise ValueError(
        f"{name} requires a `state` argument (a model state, e.g. BatchNorm's batch_stats), but "
        "no model state was given; allowed: pass the model's initial state (train.train's "
        "`model_state`, train_best_of's `model_states`, the probes' `state`), or give the "
        "loss's `state` a default")
  if state is not None and not spec.takes_state:
    raise ValueError(
        f"{name} takes no `state` argument, but a model state was given (e.g. BatchNorm's "
        "batch_stats); allowed: a loss `loss_fn(params, batch, key, *, state, train)` that "
        "returns (loss, {..., 'state': new_state}) (see jaxlab.models.contract)")
  return spec


def call(loss_fn: Callable, params: Any, batch: Any, *, key: jax.Array | None = None,
         state: Any = None, train: bool = True) -> tuple[jax.Array, dict, Any]:
  """Calls a loss of any contract form; returns `(loss, metrics, new_state)`.

  `metrics` is aux without its `"state"` entry; `new_state` is aux["state"]
  when the loss returns one, else `state` unchanged. A loss that takes a key
  but is given none (a probe at eval mode) gets a fixed key, so the call is
  deterministic.
  """
  spec = check_loss(loss_fn, state=state)
  args: list[Any] = [params, batch]
  if spec.takes_key:
    args.append(jax.random.key(0) if key is None else key)
  kwargs: dict[str, Any] = {}
  if spec.takes_state and state is not None:
    kwargs["state"] = state
  if spec.takes_train:
    kwargs["train"] = train
  out = loss_fn(*args, **kwargs)
  if isinstance(out, tuple):
    if len(out) != 2:
      raise ValueError(f"loss_fn returned a tuple of {len(out)}; allowed: a scalar loss or "
                       "(loss, aux dict)")
    loss, aux = out
  else:
    loss, aux = out, {}
  aux = {} if aux is None else aux
  if not isinstance(aux, Mapping):
    raise ValueError(f"loss_fn's aux is a {type(aux).__name__}; allowed: a dict of scalar "
                     "metrics, with the new model state under 'state'")
  metrics = {k: v for k, v in aux.items() if k != STATE_KEY}
  return loss, metrics, aux.get(STATE_KEY, state)


def _scalar(state, key, params, batch, *, loss_fn, train):
  return call(loss_fn, params, batch, key=key, state=state, train=train)[0]


@functools.lru_cache(maxsize=256)
def _scalar_fn(loss_fn: Callable, train: bool) -> Callable:
  # One function object per (loss_fn, train), so that jit caches keyed on it hit.
  return functools.partial(_scalar, loss_fn=loss_fn, train=train)


def scalar_loss(loss_fn: Callable, *, key: jax.Array | None = None, state: Any = None,
                train: bool = False) -> Callable[[Any, Any], jax.Array]:
  """`(params, batch) -> loss` at fixed key, state and mode: what a probe differentiates.

  Returned as a `jax.tree_util.Partial` whose leaves are `state` and `key`, so
  passing it into a jitted function passes them as arguments (no constants
  baked into the compiled code, one compile per shape). A stateless
  `(params, batch)` loss at eval mode is returned as it is.
  """
  check_loss(loss_fn, state=state)
  spec = loss_spec(loss_fn)
  if state is None and key is None and not spec.takes_key and not spec.takes_train:
    return loss_fn
  try:
    fn = _scalar_fn(loss_fn, bool(train))
  except TypeError:  # unhashable loss_fn
    fn = functools.partial(_scalar, loss_fn=loss_fn, train=bool(train))
  return jax.tree_util.Partial(fn, state, key)
