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

- the group is the set a normalization makes scale-invariant. A LayerNorm
  (or RMSNorm) normalizes across the units of a layer, so only a common
  rescaling of the whole matrix is a symmetry (a per-unit rescaling changes
  the layer's output): per layer, with the Frobenius norm. A BatchNorm
  normalizes each channel on its own, so each unit's incoming weights are a
  symmetry by themselves: per channel (`PerChannel` labels), θ_{l,c} ←
  ρ_{l,c} θ_{l,c}/‖θ_{l,c}‖. A convolution is the same rule with the H×W×I
  slice of the (H, W, I, O) kernel feeding output channel c in the role of a
  unit's incoming weight vector (the paper's "per layer" is the Dense case
  under LayerNorm; per layer is also a symmetry under BatchNorm, only a
  coarser one that lets the channels' norms, hence their effective learning
  rates, drift apart). `jaxlab.nap.flax_labels` applies this to any flax
  model.
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
jointly (the Frobenius norm of the concatenation); `PerChannel(name)` names a
group projected per output channel (last axis); True projects the leaf on
its own; False/None leaves it untouched. `nap_mask(params)` builds the labels
for `jaxlab.models.mlp(..., normalize=True)` and `ICLTransformer(normalize="nap")`;
`flax_labels(params)` for any other flax model (linen or nnx, Dense/Conv
feeding LayerNorm/BatchNorm/RMSNorm); `default_labels` picks between them and
is what `nap_project()` uses.

The projection must be the last transformation (`with_projection(tx)`,
`chain(*txs)`); a misplaced one is reported by `check_projected`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class PerChannel:
  """Label of a group projected per output channel (index of the leaves' last axis).

  Channel c of group g is the concatenation of `leaf[..., c]` over the
  group's leaves (a Conv kernel's H×W×I slice feeding channel c and bias[c];
  a Dense kernel's column c and bias[c]), projected onto the sphere of its
  own initial norm ρ_{g,c}. The exact symmetry of a layer feeding a
  per-channel normalization (BatchNorm): BN(c_j·z_j) = BN(z_j) for each
  channel j separately.
  """

  name: str


Label = Union[str, bool, PerChannel, None]
Labels = Union[Any, Callable[[Any], Any]]  # pytree of Label, or params -> pytree of Label


class NapProjectState(NamedTuple):
  """ρ_g, the norm each projected group had at `init`, and the drift seen since.

  `drift[g]` is the largest relative deviation |‖θ_g‖/ρ_g − 1| of the params
  handed to `update` so far (max over channels for a `PerChannel` group),
  less 4 units of roundoff of the group's dtype (4·eps: what rounding the
  projected params can explain). With `nap_project` last in the chain every
  update lands on the sphere, so it stays 0; anything more means something
  changed the params after the projection (see `check_projected`).
  """

  init_norms: dict[str, jax.Array]  # group -> float32 scalar, or (C,) for a PerChannel group
  drift: dict[str, jax.Array]  # group -> float32 scalar


# Relative norm drift (beyond rounding) above which the projection is reported
# as bypassed: a misplaced projection under Adam at lr 1e-3 drifts by ~2e-3
# per step, so it is caught within a step or two.
DRIFT_RTOL = 1e-3


def _is_label(x: Any) -> bool:
  return x is None or isinstance(x, (str, bool, PerChannel))


def resolve_groups(params: Any, labels: Labels) -> dict[str, list[int]]:
  """{group name: [indices into jax.tree.leaves(params)]} from labels.

  Raises:
    ValueError: when the labels' structure differs from the params' or a label
      is not a str/bool/PerChannel/None.
  """
  return _resolve(params, labels)[0]


