"""Mixed precision: float32 master weights, a bfloat16 (or float32) compute dtype.

The recipe (Micikevicius et al. 2018, "Mixed Precision Training",
arXiv:1710.03740, Sec. 3, with bfloat16 in place of float16, so no loss
scaling: bfloat16 has float32's 8-bit exponent):

- the parameters and the optimizer state stay float32 (the master weights);
- the forward and backward passes compute in the compute dtype: parameters and
  inputs are cast inside the differentiated function, so the gradient with
  respect to the float32 parameters comes back float32 (the transpose of a
  cast is a cast);
- losses and reductions accumulate in float32: softmax, LayerNorm/BatchNorm
  statistics (flax computes them in float32) and the loss itself, computed on
  outputs cast to float32.

jaxlab's models take it as an argument (`mlp(..., compute_dtype=...)`,
`ICLTransformer(dtype=...)`, `SmallCNN(dtype=...)`: flax `dtype=` with the
default `param_dtype=float32`); the studies read it from the config key
`model.compute_dtype` ("float32" by default, or "bfloat16"). A model of your
own gets it from :func:`mixed_precision`, which wraps any loss of the model
contract.

bfloat16 keeps 8 significant bits (7 stored + the implicit one): one rounding
is off by at most 2^-9 ≈ 0.2% relative (unit roundoff u = 2^-8 ≈ 0.4% between
neighbours). That is the scale of every bfloat16 tolerance in the tests.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16")
# bfloat16's unit roundoff: 2^-8 (8 significant bits); one rounding errs by at most half.
BF16_EPS = 2.0 ** -8


def resolve(compute_dtype: Any, name: str = "compute_dtype") -> Any:
  """The jnp dtype of `compute_dtype` ("float32" / "bfloat16", a dtype, or None: float32).

  Raises ValueError naming `name`, the value and the allowed values.
  """
  if compute_dtype is None:
    return jnp.dtype("float32")
  try:
    dt = jnp.dtype(compute_dtype) if not isinstance(compute_dtype, bool) else None
  except (TypeError, ValueError):
    dt = None
  if dt is None or dt.name not in COMPUTE_DTYPES:
    raise ValueError(f"{name}={compute_dtype!r}; allowed: one of {COMPUTE_DTYPES} "
                     "(float32 master weights either way)")
  return jnp.dtype(dt.name)


def check_config(config: Any, key: str = "model.compute_dtype") -> Any:
  """Checks the config key `key` (a string in COMPUTE_DTYPES) before anything compiles.

  Returns the jnp dtype. Raises ValueError naming the key, the value and the
  allowed values.
  """
  node = config
  for part in key.split("."):
    node = node[part]
  if not isinstance(node, str) or node not in COMPUTE_DTYPES:
    raise ValueError(f"config key {key!r}: {node!r} is not allowed; allowed: "
                     f"{list(COMPUTE_DTYPES)} (parameters and optimizer state stay float32)")
  return jnp.dtype(node)


def cast_floating(tree: Any, dtype: Any) -> Any:
  """`tree` with every floating leaf cast to `dtype` (integers, bools, keys untouched)."""
  def one(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x
  return jax.tree.map(one, tree)


def _to_float32(out: Any) -> Any:
  """The loss (and the scalar metrics of its aux, not the model state) as float32."""
  if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
    loss, aux = out
    aux = {k: (v if k == "state" else cast_floating(v, jnp.float32)) for k, v in aux.items()}
    return cast_floating(loss, jnp.float32), aux
  return cast_floating(out, jnp.float32)


@functools.lru_cache(maxsize=256)
def _wrapped(loss_fn: Callable, dtype_name: str, cast_batch: bool) -> Callable:
  dtype = jnp.dtype(dtype_name)

  @functools.wraps(loss_fn)  # keeps the signature: the contract form is read from it
  def loss(params, batch, *args, **kwargs):
    params = cast_floating(params, dtype)
    if cast_batch:
      batch = cast_floating(batch, dtype)
    return _to_float32(loss_fn(params, batch, *args, **kwargs))

  return loss


def mixed_precision(loss_fn: Callable, compute_dtype: Any = "bfloat16", *,
                    cast_batch: bool = True) -> Callable:
  """A contract loss that computes in `compute_dtype` with float32 master weights.

  `mixed_precision(loss_fn)(params, batch, ...)` casts the floating leaves of
  `params` (and of `batch`, unless `cast_batch=False`) to `compute_dtype`,
  calls `loss_fn`, and returns the loss and the aux metrics as float32 (a model
  state under aux["state"] is passed through). Differentiated with respect to
  float32 params, the gradient is float32: train it with `jaxlab.train.train`
  as any loss, and the optimizer state stays float32 too.

  Casting the inputs matters: a bfloat16 weight times a float32 input is
  promoted to a float32 product. Targets in the batch are cast as well
  (relative error ≤ 2^-9); compute the loss of a regression on float32 targets
  with `cast_batch=False` and cast the inputs in your model instead. For
  float32 loss reductions, let the model return float32 outputs (cast its
  logits) before the softmax/cross-entropy, as jaxlab's models do.

  Returns the same function object for the same (loss_fn, dtype, cast_batch),
  so jitted steps and probes built on it are compiled once. With
  `compute_dtype="float32"` the loss is returned unchanged.

  Example:
    >>> loss = mixed_precision(my_loss)                 # bfloat16 compute
    >>> result = jaxlab.train.train(loss, params, optax.adam(1e-3), batches, ...)
  """
  dtype = resolve(compute_dtype, "compute_dtype")
  if dtype == jnp.float32:
    return loss_fn
  try:
    return _wrapped(loss_fn, dtype.name, bool(cast_batch))
  except TypeError:  # an unhashable callable: a fresh wrapper
    return _wrapped.__wrapped__(loss_fn, dtype.name, bool(cast_batch))


@functools.lru_cache(maxsize=256)
def _wrapped_apply(apply_fn: Callable, dtype_name: str) -> Callable:
  dtype = jnp.dtype(dtype_name)

  @functools.wraps(apply_fn)
  def apply(params, x, *args, **kwargs):
    out = apply_fn(cast_floating(params, dtype), cast_floating(x, dtype), *args, **kwargs)
    return cast_floating(out, jnp.float32)

  return apply


def mixed_precision_apply(apply_fn: Callable, compute_dtype: Any = "bfloat16") -> Callable:
  """`apply_fn(params, x, ...)` computing in `compute_dtype`, its outputs float32.

  The model form of :func:`mixed_precision`: params and the floating leaves of
  `x` are cast to `compute_dtype`, the floating leaves of what it returns
  (outputs, or `(outputs, aux)`) come back float32, so a loss on them (a GGN's
  output Hessian, a softmax) is float32. Same function object per (apply_fn, dtype);
  `"float32"` returns `apply_fn` unchanged.
  """
  dtype = resolve(compute_dtype, "compute_dtype")
  if dtype == jnp.float32:
    return apply_fn
  try:
    return _wrapped_apply(apply_fn, dtype.name)
  except TypeError:
    return _wrapped_apply.__wrapped__(apply_fn, dtype.name)


__all__ = ["BF16_EPS", "COMPUTE_DTYPES", "cast_floating", "check_config", "mixed_precision",
           "mixed_precision_apply", "resolve"]
