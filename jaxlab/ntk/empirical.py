"""Empirical (finite-width) NTK and NNGP of any model given as an apply function.

    Theta_hat(x1, x2)[i, j, o, q] = sum_theta d f_o(x1_i)/d theta * d f_q(x2_j)/d theta
                                                          (Jacot et al. 2018, Eq. 2)
    K_hat(x1, x2)[i, j, o, q]     = mean over draws theta_s ~ init of f_o(x1_i) f_q(x2_j)
                                                          (Lee et al. 2018, Eq. 4)

The model enters through the model contract (`jaxlab.models.contract`):
`apply_fn(params, x)` or `apply_fn(params, x, *, state)` (state: flax
collections such as `batch_stats`, carried and never differentiated; fixed
during the probe), returning `y` of shape (N, O) or (N,) (read as O = 1) or
`(y, aux)` (jaxlab's `models.mlp(...).apply`, anything returning aux: y is
used). An apply_fn with a `train` keyword is called with `train=False`
(running statistics, no dropout). For a linen module with BatchNorm:

    apply = lambda p, x, *, state: module.apply({"params": p, **state}, x, train=False)
    empirical_ntk(apply, params, x, state=state)

Output axes, as neural-tangents' `trace_axes`: `trace_axes=(-1,)` (default)
gives the (N1, N2) mean over o of Theta_hat[:, :, o, o] -- the per-output
kernel when the outputs are independent copies, as at infinite width, and O
times cheaper with the Jacobian method; `trace_axes=()` gives the full
(N1, N2, O, O).

Two ways to compute the NTK, picked by `method`:

* "jacobian": materialize J1 = df(x1)/dtheta (N1 x O x P) and J2, one example at
  a time (vmap over examples of a reverse-mode Jacobian on a batch of one, so
  apply_fn must treat examples independently: eval mode, no batch
  statistics), and contract over the parameters. Cost about (N1 + N2) O
  backward passes of one example + N1 N2 O P multiply-adds (O^2 for the full
  kernel); memory (N1 + N2) O P numbers.
* "ntvp": never builds a Jacobian. For each of the N2 O output directions
  (j, q), a VJP of f(x2_j) gives v = J2[j, q]^T (params-shaped) and a JVP of
  f(x1) along v gives J1 v = Theta[:, j, :, q]. Cost about N2 O (backward of
  one example + a forward-with-tangent of the N1 examples), whether traced or
  not; memory O(P + N1 O) per direction (`ntvp_chunk` directions at once).
* "auto" (default): measured, not modelled. The first time it meets a given
  (apply_fn object, params/state/block shapes and dtypes, trace_axes,
  backend) it times both methods on the first PROBE_ROWS = 16 rows of the
  block (at zeros of the same shapes: the cost does not depend on the values,
  and zeros can be timed even when params are tracers under `jax.jit`), and
  caches the faster (`auto_choices()` lists the choices and times). Only a
  Jacobian over `memory_budget_bytes` is ruled out without timing. The first
  call pays both methods' compiles on the probe (2-5 s on a 2-core CPU for
  the benchmark's models); later calls with the same apply_fn object pay
  nothing -- so keep one apply_fn, not a new lambda per call.

  Why measured: the winner depends on the model, not on the memory. On a
  2-core CPU (benchmarks/ntk.py, traced kernel, N = 8-64): a width-512 MLP
  (285k params, O = 10) is 1.7-2.9x faster with "ntvp" (5x with
  trace_axes=()), while SmallCNN (5k params whose convolutions are reused at
  64 positions: a forward pass costs far more than P multiply-adds) is 4-17x
  faster with "jacobian". A FLOP model would need each layer's reuse factor;
  the ratio at 16 rows had the same sign as at 64 on both. The probe is a
  slice: a model whose costs cross between 16 rows and the block size can be
  given the slower method (pass `method=` then, or time at your block size
  with `batch_size=16`).

`batch_size=b` splits x1 and x2 into blocks of b rows (the last padded by
repeating its last row, so every block has one shape and one compile) and
assembles the kernel block by block: device memory is that of a (b, b)
problem. With x2 None only the blocks on and above the diagonal are computed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.models import contract

METHODS = ("auto", "jacobian", "ntvp")
OUTPUTS = ("full", "trace")
TRACE_AXES = ((), (-1,), (1,))

# Cache of "auto"'s measured choice: key (see `_auto_key`) -> (method, seconds per method).
_AUTO_CHOICES: dict[Any, tuple[str, dict[str, float]]] = {}
# Rows of x1 and x2 "auto" times both methods on (see the module docstring).
PROBE_ROWS = 16


def _num_params(params) -> int:
  return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))


def choose_method(n1: int, n2: int, n_out: int, n_params: int, itemsize: int = 4,
                  memory_budget_bytes: int = 2**30) -> str:
  """The memory rule: "jacobian" if both Jacobians fit the budget, else "ntvp".

  "auto" uses it only to rule out a Jacobian that would not fit; between two
  methods that fit it measures (see the module docstring).
  """
  return "jacobian" if (n1 + n2) * n_out * n_params * itemsize <= memory_budget_bytes else "ntvp"


def auto_choices() -> dict:
  """The choices "auto" has measured in this process: key -> (method, {method: seconds})."""
  return dict(_AUTO_CHOICES)


# ------------------------------------------------------------------ calling the model


def _takes(apply_fn: Callable) -> tuple[bool, bool]:
  spec = contract.loss_spec(apply_fn)
  return spec.takes_state, spec.takes_train


def _out(apply_fn, takes_train, params, x, state):
  """apply_fn's y as (N, O), at eval mode and fixed state."""
  kwargs = {}
  if state is not None:
    kwargs["state"] = state
  if takes_train:
    kwargs["train"] = False
  y = apply_fn(params, x, **kwargs)
  if isinstance(y, (tuple, list)):
    if len(y) != 2:
      raise ValueError(f"apply_fn returned a {type(y).__name__} of {len(y)}; allowed: y of shape "
                       "(N, O) or (N,), or (y, aux)")
    y = y[0]
  if not hasattr(y, "ndim") or y.ndim not in (1, 2):
    raise ValueError(f"apply_fn's output y has shape {getattr(y, 'shape', type(y).__name__)}; "
                     "allowed: (N, O) or (N,) (reshape other output shapes to (N, O))")
  return y[:, None] if y.ndim == 1 else y