def _resolve(params: Any, labels: Labels) -> tuple[dict[str, list[int]], frozenset[str]]:
  """(groups as in `resolve_groups`, names of the PerChannel groups)."""
  tree = labels(params) if callable(labels) else labels
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  label_leaves, label_def = jax.tree_util.tree_flatten(tree, is_leaf=_is_label)
  bad = [x for x in label_leaves if not _is_label(x)]
  if bad:
    raise ValueError(f"labels: leaf {bad[0]!r} ({type(bad[0]).__name__}); allowed: a group "
                     "name (str), PerChannel(name) (project per output channel), True "
                     "(project alone), False or None (leave untouched)")
  if label_def != treedef:
    raise ValueError(f"labels: structure {label_def} does not match the params' structure "
                     f"{treedef}; allowed: a pytree of str/bool/None shaped like the params")
  groups: dict[str, list[int]] = {}
  plain, per_channel = set(), set()
  for i, ((path, _), lab) in enumerate(zip(leaves_with_path, label_leaves, strict=True)):
    if lab is None or lab is False:
      continue
    if isinstance(lab, PerChannel):
      name = lab.name
      per_channel.add(name)
    else:
      name = jax.tree_util.keystr(path) if lab is True else lab
      plain.add(name)
    groups.setdefault(name, []).append(i)
  if plain & per_channel:
    raise ValueError(f"labels: group {sorted(plain & per_channel)[0]!r} is labelled both as a "
                     "str and as PerChannel; allowed: one kind of label per group name")
  leaves = [x for _, x in leaves_with_path]
  for name in sorted(per_channel):
    shapes = [jnp.shape(leaves[i]) for i in groups[name]]
    if any(len(s) == 0 for s in shapes) or len({s[-1] for s in shapes}) != 1:
      raise ValueError(f"labels: PerChannel group {name!r} has leaves of shapes {shapes}; "
                       "allowed: arrays whose last axes (the output channels) have one size")
  return dict(sorted(groups.items())), frozenset(per_channel)


def _sq_norms(xs: list, per_channel: bool) -> jax.Array:
  """Σ x² over the group in float32: a scalar, or (C,) over the last axis."""
  if per_channel:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(-1, x.shape[-1]), axis=0)
               for x in xs)
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in xs)


def group_norms(params: Any, labels: Labels) -> dict[str, jax.Array]:
  """{group: ‖concatenated leaves of the group‖₂}, computed in float32.

  A `PerChannel` group gives a (C,) vector: the norm of each output channel's
  slice (all axes but the last) of its leaves.
  """
  leaves = jax.tree.leaves(params)
  groups, per_channel = _resolve(params, labels)
  return {name: jnp.sqrt(_sq_norms([leaves[i] for i in idx], name in per_channel))
          for name, idx in groups.items()}


class NapProjection(optax.GradientTransformation):
  """The transformation `nap_project` returns; a type of its own so that
  `jaxlab.nap.chain` can tell where it stands in a chain."""


