"""Default NaP labels for any flax model: linen param dicts and nnx `nnx.split` states.

NaP projects the weights that feed a normalization (Lyle et al. 2024,
arXiv:2407.01800; see `jaxlab.nap.projection` for the rule and our reading of
the paper). From the params alone this module finds, with no hand-written
labels:

- weight layers, by leaf name and shape: `kernel` (ndim ≥ 2, output features
  on the last axis: Dense (I, O), Conv (H, W, I, O), 1-D/3-D convolutions) and
  an optional `bias` of shape (O,); module names starting with `Dense`,
  `Conv`, `linear`, `fc`, ... are read as hints only;
- embeddings (`embedding`, 2-D): recognised and left free (a lookup table
  whose rows are usually added to other streams, so not scale-invariant);
- normalizations: a module whose only leaves are 1-D `scale` and/or `bias` of
  one size (LayerNorm, BatchNorm, RMSNorm, GroupNorm); its kind is read from
  the model state when given (batch statistics `mean`/`var` → BatchNorm), else
  from the name (`BatchNorm_i`, `bn*`, `batch_norm*` → per channel;
  `LayerNorm_i`, `ln*`, `RMSNorm_i`, `norm*`, anything else → per layer).

A weight layer is paired with the normalization it feeds when both sit in the
same parent module, the normalization has as many features as the layer has
outputs, and

- in a dict (linen `Conv_0`/`BatchNorm_0`, nnx attributes `conv1`/`bn1`,
  `conv`/`bn`, jaxlab `dense_0`/`norm_0`): their names agree after the type
  word (`Conv_0` ↔ `BatchNorm_0`: "0"; `conv_proj` ↔ `norm_proj`: "proj");
- in a list (`nnx.Sequential`, `nnx.List`): the normalization is the next
  entry with parameters.

When names leave a choice (`Dense_0` next to `LayerNorm_0` and `RMSNorm_0` of
one width; `Conv_0` and `Dense_0` next to `BatchNorm_0`), a convolution goes
with a BatchNorm and a Dense with a LayerNorm/RMSNorm; a choice still open
raises a ValueError rather than a guess.

The order of a dict cannot be used: `jax.tree.map` (hence every optimizer
step) rebuilds dicts with sorted keys, and nnx states are sorted anyway.

Labels. A paired layer's (kernel, bias) is one group named by its module
path; per output channel (`PerChannel`) when the normalization is per channel
(BatchNorm normalizes each channel on its own, so each channel's H×W×I slice
and bias are a symmetry by themselves), per layer otherwise (LayerNorm and
RMSNorm mix the channels, so only a common rescaling of the layer is). Every
other leaf stays free: the output layer (it feeds no normalization), the
normalizations' scale and offset (as `nap_mask` leaves them: not
scale-invariant on their own), embeddings and unknown modules.

Limits. The pairing reads names, not the model's graph: a layer whose
normalization is applied elsewhere or to a sum of branches, or auto-named
layers whose indices do not line up (`Dense_1` without a norm, then `Dense_2`
→ `LayerNorm_1`) are paired wrongly or not at all. Write labels for such
models; `jaxlab.nap.check_scale_invariance` tests any labels against the
model's outputs.
"""
from __future__ import annotations

import re
from typing import Any

import jax

from jaxlab.nap.projection import PerChannel, nap_mask

# Type words a module name may start with (lower case, longest first when matching).
_WEIGHT_WORDS = ("convtranspose", "conv_transpose", "densegeneral", "dense_general", "conv",
                 "dense", "linear", "fc")
_NORM_WORDS = {"batchnorm": "channel", "batch_norm": "channel", "bn": "channel",
               "layernorm": "layer", "layer_norm": "layer", "ln": "layer",
               "rmsnorm": "layer", "rms_norm": "layer", "rms": "layer", "groupnorm": "layer",
               "group_norm": "layer", "gn": "layer", "norm": "layer"}