# ------------------------------------------------------------------ the two methods


def _jacobian_block(apply_fn, takes_train, trace, params, state, x1, x2):
  # Per-example Jacobians (vmap over examples of jacrev on a batch of one): the
  # backward passes carry one example's activations, not the whole batch's.
  def per_example(x):
    return jax.jacrev(lambda p: _out(apply_fn, takes_train, p, x[None], state)[0])(params)

  j1 = jax.vmap(per_example)(x1)
  j2 = j1 if x2 is None else jax.vmap(per_example)(x2)

  def contract_leaf(a, b):  # a: (N1, O, *p), b: (N2, O, *p)
    a = a.reshape(a.shape[:2] + (-1,))
    b = b.reshape(b.shape[:2] + (-1,))
    if trace:
      return jnp.einsum("iop,jop->ij", a, b) / a.shape[1]
    return jnp.einsum("iop,jqp->ijoq", a, b)

  terms = jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract_leaf, j1, j2))
  out = terms[0]
  for t in terms[1:]:
    out = out + t
  return out


def _ntvp_block(apply_fn, takes_train, trace, chunk, params, state, x1, x2):
  x2 = x1 if x2 is None else x2
  n1, n2 = x1.shape[0], x2.shape[0]
  f1 = lambda p: _out(apply_fn, takes_train, p, x1, state)
  n_out = jax.eval_shape(f1, params).shape[1]

  def column(idx):  # output direction (j, q) -> Theta[:, j, :, q], (N1, O)
    j, q = idx // n_out, idx % n_out
    xj = jax.lax.dynamic_index_in_dim(x2, j, keepdims=True)
    y, vjp = jax.vjp(lambda p: _out(apply_fn, takes_train, p, xj, state), params)
    e_q = jax.nn.one_hot(q, n_out, dtype=y.dtype)
    (v,) = vjp(e_q[None])
    col = jax.jvp(f1, (params,), (v,))[1]
    return col @ e_q if trace else col

  # lax.map in vmapped chunks: memory is `chunk` tangents, never the Jacobian.
  cols = jax.lax.map(column, jnp.arange(n2 * n_out), batch_size=min(chunk, n2 * n_out))
  if trace:
    return cols.reshape(n2, n_out, n1).mean(1).T
  return cols.reshape(n2, n_out, n1, n_out).transpose(2, 0, 3, 1)