def nap_project(labels: Labels | None = None) -> optax.GradientTransformation:
  """Projects the labelled parameter groups back to their initial norm after each update.

  It must come last, after every transformation that changes the updates:
  `jaxlab.nap.with_projection(optax.adam(1e-3))`, or by hand
  `optax.chain(optax.adam(1e-3), nap_project())`. With incoming updates u and
  params θ, group g becomes

      θ_g' = ρ_g · (θ_g + u_g) / ‖θ_g + u_g‖,   ρ_g = ‖θ_g‖ at `init`

  (Lyle et al. 2024, NaP's projection step onto the initial-norm sphere), and
  the returned updates are θ' − θ, so `optax.apply_updates` lands on the
  sphere; leaves in no group pass through unchanged. A `PerChannel` group is
  projected channel by channel, each onto its own ρ_{g,c}.

  Misplaced projection. Anything after it in the chain (the optimizer in
  `optax.chain(nap_project(), optax.adam(lr))`, a weight decay) moves the
  params off the sphere again, and the norms drift as if NaP were absent. A
  transformation cannot see what follows it, so `update` checks what it can:
  the params it is handed must be on the sphere it put them on. It records
  the largest relative drift in `state.drift`; `check_projected(opt_state)`
  (called by `norms_hook` on its log steps) raises a ValueError when it
  exceeds `DRIFT_RTOL`, and outside `jax.jit` `update` raises at once.

  Args:
    labels: pytree shaped like the params with leaves str (joint group name),
      `PerChannel(name)` (group projected per output channel), True (project
      alone), False/None (untouched), or a function `params -> such pytree`.
      None: `default_labels` (jaxlab MLPs with normalize=True and
      ICLTransformer(normalize="nap") as `nap_mask`; any other flax model,
      linen or nnx, by `flax_labels`).

  Returns:
    An `optax.GradientTransformation` whose `update` requires `params`; its
    state holds the target norms ρ_g (taken from the params given to `init`)
    and the drift seen since.

  Raises:
    ValueError: at `init` for a group of norm 0; at `update` without params,
      or (outside jit) when the params have drifted off the sphere.

  Example:
    >>> model = jaxlab.models.mlp(40, (256, 256), 10, normalize=True)
    >>> params = model.init(jax.random.key(0))
    >>> tx = optax.chain(optax.adam(1e-3), nap_project())
    >>> opt_state = tx.init(params)

  References:
    Lyle et al. 2024, https://arxiv.org/abs/2407.01800
  """
  if labels is None:
    from jaxlab.nap.labels import default_labels
    labels = default_labels

  def init_fn(params):
    norms = group_norms(params, labels)
    for name, n in norms.items():
      if not isinstance(n, jax.core.Tracer) and not float(jnp.min(n)) > 0:
        raise ValueError(f"nap_project: group {name!r} has initial norm {float(jnp.min(n))}; "
                         "allowed: a group with non-zero initial norm (in every channel of a "
                         "PerChannel group; a zero-norm group cannot be projected back to its "
                         "radius)")
    return NapProjectState(init_norms=norms,
                           drift={name: jnp.zeros((), jnp.float32) for name in norms})

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("nap_project: update needs params (got params=None); allowed: "
                       "tx.update(updates, state, params)")
    groups, per_channel = _resolve(params, labels)
    if set(groups) != set(state.init_norms):
      raise ValueError(f"nap_project: groups {sorted(groups)} differ from those at init "
                       f"{sorted(state.init_norms)}; allowed: the same params structure")
    p_leaves, treedef = jax.tree.flatten(params)
    u_leaves = treedef.flatten_up_to(updates)
    out = list(u_leaves)
    drift = {}
    for name, idx in groups.items():
      rho = state.init_norms[name]
      now = jnp.sqrt(_sq_norms([p_leaves[i] for i in idx], name in per_channel))
      # Rounding the projected params to their dtype moves the norm by up to a few
      # units of roundoff (~1e-7 in float32, ~4e-3 in bfloat16): not drift.
      drift[name] = jnp.maximum(state.drift[name],
                                _off_sphere(now, rho, [p_leaves[i] for i in idx]))
      # In float32 at least, so that low-precision params are rounded once, at the end.
      wide = [jnp.promote_types(p_leaves[i].dtype, jnp.float32) for i in idx]
      new = [p_leaves[i].astype(w) + u_leaves[i].astype(w) for i, w in zip(idx, wide, strict=True)]
      norm = jnp.sqrt(_sq_norms(new, name in per_channel))
      # A group (channel) driven exactly to zero has no direction to keep: leave it be.
      factor = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 1.0)
      for i, x in zip(idx, new, strict=True):
        f = factor.astype(x.dtype).reshape((1,) * (x.ndim - factor.ndim) + factor.shape)
        out[i] = (x * f - p_leaves[i].astype(x.dtype)).astype(u_leaves[i].dtype)
    new_state = NapProjectState(init_norms=state.init_norms, drift=drift)
    if not any(isinstance(d, jax.core.Tracer) for d in drift.values()):
      _raise_if_drifted(drift, DRIFT_RTOL, "nap_project.update")
    return treedef.unflatten(out), new_state

  return NapProjection(init_fn, update_fn)


def _off_sphere(norms: jax.Array, rho: jax.Array, leaves: list) -> jax.Array:
  """max |norms/ρ − 1| less 4·eps of the leaves' lowest precision, floored at 0."""
  allowance = 4 * max(float(jnp.finfo(x.dtype).eps) for x in leaves)
  return jnp.maximum(jnp.max(jnp.abs(norms / rho - 1.0)) - allowance, 0.0)


