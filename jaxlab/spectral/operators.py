"""Curvature operators: Hessian- and GGN-vector products over one batch or a data set.

Both operators return a ``matvec(v) -> pytree`` with the structure of ``params``.
For one in-memory batch the matvec is a ``jax.tree_util.Partial`` (a pytree
holding params and batch), so the Lanczos, trace and density routines can pass
it into their own ``jax.jit`` as an argument and fuse it into one compiled loop.
For an iterable of batches it is a :class:`DataSetOperator`, a host-side loop
over jitted per-batch products that never holds the data set in memory.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import math
import weakref
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import Partial

PyTree = Any
Batch = Any


# ---------------------------------------------------------------------------
# Flattening between pytrees and one vector (explicit dtypes, no silent casts).


class FlatSpec(NamedTuple):
  """Static description of a parameter pytree: structure, shapes, dtypes."""

  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]

  @property
  def size(self) -> int:
    return int(sum(math.prod(s) for s in self.shapes))


def flat_spec(params_like: PyTree, name: str = "params_like") -> FlatSpec:
  leaves, treedef = jax.tree_util.tree_flatten(params_like)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; a non-empty pytree of arrays is required.")
  shapes, dtypes = [], []
  for leaf in leaves:
    dt = jnp.result_type(leaf)
    if not jnp.issubdtype(dt, jnp.floating):
      raise ValueError(f"{name} has a leaf of dtype {dt}; only real floating-point leaves are allowed.")
    shapes.append(tuple(int(d) for d in jnp.shape(leaf)))
    dtypes.append(np.dtype(dt))
  return FlatSpec(treedef, tuple(shapes), tuple(dtypes))


def check_like(tree: PyTree, spec: FlatSpec, name: str = "v") -> None:
  """Raise ValueError unless ``tree`` has the structure and leaf shapes of ``spec``."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if treedef != spec.treedef:
    raise ValueError(
        f"{name} has pytree structure {treedef}, but the operator's parameters have "
        f"structure {spec.treedef}; pass a pytree shaped like params.")
  for i, (leaf, shape) in enumerate(zip(leaves, spec.shapes, strict=True)):
    if tuple(jnp.shape(leaf)) != shape:
      raise ValueError(
          f"{name} leaf {i} has shape {tuple(jnp.shape(leaf))}, expected {shape} (the shape of "
          "the matching parameter).")


def ravel(tree: PyTree, spec: FlatSpec, dtype: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def unravel(flat: jax.Array, spec: FlatSpec, dtypes: Any = None) -> PyTree:
  """Split a vector into leaves; cast to ``dtypes`` (default: the parameters' dtypes)."""
  sizes = [math.prod(s) for s in spec.shapes]
  cuts = np.cumsum(sizes)[:-1].tolist()
  parts = jnp.split(flat, cuts) if cuts else [flat]
  out = []
  for part, shape, dt in zip(parts, spec.shapes, spec.dtypes, strict=True):
    out.append(jnp.reshape(part, shape).astype(dt if dtypes is None else dtypes))
  return jax.tree_util.tree_unflatten(spec.treedef, out)


def x64_scope(dtype: Any):
  """``jax.enable_x64`` for the duration of a float64 computation, else a no-op.

  The flag is restored on exit, so the caller's global setting is never flipped.
  """
  if dtype is not None and np.dtype(dtype) == np.float64:
    return jax.enable_x64(True)
  return contextlib.nullcontext()


# ---------------------------------------------------------------------------
# Batches: one batch or an iterable of them; placement over local devices.


def _is_single_batch(batches: Any) -> bool:
  if isinstance(batches, (list, collections.abc.Iterator)) or (
      callable(batches) and not hasattr(batches, "shape")):
    return False
  if isinstance(batches, (tuple, collections.abc.Mapping)) or hasattr(batches, "shape"):
    return True
  return not isinstance(batches, collections.abc.Iterable)


def batch_size(batch: Batch, name: str = "batch") -> int:
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; a batch is a pytree of arrays with a leading "
                     "batch dimension.")
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) > 0 else None for x in leaves}
  if None in sizes:
    raise ValueError(f"{name} has a scalar leaf; every leaf needs a leading batch dimension.")
  if len(sizes) != 1:
    raise ValueError(f"{name} leaves have different leading (batch) sizes {sorted(sizes)}; "
                     "all leaves must share one batch size.")
  (n,) = sizes
  if n == 0:
    raise ValueError(f"{name} has batch size 0; each batch needs at least one example.")
  return n