_JITTED = {
    "jacobian": jax.jit(_jacobian_block, static_argnums=(0, 1, 2)),
    "ntvp": jax.jit(_ntvp_block, static_argnums=(0, 1, 2, 3)),
}


def _block_fn(method, apply_fn, takes_train, trace, chunk):
  if method == "jacobian":
    return lambda p, s, a, b: _JITTED["jacobian"](apply_fn, takes_train, trace, p, s, a, b)
  return lambda p, s, a, b: _JITTED["ntvp"](apply_fn, takes_train, trace, chunk, p, s, a, b)


# ------------------------------------------------------------------ blocks and auto


def _pad_rows(x, b):
  """x with rows appended (copies of its last row) up to a multiple of b."""
  pad = -x.shape[0] % b
  if not pad:
    return x
  return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def _shapes(tree):
  return jax.tree_util.tree_structure(tree), tuple(
      (tuple(np.shape(x)), str(jnp.result_type(x))) for x in jax.tree_util.tree_leaves(tree))


def _auto_key(apply_fn, params, state, xa, xb, trace):
  return (apply_fn, _shapes(params), _shapes(state), _shapes(xa),
          None if xb is None else _shapes(xb), trace, jax.default_backend())


def _time_once(fn, *args) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  best = float("inf")
  for _ in range(2):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def _zeros_like(tree):
  return jax.tree_util.tree_map(lambda a: jnp.zeros(np.shape(a), jnp.result_type(a)), tree)


def _pick(method, apply_fn, takes_train, trace, chunk, params, state, xa, xb, n_out,
          memory_budget_bytes):
  """The method for blocks of xa (and xb; None: a symmetric block)."""
  if method != "auto":
    return method
  n_b = 0 if xb is None else xb.shape[0]
  leaves = jax.tree_util.tree_leaves(params)
  itemsize = jnp.dtype(jnp.result_type(*leaves)).itemsize if leaves else 4
  if choose_method(xa.shape[0], n_b, n_out, _num_params(params), itemsize,
                   memory_budget_bytes) == "ntvp":
    return "ntvp"  # the Jacobians would not fit: nothing to measure
  key = _auto_key(apply_fn, params, state, xa, xb, trace)
  if key in _AUTO_CHOICES:
    return _AUTO_CHOICES[key][0]
  # Time both on the first PROBE_ROWS rows of the block, at zeros of the same
  # shapes and dtypes: the cost does not depend on the values, and zeros can be
  # timed even when params are tracers (empirical_ntk under jax.jit).
  probe = _zeros_like((params, state, xa[:PROBE_ROWS], None if xb is None else xb[:PROBE_ROWS]))
  times = {m: _time_once(_block_fn(m, apply_fn, takes_train, trace, chunk), *probe)
           for m in ("jacobian", "ntvp")}
  best = min(times, key=times.get)
  if len(_AUTO_CHOICES) >= 256:
    _AUTO_CHOICES.pop(next(iter(_AUTO_CHOICES)))
  _AUTO_CHOICES[key] = (best, times)
  return best