def _raise_if_drifted(drift: dict, rtol: float, where: str) -> None:
  bad = {g: float(d) for g, d in drift.items() if float(d) > rtol}
  if bad:
    worst = max(bad, key=bad.get)
    raise ValueError(
        f"{where}: the params left the projection's sphere (group {worst!r}: norm off by "
        f"{100 * bad[worst]:.3g}% of its initial value; {len(bad)} group(s) above "
        f"rtol={rtol}); allowed: nap_project as the last transformation, so that its "
        "updates are applied unchanged — e.g. jaxlab.nap.with_projection(optimizer) or "
        "optax.chain(optimizer, nap_project()), not optax.chain(nap_project(), optimizer) "
        "or anything after it (weight decay, clipping); after changing params by hand, "
        "call tx.init again")


def _nap_states(opt_state: Any) -> list[NapProjectState]:
  is_state = lambda x: isinstance(x, NapProjectState)  # noqa: E731
  return [s for s in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(s)]


def check_projected(opt_state: Any, params: Any = None, *, labels: Labels | None = None,
                    rtol: float = DRIFT_RTOL) -> dict[str, float]:
  """Raises when a NaP projection in `opt_state` was bypassed; else returns the drift.

  Reads every `NapProjectState` inside `opt_state` (any nesting: optax.chain,
  inject_hyperparams, MultiSteps): its drift is the largest relative
  deviation |‖θ_g‖/ρ_g − 1| of the params the projection was handed, beyond
  4·eps of their dtype (rounding). It is 0 when `nap_project` is last, and
  grows step by step when something after it changes the updates (the misplaced
  `optax.chain(nap_project(), optax.adam(lr))` lets the norms drift as if
  unprojected). Given `params` (and the projection's `labels` if they are
  not the default), the current params are checked too, which also covers
  the last update. It syncs with the host: call it on log steps, not every
  step (`norms_hook` does).

  Returns:
    {group: drift} (the larger of the recorded and the current drift).

  Raises:
    ValueError: when `opt_state` holds no NapProjectState, or a group's drift
      exceeds `rtol`.
  """
  states = _nap_states(opt_state)
  if not states:
    raise ValueError("check_projected: opt_state holds no NapProjectState; allowed: the state "
                     "of a chain that contains jaxlab.nap.nap_project")
  drift: dict[str, float] = {}
  for s in states:
    for g, d in jax.device_get(s.drift).items():
      drift[g] = max(drift.get(g, 0.0), float(d))
  if params is not None:
    if labels is None:
      from jaxlab.nap.labels import default_labels
      labels = default_labels
    leaves = jax.tree.leaves(params)
    groups = resolve_groups(params, labels)
    now = group_norms(params, labels)
    for s in states:
      if set(s.init_norms) != set(now):
        raise ValueError(f"check_projected: groups {sorted(now)} of params/labels differ from "
                         f"the projection's {sorted(s.init_norms)}; allowed: the labels given "
                         "to nap_project")
      for g, rho in s.init_norms.items():
        d = float(_off_sphere(now[g], rho, [leaves[i] for i in groups[g]]))
        drift[g] = max(drift.get(g, 0.0), d)
  _raise_if_drifted(drift, rtol, "check_projected")
  return drift


def with_projection(tx: optax.GradientTransformation,
                    labels: Labels | None = None) -> optax.GradientTransformation:
  """`optax.chain(tx, nap_project(labels))`: the optimizer, then NaP's projection last.

  Raises:
    ValueError: when `tx` is itself a `nap_project` transformation.
  """
  return chain(tx, labels=labels)


def chain(*transforms: optax.GradientTransformation,
          labels: Labels | None = None) -> optax.GradientTransformation:
  """`optax.chain(*transforms, nap_project(labels))`, the projection placed last.

  Raises:
    ValueError: when one of `transforms` is a `nap_project` (it would be
      followed by the others and bypassed), or no transform is given.
  """
  if not transforms:
    raise ValueError("chain: no transforms; allowed: one or more optax transformations "
                     "(the projection is appended)")
  for i, t in enumerate(transforms):
    if isinstance(t, NapProjection):
      raise ValueError(f"chain: transforms[{i}] is a nap_project; allowed: the optimizer's "
                       "transformations only (chain appends nap_project last, so that the "
                       "updates it returns are applied unchanged)")
  return optax.chain(*transforms, nap_project(labels))


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