@functools.lru_cache(maxsize=None)
def _data_mesh(num_devices: int) -> Mesh:
  return Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def place_batch(batch: Batch) -> Batch:
  """Shard ``batch`` over local devices along its leading axis (replicate if it does not divide)."""
  n = batch_size(batch)
  mesh = _data_mesh(len(jax.devices()))
  spec = PartitionSpec("data") if n % mesh.size == 0 else PartitionSpec()
  return jax.device_put(batch, NamedSharding(mesh, spec))


class BatchSource:
  """Re-iterable view of ``batches``: a list, a re-iterable, or a zero-argument factory."""

  def __init__(self, batches: Any, name: str = "batches"):
    if isinstance(batches, collections.abc.Iterator):
      raise ValueError(
          f"{name} is a one-shot iterator ({type(batches).__name__}); the operator is applied many "
          "times, so pass a list of batches or a zero-argument callable returning a fresh iterable.")
    self._batches = batches
    self._name = name
    first = next(iter(self), None)
    if first is None:
      raise ValueError(f"{name} is empty; pass at least one batch.")
    self.first = first

  def __iter__(self):
    src = self._batches() if callable(self._batches) else self._batches
    return iter(src)


# ---------------------------------------------------------------------------
# Per-batch products (jitted once per loss function).

_HVP_CACHE: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()
_GGN_CACHE: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _cached(cache, key, make):
  try:
    fn = cache.get(key)
  except TypeError:  # not weak-referenceable: build a fresh one
    return make()
  if fn is None:
    fn = make()
    cache[key] = fn
  return fn


def _check_v(params: PyTree, v: PyTree) -> None:
  check_like(v, flat_spec(params, "params"), "v")


def _in_params_dtype(product: Callable, params: PyTree, v: PyTree) -> PyTree:
  """``product(v)`` with v checked against params, cast to their dtypes, the result cast back."""
  _check_v(params, v)
  v_p = jax.tree.map(lambda t, p: t.astype(p.dtype), v, params)
  return jax.tree.map(lambda h, t: h.astype(t.dtype), product(v_p), v)


class _Product:
  """A per-batch curvature product ``(params, batch, v) -> Mv``, jitted, plus its linearization.

  One instance per loss (or model and output loss), so a ``Partial`` holding it
  hashes alike at any params and batch and compiled loops are reused.
  ``product(params, batch, v)`` and ``linearize(params, batch)(v)`` take ``v`` in
  the params' dtypes; the latter is evaluated from stored residuals: the product
  is linear in ``v`` at a fixed point, so a loop of many products (Lanczos) pays
  the primal computation once (see :func:`linearized`).
  """

  def __init__(self, product: Callable, linearize: Callable):
    self._product = jax.jit(
        lambda params, batch, v: _in_params_dtype(functools.partial(product, params, batch),
                                                  params, v))
    self._linearize = linearize

  def __call__(self, params: PyTree, batch: Batch, v: PyTree) -> PyTree:
    return self._product(params, batch, v)

  def linearize(self, params: PyTree, batch: Batch) -> Callable:
    return functools.partial(_in_params_dtype, self._linearize(params, batch), params)