def empirical_ntk(apply_fn: Callable, params: Any, x1: jax.Array, x2: jax.Array | None = None,
                  *, state: Any = None, trace_axes: Sequence[int] = (-1,), method: str = "auto",
                  batch_size: int | None = None, ntvp_chunk: int = 32,
                  output: str | None = None, memory_budget_bytes: int = 2**30) -> jax.Array:
  """Empirical NTK J(x1) J(x2)^T of `apply_fn` at `params` (and fixed `state`).

  Math:
    Theta_hat[i, j, o, q] = <d f_o(x1_i)/d theta, d f_q(x2_j)/d theta>
    summed over every leaf of the params pytree (Jacot et al. 2018, Eq. 2);
    with trace_axes=(-1,) the mean over o of Theta_hat[i, j, o, o].

  Args:
    apply_fn: `apply_fn(params, x)` or `apply_fn(params, x, *, state)` returning
      y (N, O) or (N,), or `(y, aux)`; a `train` keyword gets False (see the
      module docstring). Examples must be independent (eval mode).
    params: any pytree of float arrays (differentiated).
    x1: (N1, ...) inputs.
    x2: (N2, ...) inputs; None -> x1 (the kernel is symmetric and computed once).
    state: model state passed as `state=` (e.g. {"batch_stats": ...}); not
      differentiated. None: apply_fn is called without it.
    trace_axes: (-1,) (default; also (1,)) -> (N1, N2), the mean over the
      output axis of the diagonal; () -> the full (N1, N2, O, O).
    method: "jacobian", "ntvp" or "auto" (measured once and cached; see the
      module docstring and `auto_choices()`).
    batch_size: None (one block) or b: x1, x2 in blocks of b rows; memory is
      that of a (b, b) problem.
    ntvp_chunk: output directions per vmapped step of "ntvp".
    output: legacy alias of trace_axes: "full" = (), "trace" = (-1,).
    memory_budget_bytes: "auto" never picks a Jacobian larger than this.

  Returns:
    The kernel, (N1, N2) or (N1, N2, O, O), in the dtype of apply_fn's output.

  Example:
    >>> apply = lambda p, x: jnp.tanh(x @ p["w"])
    >>> p = {"w": jnp.ones((3, 2))}
    >>> empirical_ntk(apply, p, jnp.ones((4, 3))).shape
    (4, 4)
    >>> empirical_ntk(apply, p, jnp.ones((4, 3)), trace_axes=()).shape
    (4, 4, 2, 2)

  References:
    Jacot, Gabriel, Hongler 2018, arXiv:1806.07572; Novak et al. 2022,
    "Fast Finite Width Neural Tangent Kernel", arXiv:2206.08720 (the
    Jacobian-contraction vs. NTK-vector-product trade-off).
  """
  trace = _check_common(apply_fn, x1, x2, state, trace_axes, output, batch_size)
  if method not in METHODS:
    raise ValueError(f"method={method!r}: allowed {METHODS}")
  if isinstance(ntvp_chunk, bool) or not isinstance(ntvp_chunk, int) or ntvp_chunk < 1:
    raise ValueError(f"ntvp_chunk={ntvp_chunk!r}: allowed an int >= 1")
  _, takes_train = _takes(apply_fn)
  x1 = jnp.asarray(x1)
  x2 = None if x2 is None else jnp.asarray(x2)
  n1 = x1.shape[0]
  n2 = n1 if x2 is None else x2.shape[0]
  y = jax.eval_shape(lambda p, s, x: _out(apply_fn, takes_train, p, x, s), params, state, x1[:1])
  n_out = y.shape[1]

  def run(xa, xb):
    m = _pick(method, apply_fn, takes_train, trace, ntvp_chunk, params, state, xa, xb, n_out,
              memory_budget_bytes)
    return _block_fn(m, apply_fn, takes_train, trace, ntvp_chunk)(params, state, xa, xb)

  b = batch_size
  if b is None or (b >= n1 and b >= n2):
    return run(x1, x2)
  x1p = _pad_rows(x1, b)
  blocks1 = [x1p[i:i + b] for i in range(0, x1p.shape[0], b)]
  if x2 is None:
    blocks2 = blocks1
  else:
    x2p = _pad_rows(x2, b)
    blocks2 = [x2p[j:j + b] for j in range(0, x2p.shape[0], b)]
  rows = []
  done = {}
  for i, xa in enumerate(blocks1):
    row = []
    for j, xb in enumerate(blocks2):
      if x2 is None and j < i:  # the transpose of a block already computed
        blk = done[(j, i)]
        blk = blk.T if trace else blk.transpose(1, 0, 3, 2)
      else:
        blk = run(xa, None if (x2 is None and i == j) else xb)
        done[(i, j)] = blk
      row.append(blk)
    rows.append(jnp.concatenate(row, axis=1))
  return jnp.concatenate(rows, axis=0)[:n1, :n2]


