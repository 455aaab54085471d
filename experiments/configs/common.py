"""Helpers shared by every config: the `:arg` parser and the base ConfigDict.

A config file is `experiments/configs/NAME.py` with `get_config(arg=None)`.
`arg` is a comma list, e.g. `quick,d=10,arm=noisy`: bare words are flags set
to True, `key=value` pairs are parsed as Python literals when they can be.
"""
from __future__ import annotations

import ast
from typing import Any

import ml_collections


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"quick,d=10"` into a ConfigDict over `defaults`.

  Every option must be named in `defaults`; an unknown one raises ValueError
  listing the allowed options. A value is converted to its default's type.

  >>> parse_arg("quick,d=10", quick=False, d=5).d
  10
  """
  opts = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(
          f"config argument {key!r} (in {arg!r}) is not allowed; "
          f"allowed: {sorted(defaults)}")
    new = _literal(value.strip()) if sep else True
    old = defaults[key]
    if old is not None and not isinstance(new, type(old)):
      if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        new = float(new)
      else:
        raise ValueError(
            f"config argument {key!r} got {new!r} ({type(new).__name__}); "
            f"expected {type(old).__name__}")
    opts[key] = new
  return ml_collections.ConfigDict(opts)


def base_config(study: str, *, seed: int = 0, quick: bool = False) -> ml_collections.ConfigDict:
  """The keys every study has: `study` (module in experiments/), `seed`, `quick`."""
  c = ml_collections.ConfigDict()
  c.study = study
  c.seed = seed
  c.quick = quick
  return c


def mesh_config() -> ml_collections.ConfigDict:
  """The device mesh of a study that trains through `jaxlab.train.train`.

  `mesh.data × mesh.fsdp` = the device count; `mesh.data = -1` takes the
  device count divided by `mesh.fsdp`. `mesh.fsdp = 1` (default): every device
  on "data", state replicated; `mesh.fsdp = N`: parameters and optimizer state
  sharded N ways (FSDP, see `jaxlab.train.mesh`).
  """
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1})