def linearized(matvec: Callable) -> Callable:
  """The same operator with its primal work done once, for a loop of many products.

  For a single-batch :func:`hessian_vp` or :func:`ggn_vp` operator, returns
  ``v -> Mv`` that evaluates only the tangent part of the product from residuals
  computed now (``jax.linearize``: a Hessian-vector product then costs ≈ 2
  gradients instead of ≈ 2.5-3, and a GGN product one forward-tangent and one
  backward pass). Call it inside the ``jax.jit`` that runs the loop: the result
  closes over the residuals and is not itself a pytree. Any other matvec is
  returned unchanged. Lanczos, and with it ``top_eigenpairs``,
  ``spectral_density`` and ``sharpness_callback``, does this internally.

  Example:
    >>> @jax.jit
    ... def power(mv, v):
    ...   lin = linearized(mv)
    ...   return jax.lax.fori_loop(0, 20, lambda i, u: normalize(lin(u)), v)
  """
  if isinstance(matvec, Partial) and isinstance(matvec.func, _Product):
    return matvec.func.linearize(*matvec.args)
  return matvec


def _make_hvp(loss_fn: Callable) -> _Product:
  grad_fn = jax.jit(jax.grad(loss_fn))

  def hvp(params, batch, v_p):
    return jax.jvp(lambda p: grad_fn(p, batch), (params,), (v_p,))[1]

  def linearize(params, batch):
    return jax.linearize(lambda p: grad_fn(p, batch), params)[1]

  return _Product(hvp, linearize)


def _make_ggn(apply_fn: Callable, output_loss_fn: Callable, has_aux: bool) -> _Product:
  def out_fn(params, x):
    out = apply_fn(params, x)
    return out[0] if has_aux else out

  def per_example_hvp(z, y, u):
    grad_z = lambda zz: jax.grad(output_loss_fn)(zz, y)
    return jax.jvp(grad_z, (z,), (u,))[1]

  def linearize(params, batch):
    x, y = batch
    n = batch_size(batch)
    z, jvp_fn = jax.linearize(lambda p: out_fn(p, x), params)
    _, vjp_fn = jax.vjp(lambda p: out_fn(p, x), params)

    def gv(v_p):
      hjv = jax.vmap(per_example_hvp)(z, y, jvp_fn(v_p))  # H_out J v, per example
      return vjp_fn(jax.tree.map(lambda a: a / n, hjv))[0]  # J^T H_out J v / n

    return gv

  def ggn(params, batch, v_p):
    return linearize(params, batch)(v_p)

  return _Product(ggn, linearize)


class DataSetOperator:
  """``v -> Σ_b n_b · M_b v / Σ_b n_b`` over an iterable of batches (host loop, jitted per batch).

  ``M_b`` is the per-batch Hessian or GGN of a loss that is a mean over the batch,
  so the result is the operator of the mean loss over the whole data set.
  """

  host_loop = True  # tells lanczos/trace to drive matvecs from Python

  def __init__(self, per_batch: Callable, params: PyTree, source: BatchSource):
    self._per_batch = per_batch
    self.params = params
    self._source = source

  def __call__(self, v: PyTree) -> PyTree:
    _check_v(self.params, v)
    total, count = None, 0
    for i, batch in enumerate(self._source):
      n = batch_size(batch, f"batch {i}")
      mv = self._per_batch(self.params, place_batch(batch), v)
      total = _scale(mv, n) if total is None else _axpy(total, mv, n)
      count += n
    if total is None:
      raise ValueError("batches yielded no batch on this pass; pass at least one batch.")
    return _scale(total, 1.0 / count)


@jax.jit
def _axpy(total, mv, n):
  return jax.tree.map(lambda t, a: t + a * n, total, mv)


@jax.jit
def _scale(tree, c):
  return jax.tree.map(lambda a: a * c, tree)


def _operator(product: "_Product", params: PyTree, batches: Any):
  flat_spec(params, "params")
  if _is_single_batch(batches):
    return Partial(product, params, place_batch(batches))
  source = BatchSource(batches)
  batch_size(source.first, "batch 0")
  return DataSetOperator(product, params, source)