def _draw(init_fn, takes_state, keys):
  """(params, state) drawn by init_fn from each key, stacked on a leading axis S."""
  def one(k):
    drawn = init_fn(k)
    return drawn if takes_state else (drawn, None)

  return jax.vmap(one)(keys)


def _outputs(apply_fn, takes_train, params_s, state_s, x):
  """apply_fn's y (S, N, O) at each of the S stacked draws."""
  return jax.vmap(lambda p, st: _out(apply_fn, takes_train, p, x, st))(params_s, state_s)


_DRAW = jax.jit(_draw, static_argnums=(0, 1))
_OUTPUTS = jax.jit(_outputs, static_argnums=(0, 1))


def empirical_nngp(init_fn: Callable, apply_fn: Callable, x1: jax.Array,
                   x2: jax.Array | None = None, *, num_samples: int, key: jax.Array,
                   trace_axes: Sequence[int] = (-1,), batch_size: int | None = None,
                   sample_chunk: int = 32) -> jax.Array:
  """Monte Carlo NNGP: the output covariance over random initializations.

  Math (Lee et al. 2018, Eq. 4; neural-tangents' `monte_carlo_kernel_fn`):
    K_hat[i, j, o, q] = (1/S) sum_s f_o(x1_i; theta_s) f_q(x2_j; theta_s),
    theta_s = init_fn(key_s), s = 1..S = num_samples;
    with trace_axes=(-1,) the mean over o of K_hat[i, j, o, o].
  The raw second moment (no mean subtracted): the outputs of the nets the NNGP
  describes have mean zero at initialization. Its Monte Carlo standard error
  is about sqrt((K_ii K_jj + K_ij^2) / (S O)) (Gaussian outputs, O independent
  copies when traced).

  Args:
    init_fn: `init_fn(key) -> params`; when apply_fn takes `state`,
      `init_fn(key) -> (params, state)` (e.g. `lambda k: models.linen_init(
      module, k, x[:1])`). Must be jittable.
    apply_fn: as for `empirical_ntk` (y or (y, aux); `state=`; `train=False`).
    x1: (N1, ...) inputs.
    x2: (N2, ...) inputs; None -> x1.
    num_samples: S, the number of draws (an int >= 1).
    key: a jax PRNG key, split into S draws.
    trace_axes: (-1,) -> (N1, N2); () -> (N1, N2, O, O).
    batch_size: None or b: the forward passes see b inputs at a time.
    sample_chunk: draws evaluated at once (vmapped); memory is that of
      sample_chunk forward passes.

  Returns:
    The kernel, (N1, N2) or (N1, N2, O, O).

  Example:
    >>> from jaxlab import models
    >>> m = models.mlp(3, (64,), 2, parametrization="ntk", weight_std=1.0, bias_std=0.1)
    >>> empirical_nngp(m.init, m.apply, jnp.eye(3), num_samples=8,
    ...                key=jax.random.key(0)).shape
    (3, 3)

  References:
    Lee et al. 2018, "Deep Neural Networks as Gaussian Processes",
    arXiv:1711.00165; Novak et al. 2020, "Neural Tangents", arXiv:1912.02803.
  """
  if not callable(init_fn):
    raise ValueError(f"init_fn={init_fn!r} is not callable; allowed: init_fn(key) -> params "
                     "(or (params, state) when apply_fn takes state)")
  trace = _check_common(apply_fn, x1, x2, None, trace_axes, None, batch_size)
  for name, v in (("num_samples", num_samples), ("sample_chunk", sample_chunk)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name}={v!r}: allowed an int >= 1")
  takes_state, takes_train = _takes(apply_fn)
  x1 = jnp.asarray(x1)
  x2 = None if x2 is None else jnp.asarray(x2)
  keys = jax.random.split(key, int(num_samples))
  chunk = min(int(sample_chunk), int(num_samples))
  pad = -int(num_samples) % chunk  # pad with repeated keys of weight 0: one compile
  keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
  weights = jnp.concatenate([jnp.ones(int(num_samples)), jnp.zeros(pad)])

  def outputs(drawn, x):
    b = x.shape[0] if batch_size is None else min(batch_size, x.shape[0])
    xp = _pad_rows(x, b)
    ys = [_OUTPUTS(apply_fn, takes_train, *drawn, xp[i:i + b]) for i in range(0, xp.shape[0], b)]
    return jnp.concatenate(ys, axis=1)[:, :x.shape[0]]

  total = None
  for c in range(0, keys.shape[0], chunk):
    w = weights[c:c + chunk]
    drawn = _DRAW(init_fn, takes_state, keys[c:c + chunk])
    y1 = outputs(drawn, x1)
    y2 = y1 if x2 is None else outputs(drawn, x2)
    if trace:
      term = jnp.einsum("s,sio,sjo->ij", w.astype(y1.dtype), y1, y2) / y1.shape[2]
    else:
      term = jnp.einsum("s,sio,sjq->ijoq", w.astype(y1.dtype), y1, y2)
    total = term if total is None else total + term
  return total / num_samples


