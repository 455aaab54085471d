"""Effective-learning-rate diagnostics for any run, with or without NaP.

`norms_hook(every_steps, lr_schedule)` is a `jaxlab.train.train` hook that logs,
per parameter group g (default: per top-level module, e.g. dense_0 = kernel +
bias), the norm ‖θ_g‖ as `norm/g` and the effective learning rate

    elr/g = η_t / ‖θ_g‖^p        (p = 2: SGD on a scale-invariant layer,
                                   Lyle et al. 2024, arXiv:2407.01800)

into metrics.jsonl, and, given a probe batch, the fraction of dead ReLU units
per hidden layer (`dead/layer_i`, a unit that is zero on every probe input).
For Adam the direction of a scale-invariant layer moves like η/‖θ‖ (p = 1);
pass `power=1` to log that instead.

When the train state's optimizer state holds a NaP projection, the hook also
runs `check_projected` on its log steps: a projection that does not come last
in the chain (its updates changed by what follows) stops the run with a
ValueError instead of letting the norms drift unseen.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.nap.projection import (
    Labels,
    _nap_states,
    check_projected,
    group_norms,
    layer_labels,
)


def dead_unit_fraction(hidden: Sequence[jax.Array]) -> list[jax.Array]:
  """Per layer, the fraction of units whose activation is 0 on every input.

  Args:
    hidden: post-activations (N, width) per layer, e.g. `aux["hidden"]` of a
      jaxlab MLP on a probe batch.
  """
  out = []
  for h in hidden:
    if h.ndim < 2:
      raise ValueError(f"hidden: an activation of shape {h.shape}; allowed: (N, ..., width)")
    h = h.reshape(-1, h.shape[-1])
    out.append(jnp.mean(jnp.all(h == 0, axis=0)))
  return out


class NormsHook:
  """See `norms_hook`."""

  def __init__(self, every_steps: int, lr_schedule: float | Callable[[Any], Any], *,
               labels: Labels = layer_labels, power: float = 2.0,
               apply_fn: Callable | None = None, probe_x: Any = None,
               check_projection: bool = True):
    if not isinstance(every_steps, (int, np.integer)) or every_steps < 1:
      raise ValueError(f"every_steps={every_steps!r}; allowed: an integer ≥ 1")
    if not callable(lr_schedule) and not (isinstance(lr_schedule, (int, float))
                                          and lr_schedule > 0):
      raise ValueError(f"lr_schedule={lr_schedule!r}; allowed: a number > 0 or an optax schedule")
    if power <= 0:
      raise ValueError(f"power={power!r}; allowed: a number > 0 (2 for SGD, 1 for Adam)")
    if (apply_fn is None) != (probe_x is None):
      raise ValueError("apply_fn and probe_x: give both (to log dead units) or neither")
    self.every_steps = int(every_steps)
    self.lr_schedule = lr_schedule
    self.power = float(power)
    self.labels = labels
    self.check_projection = bool(check_projection)
    # A PerChannel group's (C,) channel norms are logged as the group's norm.
    self._norms = jax.jit(lambda p: {g: jnp.sqrt(jnp.sum(jnp.square(n)))
                                     for g, n in group_norms(p, labels).items()})
    self._dead = None
    if apply_fn is not None:
      probe_x = jnp.asarray(probe_x)
      self._dead = jax.jit(lambda p: dead_unit_fraction(apply_fn(p, probe_x)[1]["hidden"]))

  def learning_rate(self, step: int) -> float:
    lr = self.lr_schedule
    return float(lr(step) if callable(lr) else lr)

  def __call__(self, step: int, state: Any) -> Mapping[str, float]:
    opt_state = getattr(state, "opt_state", None)
    if self.check_projection and _nap_states(opt_state):
      check_projected(opt_state)
    norms = jax.device_get(self._norms(state.params))
    lr = self.learning_rate(step)
    row = {"lr": lr}
    for g, n in norms.items():
      row[f"norm/{g}"] = float(n)
      row[f"elr/{g}"] = lr / float(n) ** self.power
    if self._dead is not None:
      dead = jax.device_get(self._dead(state.params))
      for i, d in enumerate(dead):
        row[f"dead/layer_{i}"] = float(d)
      row["dead/mean"] = float(np.mean(dead))
    return row


def norms_hook(every_steps: int, lr_schedule: float | Callable[[Any], Any], *,
               labels: Labels = layer_labels, power: float = 2.0,
               apply_fn: Callable | None = None, probe_x: Any = None,
               check_projection: bool = True) -> NormsHook:
  """A train-loop hook logging per-group norms, effective LR and dead units.

  Args:
    every_steps: log every so many updates.
    lr_schedule: the learning rate η (float) or the optax schedule inside the
      optimizer; η_t = schedule(step) with step = updates done so far.
    labels: parameter groups (see `jaxlab.nap.nap_project`); default: one
      group per top-level module.
    power: p in η/‖θ‖^p (2: SGD, as in the paper; 1: Adam).
    apply_fn, probe_x: `apply_fn(params, x) -> (y, {"hidden": ...})` and a
      probe batch, to log the dead-unit fraction.
    check_projection: run `jaxlab.nap.check_projected` on the train state's
      optimizer state when it holds a NaP projection (raises ValueError when
      the projection was bypassed).

  Returns:
    A hook for `jaxlab.train.train(..., hooks=(hook,))`: its row keys are
    `lr`, `norm/<group>`, `elr/<group>` and `dead/layer_i`, `dead/mean`.
  """
  return NormsHook(every_steps, lr_schedule, labels=labels, power=power, apply_fn=apply_fn,
                   probe_x=probe_x, check_projection=check_projection)