def hessian_vp(loss_fn: Callable, params: PyTree, batches: Any) -> Callable:
  """Hessian-vector product of a mean loss over one batch or a whole data set.

  Math:
    ``Hv = ∂/∂ε ∇L(θ + εv)|_{ε=0}``, forward-over-reverse (a ``jax.jvp`` of
    ``jax.grad``; Pearlmutter 1994). Over batches ``b`` of sizes ``n_b`` the
    data-set Hessian of the per-example mean is ``H = Σ_b n_b H_b / Σ_b n_b``,
    where ``H_b`` is the Hessian of ``loss_fn(params, batch_b)`` (a mean over
    the batch), so a last batch of another size is weighted correctly.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over the batch.
    params: the point θ, a pytree of floating arrays.
    batches: one batch (a pytree of arrays with a leading batch axis; a tuple,
      dict or array), or many: a list of batches, a re-iterable, or a
      zero-argument callable returning a fresh iterable (e.g. a generator
      function). Each batch is sharded over local devices along its first axis
      when its size is a multiple of the device count, else replicated.

  Returns:
    ``matvec(v) -> Hv`` with ``v`` and ``Hv`` shaped like ``params``. For one
    batch it is a ``jax.tree_util.Partial`` (usable inside ``jax.jit``); for
    several a :class:`DataSetOperator` (a host loop over jitted batches). One
    call costs ≈ 2.5 gradients (primal, its tangent, and their backward pass);
    inside a loop of products at the same point (Lanczos, or your own loop via
    :func:`linearized`) the primal is computed once and each product costs ≈ 2.

  Raises:
    ValueError: an empty iterable, a one-shot iterator, a batch without a
      consistent leading axis, or (at call time) ``v`` not shaped like params.

  Example:
    >>> mv = hessian_vp(loss_fn, params, [(x1, y1), (x2, y2)])
    >>> hv = mv(jax.tree.map(jnp.ones_like, params))

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Comput. 1994.
  """
  return _operator(_cached(_HVP_CACHE, loss_fn, lambda: _make_hvp(loss_fn)), params, batches)


def ggn_vp(apply_fn: Callable, output_loss_fn: Callable, params: PyTree, batches: Any,
           has_aux: bool = False) -> Callable:
  """Generalized Gauss-Newton-vector product ``Gv = (1/N) Σ_i J_iᵀ H_i J_i v``.

  Math:
    With ``z_i = f(θ, x_i)`` the model output, ``J_i = ∂z_i/∂θ`` and
    ``H_i = ∇²_z ℓ(z_i, y_i)`` the Hessian of the per-example output loss,
    ``G = (1/N) Σ_i J_iᵀ H_i J_i`` (Schraudolph 2002, eq. 7; Martens 2020,
    §5). ``J v`` comes from ``jax.linearize`` of ``apply_fn``, ``H_i (J v)_i``
    from a forward-over-reverse product of ``ℓ`` per example (``vmap``), and
    ``Jᵀ(·)`` from ``jax.vjp``. For softmax cross-entropy ``H_i = diag(p) − ppᵀ``.

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs`` with a leading batch axis (or
      ``(outputs, aux)`` when ``has_aux``).
    output_loss_fn: ``output_loss_fn(output_i, y_i) -> scalar``, the loss of ONE
      example given its output; the training loss is its mean over examples.
    params: the point θ.
    batches: as in :func:`hessian_vp`; each batch is a pair ``(x, y)``.
    has_aux: whether ``apply_fn`` returns ``(outputs, aux)``.

  Returns:
    ``matvec(v) -> Gv`` shaped like ``params`` (a ``Partial`` or a
    :class:`DataSetOperator`, as in :func:`hessian_vp`).

  Example:
    >>> ce = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y)
    >>> mv = ggn_vp(model.apply, ce, params, (x, y))

  References:
    Schraudolph, "Fast curvature matrix-vector products for second-order
    gradient descent", Neural Comput. 2002. Martens, "New insights and
    perspectives on the natural gradient method", JMLR 2020.
  """
  first = batches if _is_single_batch(batches) else None
  if first is not None and not (isinstance(first, (tuple, list)) and len(first) == 2):
    raise ValueError(f"ggn_vp needs each batch to be a pair (x, y); got {type(first).__name__}.")
  per_model = _cached(_GGN_CACHE, apply_fn, dict)
  key = (output_loss_fn, bool(has_aux))
  if key not in per_model:
    per_model[key] = _make_ggn(apply_fn, output_loss_fn, has_aux)
  return _operator(per_model[key], params, batches)


