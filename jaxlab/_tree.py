"""Pytree helpers shared by the parts of jaxlab (no jaxlab imports)."""
from __future__ import annotations


def path_parts(path: tuple) -> tuple[str, ...]:
  """A leaf's key path as strings, the same whether a node is a dict, a list or
  tuple, or a NamedTuple/dataclass: ("opt_state", "0", "mu", "dense", "kernel")."""
  out = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)