_EMBED_WORDS = ("embed", "embedding", "emb")
_WORDS = sorted((*_WEIGHT_WORDS, *_NORM_WORDS, *_EMBED_WORDS), key=len, reverse=True)
_WRAPPERS = ("value", "raw_value")  # the leaf of an nnx Variable


def _name(k: Any) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _split_name(name: Any) -> tuple[str | None, str]:
  """("conv", "0") for "Conv_0"; (None, name) when no type word starts the name."""
  if not isinstance(name, str):
    return None, str(name)
  low = name.lower()
  for w in _WORDS:
    if low.startswith(w):
      return w, low[len(w):].strip("_")
  return None, low


class _Module:
  """The leaves of one module: {leaf name: (flat index, shape)}."""

  def __init__(self, path: tuple):
    self.path = path
    self.leaves: dict[str, tuple[int, tuple]] = {}

  def kind(self) -> tuple[str, int] | None:
    """("weight", out) / ("norm", features) / ("embed", 0) / None for anything else."""
    names = set(self.leaves)
    shape = {n: s for n, (_, s) in self.leaves.items()}
    if "kernel" in names and names <= {"kernel", "bias"}:
      k = shape["kernel"]
      if len(k) >= 2 and ("bias" not in names or shape["bias"] == (k[-1],)):
        return "weight", k[-1]
      return None
    if names == {"embedding"} and len(shape["embedding"]) == 2:
      return "embed", 0
    if names and names <= {"scale", "bias"}:
      sizes = {s for s in shape.values()}
      if len(sizes) == 1 and len(next(iter(sizes))) == 1:
        return "norm", next(iter(sizes))[0]
    return None


def _modules(params: Any) -> tuple[list[_Module], list]:
  leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(params)
  mods: dict[tuple, _Module] = {}
  for i, (path, x) in enumerate(leaves_with_path):
    names = tuple(_name(k) for k in path)
    while len(names) > 1 and names[-1] in _WRAPPERS:
      names = names[:-1]
    if len(names) < 2:
      continue  # a leaf outside any module: free
    mod = mods.setdefault(names[:-1], _Module(names[:-1]))
    mod.leaves[str(names[-1])] = (i, tuple(getattr(x, "shape", ())))
  return list(mods.values()), leaves_with_path


def _path_str(path: tuple) -> str:
  return "/".join(map(str, path))


def _norm_kind(name: Any) -> str:
  word, _ = _split_name(name)
  return _NORM_WORDS.get(word, "layer")


_COLLECTIONS = ("params", "batch_stats")


def _strip(path: tuple) -> tuple:
  return path[1:] if path and path[0] in _COLLECTIONS else path


def _batch_stat_modules(state: Any) -> set[tuple]:
  """Module paths (outer collection name dropped) whose model state has `mean` and `var`."""
  found: dict[tuple, set] = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
    names = tuple(_name(k) for k in path)
    while len(names) > 1 and names[-1] in _WRAPPERS:
      names = names[:-1]
    if len(names) >= 2:
      found.setdefault(_strip(names[:-1]), set()).add(names[-1])
  return {p for p, leaves in found.items() if {"mean", "var"} <= leaves}


def _kind_of(norm_path: tuple, bn: set[tuple] | None) -> str:
  """"channel" for a BatchNorm (by its batch statistics when the state is known, else
  by name), "layer" otherwise."""
  if bn is not None:
    return "channel" if _strip(norm_path) in bn else "layer"
  return _norm_kind(norm_path[-1])


