"""Train-loop hook that logs the sharpness λ_max (and optionally the Hessian trace)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxlab.models import contract
from jaxlab.spectral import operators as ops
from jaxlab.spectral.lanczos import lanczos, resolve_dtype, tridiagonal
from jaxlab.spectral.trace import METHODS, trace


class SharpnessHook:
  """Hook object: ``every_steps`` and ``__call__(step, state) -> dict[str, float]``."""

  def __init__(self, loss_fn, batches, every_steps, num_iters, with_trace, trace_samples,
               trace_method, seed, dtype, state=None, train=False, num_batches=None):
    self.loss_fn = loss_fn
    self.batches = batches
    self.state = state
    self.train = train
    self.num_batches = num_batches
    self.every_steps = every_steps
    self.num_iters = num_iters
    self.with_trace = with_trace
    self.trace_samples = trace_samples
    self.trace_method = trace_method
    self.seed = seed
    self.dtype = dtype

  def __call__(self, step: int, state: Any) -> dict[str, float]:
    params = state.params
    spec = ops.flat_spec(params, "state.params")
    # the model state: the hook's own, else the train state's (e.g. BatchNorm statistics)
    model_state = self.state
    if model_state is None and contract.loss_spec(self.loss_fn).takes_state:
      model_state = getattr(state, "model_state", None)
    mv = ops.hessian_vp(self.loss_fn, params, self.batches, state=model_state, train=self.train,
                        num_batches=self.num_batches)
    key = jax.random.fold_in(jax.random.key(self.seed), int(step))
    k_l, k_t = jax.random.split(key)
    m = min(self.num_iters, spec.size)
    res = lanczos(mv, params, m, k_l, dtype=self.dtype)
    out = {"sharpness": float(np.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))[-1])}
    if self.with_trace:
      est = trace(mv, params, self.trace_samples, k_t, method=self.trace_method,
                     dtype=self.dtype)
      out["hessian_trace"] = est.estimate
      out["hessian_trace_stderr"] = est.stderr
    return out


def _pos_int(name, value, lo=1):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
    raise ValueError(f"{name} is {value!r}; allowed: an int >= {lo}.")
  return int(value)


def sharpness_callback(loss_fn: Callable, batches: Any, every_steps: int, num_iters: int = 20,
                       with_trace: bool = False, trace_samples: int = 30,
                       trace_method: str = "hutch++", seed: int = 0,
                       dtype: Any = None, *, state: Any = None, train: bool = False,
                       num_batches: int | None = None) -> SharpnessHook:
  """A train-loop hook logging the top Hessian eigenvalue ("sharpness") every few steps.

  Math:
    ``sharpness = λ_max(∇²L(θ_t))``, the largest Ritz value of ``num_iters``
    Lanczos steps on :func:`hessian_vp` at the current parameters (the quantity
    that rises to ``2/η`` at the edge of stability, Cohen et al. 2021). With
    ``with_trace`` it also logs ``tr ∇²L`` by :func:`trace` and its standard error.

  Args:
    loss_fn: a contract loss (mean over the batch), as in :func:`hessian_vp`.
    batches: the fixed probe batch or batches, as in :func:`hessian_vp`.
    every_steps: the loop calls the hook when ``step % every_steps == 0``.
    num_iters: Lanczos steps (capped at the parameter count).
    with_trace: also log ``"hessian_trace"`` and ``"hessian_trace_stderr"``.
    trace_samples: matvecs for the trace estimate.
    trace_method: ``"hutch++"`` or ``"hutchinson"``.
    seed: the probes use ``fold_in(key(seed), step)``; the train state's key is untouched.
    dtype: Lanczos/trace working dtype (``jnp.float64`` runs in an x64 scope).
    state: a fixed model state for the probe; None (default) reads the train
      state's ``model_state`` at each call (the current BatchNorm statistics)
      when the train state has one and ``loss_fn`` takes ``state``.
    train: probe in train mode (batch statistics), as in :func:`hessian_vp`.
    num_batches: with a step -> batch function (``jaxlab.data.Batches``), the
      number of steps that make the probe data set.

  Returns:
    A hook with ``every_steps`` and ``__call__(step, state) -> dict[str, float]``;
    ``state`` is any object with a ``params`` attribute (the train state), and
    optionally ``model_state``.

  Raises:
    ValueError: non-positive ``every_steps``/``num_iters``, a bad trace setting,
      or an empty ``batches``.

  Example:
    >>> hook = sharpness_callback(loss_fn, probe_batch, every_steps=100, with_trace=True)
    >>> hook(100, state)  # {"sharpness": ..., "hessian_trace": ..., ...}

  References:
    Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient descent on neural networks
    typically occurs at the edge of stability", ICLR 2021, arXiv:2103.00065.
  """
  every_steps = _pos_int("every_steps", every_steps)
  num_iters = _pos_int("num_iters", num_iters)
  if trace_method not in METHODS:
    raise ValueError(f"trace_method is {trace_method!r}; allowed: {', '.join(METHODS)}.")
  trace_samples = _pos_int("trace_samples", trace_samples,
                           lo=2 if trace_method == "hutchinson" else 6)
  how, data = ops._classify(batches, num_batches)  # validates before the first call
  for i, b in enumerate([data] if how == "one" else data if how == "many" else [data.first]):
    ops.batch_size(b, "batches" if how == "one" else f"batch {i}")
  contract.check_loss(loss_fn, state=state)
  resolve_dtype(np.zeros(1, np.float32), dtype)
  return SharpnessHook(loss_fn, batches, every_steps, num_iters, bool(with_trace), trace_samples,
                       trace_method, int(seed), dtype, state, bool(train), num_batches)