# ---------------------------------------------------------------------------
# Restriction to a sub-tree of parameters.


def _path_parts(path) -> tuple[str, ...]:
  out = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
    else:
      out.append(str(k))
  return tuple(out)


def restrict_to_subtree(loss_fn: Callable, params: PyTree, where: Any
                        ) -> tuple[Callable, PyTree]:
  """Restrict ``loss_fn`` to a sub-tree of ``params``, the other leaves frozen.

  Every probe applied to ``(sub_loss_fn, sub_params)`` then measures the block
  ``∂²L/∂θ_S²`` of the Hessian for the selected leaves ``S``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the full parameter pytree (the frozen values are taken from it).
    where: which leaves to keep: a path prefix (``"params/Dense_0"`` or a tuple
      of keys, matched component by component), a predicate
      ``where(path_tuple_of_str, leaf) -> bool``, or a pytree of bools shaped
      like ``params``.

  Returns:
    ``(sub_loss_fn, sub_params)``: ``sub_params`` is ``params`` with every
    unselected leaf replaced by ``None`` (an empty sub-tree, so tree maps and
    the probes skip it), and ``sub_loss_fn(sub_params, batch)`` evaluates
    ``loss_fn`` with the frozen leaves put back.

  Example:
    >>> f, p = restrict_to_subtree(loss_fn, params, "params/Dense_1")
    >>> lam = top_eigenpairs(hessian_vp(f, p, batch), p, k=1, key=key).eigenvalues
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [_path_parts(p) for p, _ in flat]
  leaves = [x for _, x in flat]
  if isinstance(where, (str, tuple)):
    prefix = tuple(s for s in where.split("/") if s) if isinstance(where, str) else tuple(
        str(s) for s in where)
    mask = [p[:len(prefix)] == prefix for p in paths]
    what = f"path prefix {where!r}"
  elif callable(where):
    mask = [bool(where(p, x)) for p, x in zip(paths, leaves, strict=True)]
    what = "the predicate"
  else:
    m_leaves, m_def = jax.tree_util.tree_flatten(where)
    if m_def != treedef:
      raise ValueError(f"where (a mask) has structure {m_def}, expected that of params {treedef}.")
    mask = [bool(m) for m in m_leaves]
    what = "the mask"
  if not any(mask):
    known = ", ".join("/".join(p) for p in paths[:8])
    raise ValueError(f"where selects no parameter leaf ({what}); leaf paths include: {known}.")
  sub_params = jax.tree_util.tree_unflatten(
      treedef, [x if m else None for x, m in zip(leaves, mask, strict=True)])

  def sub_loss_fn(sub, batch):
    sub_leaves = jax.tree_util.tree_flatten(sub, is_leaf=lambda t: t is None)[0]
    if len(sub_leaves) != len(leaves):
      raise ValueError("sub_loss_fn got a pytree not shaped like sub_params.")
    full = [s if m else x for s, x, m in zip(sub_leaves, leaves, mask, strict=True)]
    return loss_fn(jax.tree_util.tree_unflatten(treedef, full), batch)

  return sub_loss_fn, sub_params


__all__ = [
    "DataSetOperator",
    "hessian_vp",
    "ggn_vp",
    "restrict_to_subtree",
]