def _pairs(mods: list[_Module], bn: set[tuple] | None = None) -> dict[tuple, _Module]:
  """{weight module path: the normalization module it feeds}."""
  by_parent: dict[tuple, list[tuple[_Module, str, int]]] = {}
  for m in mods:
    kind, size = m.kind() or ("other", 0)
    by_parent.setdefault(m.path[:-1], []).append((m, kind, size))
  out: dict[tuple, _Module] = {}
  for entries in by_parent.values():
    if all(isinstance(m.path[-1], int) for m, _, _ in entries):  # a list: by position
      entries = sorted(entries, key=lambda e: e[0].path[-1])
      for (m, kind, size), (n, nkind, nsize) in zip(entries, entries[1:], strict=False):
        if kind == "weight" and nkind == "norm" and size == nsize:
          out[m.path] = n
      continue
    weights = [(m, s) for m, k, s in entries if k == "weight"]
    norms = [(n, s) for n, k, s in entries if k == "norm"]
    cands = {m.path: [n for n, ns in norms
                      if ns == s and _split_name(n.path[-1])[1] == _split_name(m.path[-1])[1]]
             for m, s in weights}

    def fits(m: _Module, n: _Module) -> bool:  # conv ↔ BatchNorm, dense ↔ LayerNorm/RMSNorm
      return (len(m.leaves["kernel"][1]) > 2) == (_kind_of(n.path, bn) == "channel")

    def ambiguous(what: str, names: list) -> ValueError:
      return ValueError(f"flax_labels: {what} {names}; allowed: params whose layer and "
                        "normalization names pair one to one, e.g. Conv_i/BatchNorm_i, "
                        "conv1/bn1 (write labels for this model, and check them with "
                        "check_scale_invariance)")

    chosen: dict[tuple, _Module] = {}
    for m, _ in weights:
      cs = cands[m.path]
      if len(cs) > 1:  # e.g. Dense_0 next to LayerNorm_0 and RMSNorm_0 of one width
        cs = [n for n in cs if fits(m, n)]
        if len(cs) != 1:
          raise ambiguous(f"module {_path_str(m.path)!r} could feed each of",
                          [_path_str(n.path) for n in cands[m.path]])
      if cs:
        chosen[m.path] = cs[0]
    fed_by: dict[tuple, list[_Module]] = {}
    for m, _ in weights:
      if m.path in chosen:
        fed_by.setdefault(chosen[m.path].path, []).append(m)
    for ms in fed_by.values():
      n = chosen[ms[0].path]
      if len(ms) > 1:  # e.g. Conv_0 and Dense_0 of one width next to BatchNorm_0
        pref = [m for m in ms if fits(m, n)]
        if len(pref) != 1:
          raise ambiguous(f"modules {[_path_str(m.path) for m in ms]} could each feed",
                          [_path_str(n.path)])
        ms = pref
      out[ms[0].path] = n
  return out


def flax_labels(params: Any, *, per_channel: bool = True, state: Any = None) -> Any:
  """NaP labels for a flax model's params, derived from module names and leaf shapes.

  Works on linen params (`variables["params"]`, with or without the outer
  "params" key) and nnx states (`nnx.split(model, nnx.Param, ...)[1]`); the
  labels have the params' pytree structure. See the module docstring for the
  rule: (kernel, bias) of each Dense/Conv feeding a normalization form one
  group, `PerChannel` when that normalization is BatchNorm (and
  `per_channel`), per layer otherwise; everything else is free.

  Args:
    params: the params pytree.
    per_channel: False projects the layers feeding a BatchNorm per layer too
      (also a symmetry, a coarser one).
    state: the model state (linen `{"batch_stats": ...}`, the non-Param nnx
      state), optional: a normalization with batch statistics (`mean`, `var`)
      is then a BatchNorm whatever its name, and one without is not. Without
      it the kind is read from the name (see the module docstring). Pass it
      as `nap_project(functools.partial(flax_labels, state=state))`.

  Raises:
    ValueError: when no Dense/Conv layer feeds a normalization (NaP needs
      one), or the names leave open which layer feeds which normalization.
  """
  mods, leaves_with_path = _modules(params)
  bn = None if state is None else _batch_stat_modules(state)
  pairs = _pairs(mods, bn)
  if not pairs:
    found = sorted("/".join(map(str, m.path)) + f" ({(m.kind() or ('other',))[0]})"
                   for m in mods)
    raise ValueError(f"flax_labels: no Dense/Conv layer feeds a normalization among the "
                     f"modules {found}; allowed: params of a model with a normalization "
                     "(BatchNorm, LayerNorm, RMSNorm) after its layers, named in pairs such as "
                     "Conv_0/BatchNorm_0, conv1/bn1 or dense_0/norm_0 (NaP projects only "
                     "weights that feed a normalization; write labels for other models)")
  labels: list = [None] * len(leaves_with_path)
  for m in mods:
    norm = pairs.get(m.path)
    if norm is None:
      continue
    # Named by module path, without the outer "params" of a linen variables dict.
    name = "/".join(map(str, m.path[1:] if m.path[0] == "params" else m.path))
    lab = PerChannel(name) if per_channel and _kind_of(norm.path, bn) == "channel" else name
    for i, _ in m.leaves.values():
      labels[i] = lab
  treedef = jax.tree.structure(params)
  return treedef.unflatten(labels)


