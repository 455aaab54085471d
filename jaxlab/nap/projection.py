"""Normalize-and-Project (NaP): weight projection as an optax transformation.

Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu, Dabney, "Normalization
and effective learning rates in reinforcement learning", NeurIPS 2024,
arXiv:2407.01800.

Why. If a normalization follows a layer, the network is invariant to scaling
that layer's incoming parameters, f(c·θ_l) = f(θ_l) for c > 0. Differentiating
gives ∇f(c·θ_l) = ∇f(θ_l) / c and ⟨∇f(θ_l), θ_l⟩ = 0, so a gradient step of
size η on θ_l moves the direction θ_l/‖θ_l‖ like a step of size

    η_eff = η / ‖θ_l‖²                                   (effective learning rate)

on the unit sphere, and since the gradient is orthogonal to θ_l every step
grows ‖θ_l‖ (‖θ + ηg‖² = ‖θ‖² + η²‖g‖²): normalized networks decay their own
learning rate implicitly. (Adam removes the 1/c in the gradient, so there the
direction moves like η / ‖θ_l‖; see `jaxlab.nap.schedules`.)

NaP makes that schedule explicit (the paper's two steps, "normalize" then
"project"): normalization before every nonlinearity, and after every optimizer
step each layer's weights are projected back onto the sphere of their initial
radius,

    θ_l ← ρ_l · θ_l / ‖θ_l‖,   ρ_l = ‖θ_l^(0)‖           (per layer, Frobenius norm)

so η_eff = η / ρ_l² is whatever the optimizer's schedule says.

Source and our reading. The body of arXiv:2407.01800 (method section,
algorithm box, appendix) could not be read from this project's reference
look-ups; only its abstract and third-party summaries were ("normalization
before nonlinearities with periodic weight projection to a fixed-norm radius";
the effective learning rate η/‖θ‖² of a scale-invariant layer). Where the text
is not at hand we implement the exact symmetries of the network, and say so:

- per layer, not per unit: a LayerNorm normalizes across the units of a
  layer, so only a common rescaling of the whole matrix is a symmetry (a
  per-unit rescaling changes the layer's output). Per unit would be right for
  BatchNorm; `labels` can express it for other models.
- the output layer is not projected: it is not followed by a normalization,
  so its norm sets the output scale (logits, values) and must stay free.
- a bias added before the normalization belongs to the layer's group:
  LN(c·(Wx + b)) = LN(Wx + b) holds for the pair (kernel, bias), not for the
  kernel alone once b ≠ 0, so `nap_mask` projects them jointly.
- the normalization's scale and offset (γ_l, β_l) are left free by default:
  they are not scale-invariant on their own. With ReLU, relu(c·(γ n + β)) =
  c·relu(γ n + β), so (γ_l, β_l) is jointly invariant only if the next
  layer's bias is rescaled too (exact while that bias is 0, e.g. at
  initialization); `nap_mask(..., scale_offset=True)` projects the pair
  anyway (the reading of an earlier version of this module), an
  approximation once the next bias has moved.
- in a pre-LayerNorm transformer (`ICLTransformer(normalize="nap")`) every
  matrix writing into the residual stream is jointly scale-invariant through
  the pre-LayerNorms and the final LayerNorm; `nap_mask` projects that set as
  one group ("residual") and each MLP input matrix `fc` (which feeds the
  LayerNorm before the GELU) on its own. q/k/v, the read-out and all
  LayerNorm scales/offsets stay free (not scale-invariant).

The paper reports that projecting every update or only every so often gives
nearly the same result; this transform projects after every update.

Leaves are chosen by a label pytree (or a function of the params that returns
one) with the structure of the params: a string names a group, projected
jointly (the Frobenius norm of the concatenation); True projects the leaf on
its own; False/None leaves it untouched. `nap_mask(params)` builds the labels
for `jaxlab.models.mlp(..., normalize=True)` and `ICLTransformer(normalize="nap")`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

Label = Union[str, bool, None]
Labels = Union[Any, Callable[[Any], Any]]  # pytree of Label, or params -> pytree of Label


class NapProjectState(NamedTuple):
  """ρ_g: the norm each projected group had when `init` was called."""

  init_norms: dict[str, jax.Array]  # group name -> float32 scalar


def _is_label(x: Any) -> bool:
  return x is None or isinstance(x, (str, bool))


def resolve_groups(params: Any, labels: Labels) -> dict[str, list[int]]:
  """{group name: [indices into jax.tree.leaves(params)]} from labels.

  Raises:
    ValueError: when the labels' structure differs from the params' or a label
      is not a str/bool/None.
  """
  tree = labels(params) if callable(labels) else labels
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  label_leaves, label_def = jax.tree_util.tree_flatten(tree, is_leaf=_is_label)
  bad = [x for x in label_leaves if not _is_label(x)]
  if bad:
    raise ValueError(f"labels: leaf {bad[0]!r} ({type(bad[0]).__name__}); allowed: a group "
                     "name (str), True (project alone), False or None (leave untouched)")
  if label_def != treedef:
    raise ValueError(f"labels: structure {label_def} does not match the params' structure "
                     f"{treedef}; allowed: a pytree of str/bool/None shaped like the params")
  groups: dict[str, list[int]] = {}
  for i, ((path, _), lab) in enumerate(zip(leaves_with_path, label_leaves, strict=True)):
    if lab is None or lab is False:
      continue
    name = jax.tree_util.keystr(path) if lab is True else lab
    groups.setdefault(name, []).append(i)
  return dict(sorted(groups.items()))


def group_norms(params: Any, labels: Labels) -> dict[str, jax.Array]:
  """{group: ‖concatenated leaves of the group‖₂}, computed in float32."""
  leaves = jax.tree.leaves(params)
  out = {}
  for name, idx in resolve_groups(params, labels).items():
    sq = sum(jnp.sum(jnp.square(leaves[i].astype(jnp.float32))) for i in idx)
    out[name] = jnp.sqrt(sq)
  return out


def nap_project(labels: Labels | None = None) -> optax.GradientTransformation:
  """Projects the labelled parameter groups back to their initial norm after each update.

  Chain it after any optimizer: `optax.chain(optax.adam(1e-3), nap_project())`.
  With incoming updates u and params θ, group g becomes

      θ_g' = ρ_g · (θ_g + u_g) / ‖θ_g + u_g‖,   ρ_g = ‖θ_g‖ at `init`

  (Lyle et al. 2024, NaP's projection step onto the initial-norm sphere), and
  the returned updates are θ' − θ, so `optax.apply_updates` lands on the
  sphere; leaves in no group pass through unchanged.

  Args:
    labels: pytree shaped like the params with leaves str (joint group name),
      True (project alone), False/None (untouched), or a function
      `params -> such pytree`. None: `nap_mask` (jaxlab MLPs with
      normalize=True, ICLTransformer with normalize="nap").

  Returns:
    An `optax.GradientTransformation` whose `update` requires `params`; its
    state holds the target norms ρ_g (taken from the params given to `init`).

  Example:
    >>> model = jaxlab.models.mlp(40, (256, 256), 10, normalize=True)
    >>> params = model.init(jax.random.key(0))
    >>> tx = optax.chain(optax.adam(1e-3), nap_project())
    >>> opt_state = tx.init(params)

  References:
    Lyle et al. 2024, https://arxiv.org/abs/2407.01800
  """
  labels = nap_mask if labels is None else labels

  def init_fn(params):
    norms = group_norms(params, labels)
    for name, n in norms.items():
      if not isinstance(n, jax.core.Tracer) and not float(n) > 0:
        raise ValueError(f"nap_project: group {name!r} has initial norm {float(n)}; allowed: "
                         "a group with non-zero initial norm (a zero-norm group cannot be "
                         "projected back to its radius)")
    return NapProjectState(init_norms=norms)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("nap_project: update needs params (got params=None); allowed: "
                       "tx.update(updates, state, params)")
    groups = resolve_groups(params, labels)
    if set(groups) != set(state.init_norms):
      raise ValueError(f"nap_project: groups {sorted(groups)} differ from those at init "
                       f"{sorted(state.init_norms)}; allowed: the same params structure")
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    out = list(u_leaves)
    for name, idx in groups.items():
      new = [p_leaves[i] + u_leaves[i] for i in idx]
      norm = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in new))
      # A group driven exactly to zero has no direction to keep: leave it be.
      factor = jnp.where(norm > 0, state.init_norms[name] / jnp.where(norm > 0, norm, 1.0), 1.0)
      for i, x in zip(idx, new, strict=True):
        out[i] = (x * factor.astype(x.dtype) - p_leaves[i]).astype(u_leaves[i].dtype)
    return treedef.unflatten(out), state

  return optax.GradientTransformation(init_fn, update_fn)


_LAYER = re.compile(r"^(dense|norm)_(\d+)$")
_BLOCK = re.compile(r"^block_(\d+)$")


def nap_mask(params: Any, *, scale_offset: bool = False, residual: bool = True) -> Any:
  """NaP labels for jaxlab models with normalization before each nonlinearity.

  `jaxlab.models.mlp(..., normalize=True)`: dense_i (kernel, bias) → group
  "dense_i" (it feeds norm_i); with `scale_offset`, norm_i (scale, bias) →
  group "norm_i" when a normalized layer follows (ReLU only, and exact only
  while the next layer's bias is 0: see the module docstring); the readout
  and every other LayerNorm → None.

  `ICLTransformer(normalize="nap")` params (with or without the outer
  "params" key): block_i/fc (kernel, bias) → group "block_i/fc" (it feeds
  ln_mlp); with `residual`, read_in, pos_embedding and every block's
  attn/proj and fc_out → one group "residual"; the rest → None.

  Raises:
    ValueError: when `params` is neither model's params or has no
      normalization before a nonlinearity (NaP needs it).
  """
  if isinstance(params, dict) and set(params) == {"params"}:
    return {"params": nap_mask(params["params"], scale_offset=scale_offset, residual=residual)}
  if isinstance(params, dict) and any(_BLOCK.match(k) for k in params):
    if scale_offset:
      raise ValueError("nap_mask: scale_offset=True; allowed only for ReLU MLP params (the "
                       "transformer's GELU is not positively homogeneous)")
    return _transformer_mask(params, residual)
  if not isinstance(params, dict) or "readout" not in params:
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"nap_mask: params with keys {keys}; allowed: a jaxlab.models.mlp "
                     "params dict (dense_i, norm_i, readout) or ICLTransformer params "
                     "(block_i, read_in, pos_embedding, ln_f, read_out)")
  unknown = [k for k in params if k != "readout" and not _LAYER.match(k)]
  if unknown:
    raise ValueError(f"nap_mask: unknown modules {unknown}; allowed: dense_i, norm_i, readout "
                     "(write your own labels for other models)")
  depth = sum(1 for k in params if k.startswith("dense_"))
  if not any(k.startswith("norm_") for k in params):
    raise ValueError("nap_mask: the params have no norm_i layers; allowed: an MLP built with "
                     "normalize=True (NaP projects only weights that feed a normalization)")
  labels: dict = {}
  for k, sub in params.items():
    m = _LAYER.match(k)
    if m is None:  # readout
      lab = None
    elif m.group(1) == "dense":
      lab = k if f"norm_{m.group(2)}" in params else None
    else:
      last = int(m.group(2)) == depth - 1
      lab = k if scale_offset and not last else None
    labels[k] = jax.tree.map(lambda _, lab=lab: lab, sub)
  return labels


_TRANSFORMER_TOP = {"read_in", "pos_embedding", "ln_f", "read_out"}
_BLOCK_MODULES = {"attn", "ln1", "ln2", "ln_mlp", "fc", "fc_out"}


def _transformer_mask(params: dict, residual: bool) -> dict:
  unknown = sorted(k for k in params if k not in _TRANSFORMER_TOP and not _BLOCK.match(k))
  blocks = sorted(k for k in params if _BLOCK.match(k))
  unknown += [f"{b}/{k}" for b in blocks for k in params[b] if k not in _BLOCK_MODULES]
  if unknown or not _TRANSFORMER_TOP <= set(params):
    raise ValueError(f"nap_mask: transformer params with modules {unknown or sorted(params)}; "
                     "allowed: ICLTransformer params (block_i with attn, ln1, ln2, ln_mlp, fc, "
                     "fc_out; read_in, pos_embedding, ln_f, read_out)")
  if not all("ln_mlp" in params[b] for b in blocks):
    raise ValueError("nap_mask: the transformer has no ln_mlp layers; allowed: "
                     "ICLTransformer(normalize='nap') params (NaP projects only weights that "
                     "feed a normalization)")
  res = "residual" if residual else None
  none = lambda sub, lab=None: jax.tree.map(lambda _: lab, sub)  # noqa: E731
  labels = {k: none(params[k], res if k in ("read_in", "pos_embedding") else None)
            for k in _TRANSFORMER_TOP}
  for b in blocks:
    sub = {k: none(v) for k, v in params[b].items()}
    sub["fc"] = none(params[b]["fc"], f"{b}/fc")
    sub["fc_out"] = none(params[b]["fc_out"], res)
    sub["attn"] = dict(sub["attn"], proj=none(params[b]["attn"]["proj"], res))
    labels[b] = sub
  return labels


def layer_labels(params: Any) -> Any:
  """Groups every leaf by its top-level module ("dense_0", "norm_0", "readout", ...).

  The diagnostic grouping used by `norms_hook` for any flax params dict, with
  or without normalization.
  """
  if not isinstance(params, dict):
    raise ValueError(f"layer_labels: params of type {type(params).__name__}; allowed: a dict of "
                     "modules (flax params)")
  return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}
