"""Config checks that run before anything compiles; each raises a ValueError
naming the config key, the bad value and what is allowed."""
from __future__ import annotations

from typing import Any, Iterable

import jax


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


def train_split(config: Any, prefix: str = "data", fraction: float = 0.8) -> None:
  """`{prefix}.num_train` must fit in the train split (the first `fraction`) of
  `{prefix}.num_samples`, as `jaxlab.data.mnist1d` splits them."""
  n, total = _get(config, f"{prefix}.num_train"), _get(config, f"{prefix}.num_samples")
  if n > fraction * total:
    raise ValueError(f"config key '{prefix}.num_train': {n}; allowed: at most {fraction:g} × "
                     f"{prefix}.num_samples ({total}, the train split)")