_JAXLAB_MLP = re.compile(r"^(dense|norm)_\d+$")
_JAXLAB_BLOCK = re.compile(r"^block_\d+$")


def _is_jaxlab_model(params: Any) -> bool:
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  if not isinstance(params, dict):
    return False
  if "readout" in params and all(k == "readout" or _JAXLAB_MLP.match(k) for k in params):
    return True
  return any(_JAXLAB_BLOCK.match(k) for k in params) and "read_out" in params


def default_labels(params: Any) -> Any:
  """The labels `nap_project()` uses: `nap_mask` for jaxlab's MLP and ICLTransformer
  (unchanged), `flax_labels` for any other flax model."""
  return nap_mask(params) if _is_jaxlab_model(params) else flax_labels(params)


def check_scale_invariance(fn: Any, params: Any, labels: Any = None, *,
                           rtol: float = 1e-3) -> dict[str, float]:
  """Checks that each labelled group is a scale symmetry of `fn`, as NaP assumes.

  Every group is multiplied by a factor (2.5; for a `PerChannel` group a
  different factor per channel, from 0.5 to 2.5) and `fn` evaluated again;
  projecting a group that is not a symmetry changes what the model can
  represent, so a wrong label (see the module docstring's limits) shows here.

  Args:
    fn: `params -> array`, the model's output on a fixed batch. A BatchNorm
      model must use batch statistics (train mode, state discarded): with
      running averages BatchNorm is not scale-invariant.
    params: the params pytree (trained a little, so biases are non-zero).
    labels: as for `nap_project`; None: `default_labels`.
    rtol: allowed max |Δoutput| / max |output| (normalizations' eps makes the
      symmetry inexact by ~eps / variance).

  Returns:
    {group: max |Δoutput| / max |output|}.

  Raises:
    ValueError: naming the groups that are not symmetries.
  """
  import jax.numpy as jnp

  from jaxlab.nap.projection import _resolve

  labels = default_labels if labels is None else labels
  groups, per_channel = _resolve(params, labels)
  leaves, treedef = jax.tree.flatten(params)
  y = jnp.asarray(fn(params))
  ref = float(jnp.max(jnp.abs(y)))
  out = {}
  for name, idx in groups.items():
    new = list(leaves)
    for i in idx:
      x = leaves[i]
      if name in per_channel:  # a different factor per channel, on the last axis
        c = jnp.linspace(0.5, 2.5, x.shape[-1]).reshape((1,) * (x.ndim - 1) + (-1,))
      else:
        c = 2.5
      new[i] = (x * c).astype(x.dtype)
    out[name] = float(jnp.max(jnp.abs(jnp.asarray(fn(treedef.unflatten(new))) - y))) / ref
  bad = {g: d for g, d in out.items() if not d <= rtol}
  if bad:
    raise ValueError(f"check_scale_invariance: rescaling the groups {sorted(bad)} changes the "
                     f"output by {max(bad.values()):.3g} of its scale (rtol={rtol}); allowed: "
                     "labels whose groups feed a normalization (write labels by hand for "
                     "this model)")
  return out
