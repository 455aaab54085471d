"""The explicit schedule that replays, under NaP, an unconstrained run's implicit decay.

In a normalized but unprojected network a scale-invariant layer with norm
‖θ_t‖ moves its direction with the effective learning rate η_t/‖θ_t‖^p (p = 2
for SGD; p = 1 for Adam, whose update size does not shrink with the 1/‖θ‖ of
the gradient). Under NaP the norm stays at ρ = ‖θ_0‖, so the same directional
dynamics need

    η_t^NaP = η_t · (ρ / ‖θ_t‖)^p

This is the paper's point that NaP makes the learning-rate schedule explicit
(Lyle et al. 2024, arXiv:2407.01800: under normalization, norm growth is an
implicit decay of η/‖θ‖²; NaP removes it, so a schedule must do that work).
The formula is derived here from the scale invariance, not copied from the
paper's text, which this project could not read (see
`jaxlab.nap.projection`). Under SGD and per-group factors with p = 2 the
replay is exact: a projected step with η·ρ²/‖θ_t‖² lands on ρ·θ_{t+1}/‖θ_{t+1}‖
(tests/nap/diagnostics_test.py checks it). Under Adam (p = 1) it is exact up
to the history in Adam's moments and its ε.

`implicit_schedule` builds one global schedule from norms logged by
`norms_hook` (several groups are combined by the geometric mean of their
ratios; it also scales the free leaves — readout, LayerNorm scale/offset —
which the unconstrained run trained at η_t), and `scale_by_implicit_schedule`
the per-group version, which leaves the free leaves at η_t as the
unconstrained run had them.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.nap.projection import Labels


def norms_from_metrics(rows: Sequence[Mapping[str, float]],
                       groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(steps (T,), norms (T, G)) from metrics.jsonl rows with `norm/<group>` keys.

  Raises:
    ValueError: when no row has all the requested `norm/<group>` keys.
  """
  keys = [f"norm/{g}" for g in groups]
  if not keys:
    raise ValueError("groups: empty; allowed: one or more group names logged by norms_hook")
  rows = [r for r in rows if all(k in r for k in keys)]
  if not rows:
    raise ValueError(f"rows: none has the keys {keys}; allowed: metrics rows written with "
                     "jaxlab.nap.norms_hook")
  steps = np.array([r["step"] for r in rows], np.float64)
  norms = np.array([[r[k] for k in keys] for r in rows], np.float64)
  return steps, norms


def implicit_schedule(steps: Sequence[float], norms: Sequence, init_norms: Sequence[float], *,
                      base_lr: float | optax.Schedule, power: float = 2.0) -> optax.Schedule:
  """η_t^NaP = η_t · (geometric mean over groups of ρ_g/‖θ_g,t‖)^p, as an optax schedule.

  Args:
    steps: (T,) increasing steps at which the norms were logged.
    norms: (T,) or (T, G) norms ‖θ_g,t‖ of the unconstrained run.
    init_norms: (G,) norms at step 0 (= the radii ρ_g NaP projects onto).
    base_lr: the unconstrained run's learning rate (float or schedule).
    power: p (2: SGD, 1: Adam).

  Returns:
    `schedule(count)`: piecewise linear in the logged steps, the ratio 1 at
    step 0 and held at its last value after the last logged step.
  """
  steps = np.asarray(steps, np.float64)
  norms = np.asarray(norms, np.float64)
  norms = norms[:, None] if norms.ndim == 1 else norms
  init = np.atleast_1d(np.asarray(init_norms, np.float64))
  if steps.ndim != 1 or len(steps) != len(norms) or len(steps) == 0:
    raise ValueError(f"steps {steps.shape} and norms {norms.shape}; allowed: (T,) and (T,) or "
                     "(T, G) with the same T ≥ 1")
  if np.any(np.diff(steps) <= 0) or steps[0] <= 0:
    raise ValueError("steps: must be positive and strictly increasing")
  if init.shape != (norms.shape[1],) or not np.all(init > 0) or not np.all(norms > 0):
    raise ValueError(f"init_norms {init.shape} / norms: allowed: {norms.shape[1]} positive "
                     "radii and positive norms")
  if power <= 0:
    raise ValueError(f"power={power!r}; allowed: a number > 0 (2 for SGD, 1 for Adam)")
  ratio = np.exp(np.mean(np.log(init[None, :] / norms), axis=1)) ** power
  xs = jnp.asarray(np.concatenate([[0.0], steps]), jnp.float32)
  ys = jnp.asarray(np.concatenate([[1.0], ratio]), jnp.float32)

  def schedule(count):
    lr = base_lr(count) if callable(base_lr) else base_lr
    return lr * jnp.interp(jnp.asarray(count, jnp.float32), xs, ys)

  return schedule


class ScaleByImplicitScheduleState(NamedTuple):
  count: jax.Array  # int32 scalar


def scale_by_implicit_schedule(steps: Sequence[float], norms: Sequence,
                               init_norms: Mapping[str, float], *,
                               labels: Labels | None = None,
                               power: float = 2.0) -> optax.GradientTransformation:
  """Per-group version: scales group g's updates by (ρ_g / ‖θ_g,t‖)^p at step t.

  Chain it after the optimizer and before `nap_project`:
  `optax.chain(optax.adam(lr), scale_by_implicit_schedule(...), nap_project())`.
  Each projected layer then follows its own implicit schedule, which the
  paper finds is what an exact match of the unconstrained dynamics needs;
  leaves outside the groups (the free output layer) are left at factor 1.

  Args:
    steps: (T,) logged steps; norms: (T, G) norms of the groups, in the order
      of `init_norms`' keys; init_norms: {group: ρ_g}.
    labels: the groups (default `default_labels`, as for `nap_project`).
    power: p (2: SGD, 1: Adam).
  """
  from jaxlab.nap.labels import default_labels
  from jaxlab.nap.projection import resolve_groups

  labels = default_labels if labels is None else labels
  names = list(init_norms)
  norms = np.asarray(norms, np.float64)
  norms = norms[:, None] if norms.ndim == 1 else norms
  if norms.ndim != 2 or norms.shape[1] != len(names):
    raise ValueError(f"norms {norms.shape}; allowed: (T, {len(names)}) for groups {names}")
  sched = {g: implicit_schedule(steps, norms[:, j], [init_norms[g]], base_lr=1.0, power=power)
           for j, g in enumerate(names)}

  def init_fn(params):
    missing = set(names) - set(resolve_groups(params, labels))
    if missing:
      raise ValueError(f"scale_by_implicit_schedule: groups {sorted(missing)} are not in the "
                       f"labels' groups {sorted(resolve_groups(params, labels))}")
    return ScaleByImplicitScheduleState(jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    leaves, treedef = jax.tree.flatten(updates)
    groups = resolve_groups(updates if params is None else params, labels)
    out = list(leaves)
    for g in names:
      factor = sched[g](state.count)
      for i in groups[g]:
        out[i] = (leaves[i] * factor).astype(leaves[i].dtype)
    return treedef.unflatten(out), ScaleByImplicitScheduleState(
        optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