def _check_common(apply_fn, x1, x2, state, trace_axes, output, batch_size) -> bool:
  """Argument checks shared by the NTK and NNGP; returns whether the output axis is traced."""
  if not callable(apply_fn):
    raise ValueError(f"apply_fn={apply_fn!r} is not callable; allowed: apply_fn(params, x) or "
                     "apply_fn(params, x, *, state) returning y or (y, aux)")
  takes_state, _ = _takes(apply_fn)
  if state is not None and not takes_state:
    raise ValueError("apply_fn takes no `state` argument, but state= was given; allowed: "
                     "apply_fn(params, x, *, state) (see jaxlab.models.contract)")
  if isinstance(trace_axes, (int, np.integer)) and not isinstance(trace_axes, bool):
    trace_axes = (int(trace_axes),)
  if output is not None:
    if output not in OUTPUTS:
      raise ValueError(f"output={output!r}: allowed {OUTPUTS} (or use trace_axes)")
    legacy = () if output == "full" else (-1,)
    if tuple(trace_axes) not in ((-1,), legacy):
      raise ValueError(f"output={output!r} and trace_axes={tuple(trace_axes)!r} disagree; "
                       "give only trace_axes")
    trace_axes = legacy
  if tuple(trace_axes) not in TRACE_AXES:
    raise ValueError(f"trace_axes={tuple(trace_axes)!r}: allowed () (full (N1, N2, O, O)) or "
                     "(-1,) / (1,) (the output axis: (N1, N2))")
  if np.ndim(x1) < 1 or (x2 is not None and np.ndim(x2) < 1):
    raise ValueError(f"x1, x2: need a leading batch axis; got shapes {np.shape(x1)}, "
                     f"{None if x2 is None else np.shape(x2)}")
  if x2 is not None and np.shape(x1)[1:] != np.shape(x2)[1:]:
    raise ValueError(f"x1, x2: need the same example shape; got {np.shape(x1)[1:]} and "
                     f"{np.shape(x2)[1:]}")
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or batch_size < 1):
    raise ValueError(f"batch_size={batch_size!r}: allowed None or an int >= 1")
  return tuple(trace_axes) != ()
