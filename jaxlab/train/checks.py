"""Config checks that run before anything compiles; each raises a ValueError
naming the config key, the bad value and what is allowed."""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np


def _get(config: Any, key: str) -> Any:
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def choice(config: Any, key: str, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  value = _get(config, key)
  if value not in allowed:
    raise ValueError(f"config key {key!r}: {value!r} is not allowed; allowed: {list(allowed)}")


def positive(config: Any, key: str, *, allow_zero: bool = False) -> None:
  value = _get(config, key)
  ok = value >= 0 if allow_zero else value > 0
  if isinstance(value, bool) or not ok:
    bound = "≥ 0" if allow_zero else "> 0"
    raise ValueError(f"config key {key!r}: {value!r} is not allowed; allowed: a number {bound}")


def divisible_by_devices(config: Any, key: str) -> None:
  value = _get(config, key)
  n = jax.device_count()
  if value % n:
    raise ValueError(
        f"config key {key!r}: {value} is not divisible by the device count {n}; "
        f"allowed: a multiple of {n}")


def positive_sizes(config: Any, key: str) -> None:
  """A non-empty tuple of positive ints (layer widths)."""
  value = _get(config, key)
  if not value or min(value) < 1:
    raise ValueError(f"config key {key!r}: {value!r}; allowed: a non-empty tuple of positive ints")


def warmup_below(config: Any, warmup_key: str, *steps_keys: str) -> None:
  """`warmup_key` < every `steps_keys` value > 0 (a schedule warms up, then decays)."""
  warmup = _get(config, warmup_key)
  for key in steps_keys:
    steps = _get(config, key)
    if steps > 0 and not warmup < steps:
      raise ValueError(f"config key {warmup_key!r}: {warmup}; allowed: fewer than {key} "
                       f"({steps}) steps")


def mnist1d_train_size(num_samples: int, fraction: float = 0.8) -> int:
  """Training signals of `jaxlab.data.mnist1d(num_samples)`: MNIST-1D makes whole rounds
  of its 10 classes (num_samples // 10 of each) and trains on the first `fraction`."""
  return int(fraction * (num_samples // 10) * 10)


def mnist1d_samples(config: Any, prefix: str = "data", batch_key: str | None = None) -> None:
  """`{prefix}.num_samples` makes an MNIST-1D data set (at least one signal per class),
  and a batch of `batch_key` fits in its training split."""
  total = _get(config, f"{prefix}.num_samples")
  if total < 10:
    raise ValueError(f"config key '{prefix}.num_samples': {total}; allowed: at least 10 (one "
                     "MNIST-1D signal per class)")
  if batch_key is not None:
    size, batch = mnist1d_train_size(total), _get(config, batch_key)
    if batch > size:
      raise ValueError(f"config key {batch_key!r}: {batch}; allowed: at most the {size} training "
                       f"signals of {prefix}.num_samples={total}")


def train_split(config: Any, prefix: str = "data", fraction: float = 0.8) -> None:
  """`{prefix}.num_train` must fit in the train split (the first `fraction`) of
  `{prefix}.num_samples`, as `jaxlab.data.mnist1d` splits them."""
  mnist1d_samples(config, prefix)
  n, total = _get(config, f"{prefix}.num_train"), _get(config, f"{prefix}.num_samples")
  if n > mnist1d_train_size(total, fraction):
    raise ValueError(f"config key '{prefix}.num_train': {n}; allowed: at most "
                     f"{mnist1d_train_size(total, fraction)}, the train split ({fraction:g}) of "
                     f"{prefix}.num_samples={total} in whole rounds of the 10 classes")


# Seeds: JAX takes any int64 (`jax.random.key`; int32 once traced without
# jax_enable_x64), numpy's `default_rng` any int >= 0, and the legacy
# `np.random.seed` (MNIST-1D's generator) only [0, 2**32 - 1]. [0, 2**31 - 1]
# is what all of them accept, and it leaves room for the studies' derived
# seeds (seed + 1, seed + k, ...) below numpy's 2**32 - 1.
SEED_RANGE = (0, 2**31 - 1)


def is_seed_key(key: str) -> bool:
  """`seed`, `seeds`, `*_seed`, `*_seeds` (the last part of a dotted key)."""
  leaf = key.rsplit(".", 1)[-1]
  return leaf in ("seed", "seeds") or leaf.endswith(("_seed", "_seeds"))


def _leaves(config: Any, prefix: str = ""):
  for k, v in config.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield prefix + k, v


def _scalars(value: Any):
  if isinstance(value, (tuple, list)):
    for v in value:
      yield from _scalars(v)
  else:
    yield value


def config_leaves(config: Any) -> None:
  """Checks every leaf of a config: floats finite (also inside tuples), seeds in SEED_RANGE."""
  lo, hi = SEED_RANGE
  for key, value in _leaves(config):
    for v in _scalars(value):
      if isinstance(v, float) and not math.isfinite(v):
        where = "" if v is value else f" has the element {v!r}"
        raise ValueError(f"config key {key!r}: {value!r}{where}, which is not finite; allowed: "
                         "finite numbers")
      if is_seed_key(key) and isinstance(v, int) and not isinstance(v, bool) \
         and not lo <= v <= hi:
        what = "" if v is value else f" (element {v!r})"
        raise ValueError(f"config key {key!r}: {value!r}{what} is not a valid seed; allowed: an "
                         f"int in [{lo}, 2**31 - 1] (what both jax.random.key and numpy accept)")


# The memory check. A study's `param_shapes(config)` returns
# `{"key[, key...]": params}`: for each model it builds, the config key(s) that
# set its size and its abstract parameters (`jax.eval_shape` of the model's
# init: no allocation, no compile; a leading axis for copies trained side by
# side, such as vmapped learning rates or ensemble members). Models listed
# separately are built one after another, so the peak is the largest entry.
# Each parameter is counted PARAM_MEMORY_MULTIPLIER = 4 times: the parameters,
# their gradients and Adam's two moments (plain SGD needs 2, M-FAC's gradient
# history far more). Activations, data and Lanczos bases are not counted. It
# is an estimate, meant to refuse sizes that are far out of reach (a typo, an
# extra zero) before minutes of compiling, not to find the largest that fits.
PARAM_MEMORY_MULTIPLIER = 4

# (input length, classes) of `jaxlab.data.mnist1d`, known without generating it.
MNIST1D_DIMS = (40, 10)


def mlp_shapes(input_dim: int, hidden_sizes: Sequence[int], num_outputs: int,
               **kwargs: Any) -> Any:
  """Abstract parameters of `jaxlab.models.mlp(...)` (traced, never allocated)."""
  from jaxlab import models

  model = models.mlp(input_dim, tuple(hidden_sizes), num_outputs, **kwargs)
  return jax.eval_shape(lambda: model.init(jax.random.key(0)))


def stacked(shapes: Any, copies: int) -> Any:
  """`shapes` with a leading axis of `copies` (vmapped copies of the parameters)."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct((copies, *s.shape), s.dtype), shapes)


def tree_bytes(shapes: Any) -> int:
  """Bytes of a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))


def available_memory() -> tuple[int, str]:
  """(bytes, where): the first accelerator's `bytes_limit`, else the host's free memory."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"]), f"{device.platform} memory (device 0 bytes_limit)"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024, "host memory (MemAvailable)"
  except OSError:
    pass
  pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
  return int(pages * os.sysconf("SC_PAGE_SIZE")), "host memory (free pages)"


def param_memory(config: Any, shapes_by_keys: Mapping[str, Any], *,
                 multiplier: int = PARAM_MEMORY_MULTIPLIER,
                 available: tuple[int, str] | None = None) -> None:
  """Refuses a config whose parameters (× `multiplier`) exceed the memory available.

  `shapes_by_keys` is what a study's `param_shapes(config)` returns (see above).
  """
  if not shapes_by_keys:
    return
  keys, shapes = max(shapes_by_keys.items(), key=lambda kv: tree_bytes(kv[1]))
  need = multiplier * tree_bytes(shapes)
  have, where = available if available is not None else available_memory()
  if have <= 0 or need <= have:
    return
  count = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
  names = [k.strip() for k in keys.split(",")]
  values = ", ".join(f"{k}={_get(config, k)!r}" for k in names)
  gib = 2.0**30
  raise ValueError(
      f"config key{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: {values} needs "
      f"about {need / gib:.1f} GiB for {count:,} parameters (× {multiplier}: parameters, "
      f"gradients and optimizer state), more than the {have / gib:.1f} GiB of {where}; allowed: "
      "sizes whose parameters fit")
