"""Curvature operators: Hessian- and GGN-vector products over one batch or a data set.

Both operators read the model contract (:mod:`jaxlab.models.contract`): a loss
or model of any contract form, evaluated at fixed model state (eval mode by
default), never differentiating the state. They return a ``matvec(v) ->
pytree`` with the structure of ``params``: a :class:`BatchOperator` for one
in-memory batch (a pytree, so it can be passed into ``jax.jit``) or a
:class:`DataSetOperator` for several batches or a data set. Both evaluate one
module-level jitted product per batch, with params, batch, model state and key
as arguments (never closed-over constants): one compile per (loss, shapes),
reused at any params and data; Lanczos, trace and density drive them from
Python (``host_loop``).
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import Partial

from jaxlab._tree import path_parts
from jaxlab.models import contract, precision

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
# Batches: one batch, several, or a step -> batch function; placement over local devices.

_NUM_BATCHES_HELP = ("allowed: num_batches=K (an int >= 1) with a step -> batch function such as "
                     "jaxlab.data.Batches (steps 0..K-1 are the data set), None otherwise")


def _is_container(x: Any) -> bool:
  return isinstance(x, (collections.abc.Mapping, tuple, list))


def _is_key(x: Any) -> bool:
  return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _classify(batches: Any, num_batches: Any, name: str = "batches") -> tuple[str, Any]:
  """``("one", batch)``, ``("many", list)``, ``("source", BatchSource)`` by the documented rule.

  A Mapping or an array is one batch; a list is several; a tuple is several when
  every element is a container (dict/tuple/list) of one pytree structure, one
  batch when no element is a container or they are mixed (``((x1, x2), y)``);
  a tuple of containers of different structures is ambiguous and refused.
  """
  from jaxlab.data import Batches

  if num_batches is not None:
    if isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or (
        num_batches < 1):
      raise ValueError(f"num_batches is {num_batches!r}; {_NUM_BATCHES_HELP}.")
    if not callable(batches) or hasattr(batches, "shape"):
      raise ValueError(f"num_batches is {num_batches} but {name} is a {type(batches).__name__}, "
                       f"not a step -> batch function; {_NUM_BATCHES_HELP}.")
    return "source", BatchSource(_Steps(batches, int(num_batches)), name)
  if isinstance(batches, Batches):
    raise ValueError(
        f"{name} is a jaxlab.data.Batches (a step -> batch function without a length) and "
        f"num_batches is None; {_NUM_BATCHES_HELP} (one epoch is "
        f"num_batches={batches.steps_per_epoch}).")
  if isinstance(batches, collections.abc.Mapping) or hasattr(batches, "shape"):
    return "one", batches
  if isinstance(batches, list):
    if not batches:
      raise ValueError(f"{name} is empty; pass at least one batch.")
    return "many", list(batches)
  if isinstance(batches, tuple):
    if not batches:
      raise ValueError(f"{name} is an empty tuple; pass one batch or at least one batch in a list.")
    kinds = [_is_container(b) for b in batches]
    if not all(kinds):
      return "one", batches
    structs = {jax.tree_util.tree_structure(b) for b in batches}
    if len(structs) > 1:
      raise ValueError(
          f"{name} is a tuple of {len(batches)} containers with different pytree structures, "
          "which is ambiguous (several batches, or one batch of nested parts?); allowed: a list "
          "of batches for several, or one batch as a dict (e.g. {'x': (x1, x2), 'y': y}).")
    return "many", list(batches)
  if callable(batches) and not isinstance(batches, collections.abc.Iterable) and _needs_arg(batches):
    raise ValueError(f"{name} is a function that takes an argument (a step -> batch function?) "
                     f"and num_batches is None; {_NUM_BATCHES_HELP}; a zero-argument callable "
                     "returning a fresh iterable of batches needs no num_batches.")
  if isinstance(batches, collections.abc.Iterator) or isinstance(
      batches, collections.abc.Iterable) or callable(batches):
    return "source", BatchSource(batches, name)
  return "one", batches


def _needs_arg(fn: Callable) -> bool:
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return False
  return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
             for p in sig.parameters.values())


class _Steps:
  """A zero-argument factory of ``fn(0), ..., fn(K-1)`` (a step -> batch function as a data set)."""

  def __init__(self, fn: Callable, count: int):
    self.fn, self.count = fn, count

  def __call__(self):
    return (self.fn(s) for s in range(self.count))


def batch_size(batch: Batch, name: str = "batch") -> int:
  """The leading size shared by the batch's array leaves.

  Scalars and PRNG keys are per-batch constants (not examples) and are skipped.
  """
  leaves = jax.tree_util.tree_leaves(batch)
  if not leaves:
    raise ValueError(f"{name} has no array leaves; a batch is a pytree of arrays with a leading "
                     "batch dimension.")
  sizes = {int(jnp.shape(x)[0]) for x in leaves if jnp.ndim(x) > 0 and not _is_key(x)}
  if not sizes:
    raise ValueError(f"{name} has only scalar (or PRNG key) leaves; allowed: a pytree of arrays "
                     "with a leading batch dimension (scalars and keys may ride along).")
  if len(sizes) != 1:
    raise ValueError(f"{name} leaves have different leading (batch) sizes {sorted(sizes)}; "
                     "all leaves must share one batch size (a raw uint32 dropout key belongs in "
                     "key=, not in the batch).")
  (n,) = sizes
  if n == 0:
    raise ValueError(f"{name} has batch size 0; each batch needs at least one example.")
  return n


@functools.lru_cache(maxsize=None)
def _data_mesh(num_devices: int) -> Mesh:
  return Mesh(np.array(jax.devices()[:num_devices]), ("data",))


# ---------------------------------------------------------------------------
# Sharded parameters: the layout the probes keep (params, Lanczos basis, batches).


class Layout(NamedTuple):
  """Where a probe's vectors live: the params' mesh and each leaf's PartitionSpec.

  Hashable (a static argument of the jitted Lanczos pieces). Vectors shaped like
  params are placed leaf by leaf like the params; a flat vector of n entries, as
  K chunks (see ``lanczos.chunk_shape``), is split along K over every device of
  the mesh, so no device holds a whole Lanczos basis.
  """

  mesh: Mesh
  specs: tuple[PartitionSpec, ...]

  @property
  def axes(self) -> tuple[str, ...]:
    return tuple(self.mesh.axis_names)

  def constrain_tree(self, tree: PyTree, lead: int = 0) -> PyTree:
    """``tree`` (shaped like params, after ``lead`` stacking axes) laid out like the params,
    the stacking axes whole (inside a jit)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jax.lax.with_sharding_constraint(
        x, NamedSharding(self.mesh, PartitionSpec(*([None] * lead), *s)))
        for x, s in zip(leaves, self.specs, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def put_tree(self, tree: PyTree) -> PyTree:
    """``tree`` (shaped like params) placed like the params (outside a jit)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jax.device_put(x, NamedSharding(self.mesh, s))
              for x, s in zip(leaves, self.specs, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def constrain_chunks(self, x: jax.Array) -> jax.Array:
    """A chunk-major array (K, ...) split along K over every device (inside a jit)."""
    spec = PartitionSpec(self.axes, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def layout_of(params: PyTree, name: str = "params") -> Layout | None:
  """The :class:`Layout` of params placed over several devices, else None.

  Params count as placed when a leaf is a ``jax.Array`` with a ``NamedSharding``
  over a mesh of more than one device (e.g. ``jax.device_put(params,
  jaxlab.train.mesh.tree_shardings(params, mesh))``, or a train state's params
  under ``mesh.fsdp > 1``); replicated leaves on that mesh count too. In a job
  of several processes (``jax.distributed``) params that are not placed get the
  1-D ``data`` mesh over every process's devices, replicated. Otherwise
  (params on one device, or host arrays, in one process): None, the
  single-device path, unchanged.

  Raises:
    ValueError: leaves placed on different meshes.
  """
  leaves = jax.tree_util.tree_leaves(params)
  mesh = None
  for i, x in enumerate(leaves):
    s = getattr(x, "sharding", None)
    if isinstance(x, jax.Array) and isinstance(s, NamedSharding) and s.mesh.size > 1:
      if mesh is None:
        mesh = s.mesh
      elif s.mesh != mesh:
        raise ValueError(
            f"{name} leaf {i} is placed on mesh {dict(s.mesh.shape)} over devices "
            f"{[d.id for d in s.mesh.devices.flat]}, another leaf on {dict(mesh.shape)} over "
            f"{[d.id for d in mesh.devices.flat]}; allowed: every leaf on one mesh (e.g. "
            "jax.device_put(params, jaxlab.train.mesh.tree_shardings(params, mesh))).")
  if mesh is None:
    if jax.process_count() == 1:
      return None
    mesh = _data_mesh(len(jax.devices()))
  specs = []
  for x in leaves:
    s = getattr(x, "sharding", None)
    specs.append(s.spec if isinstance(x, jax.Array) and isinstance(s, NamedSharding)
                 and s.mesh == mesh else PartitionSpec())
  return Layout(mesh, tuple(specs))


def _batch_sharding(n: int, mesh: Mesh) -> NamedSharding:
  """Rows over every device if they divide, else over ``data`` if they divide, else replicated."""
  if n % mesh.size == 0:
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
  data = dict(mesh.shape).get("data", 1)
  if data > 1 and n % data == 0:
    return NamedSharding(mesh, PartitionSpec("data"))
  return NamedSharding(mesh, PartitionSpec())


def place_batch(batch: Batch, mesh: Mesh | None = None) -> Batch:
  """``batch`` on device.

  Without ``mesh`` (params not placed, one process): on one device as is (no
  mesh, so no sharding enters a cache key); on several local devices, array
  leaves sharded along their leading axis (replicated if it does not divide),
  scalars and keys replicated. With the params' ``mesh``: a leaf already placed
  on that mesh (e.g. a batch sharded over its ``data`` axis) is kept as is;
  other leaves are split along their leading axis over every device of the
  mesh, or over ``data`` only, or replicated, whichever divides first. With
  several processes the batch is the global one, the same on every process,
  and each process feeds only the rows its devices hold
  (``jaxlab.train.sharding.put_batch``).
  """
  n = batch_size(batch)
  if mesh is None:
    if len(jax.devices()) == 1:
      return jax.device_put(batch)
    mesh = _data_mesh(len(jax.devices()))
  split = _batch_sharding(n, mesh)
  rep = NamedSharding(mesh, PartitionSpec())

  def put(x):
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and (
        x.sharding.mesh == mesh):
      return x
    target = split if jnp.ndim(x) > 0 and not _is_key(x) else rep
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
      return jax.device_put(x, target)
    # Several processes, the same global batch on each: a process builds only the shards
    # its own devices hold.
    from jaxlab.train import sharding

    if target.spec == PartitionSpec():
      return sharding.put_replicated(x, mesh)
    if target.spec == PartitionSpec(tuple(mesh.axis_names)):
      return sharding.put_batch(x, mesh)  # its rows (sharding.host_batch)
    host = np.asarray(x)  # split over `data` only
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

  return jax.tree.map(put, batch)


class BatchSource:
  """Re-iterable view of ``batches``: a list, a re-iterable, or a zero-argument factory."""

  def __init__(self, batches: Any, name: str = "batches"):
    if isinstance(batches, collections.abc.Iterator):
      raise ValueError(
          f"{name} is a one-shot iterator ({type(batches).__name__}); the operator is applied many "
          "times, so pass a list of batches, a zero-argument callable returning a fresh iterable, "
          "or a step -> batch function with num_batches=.")
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
# Model contract: the loss (or model) at fixed state, key and mode, as a pytree.


def _check_params(params: PyTree, name: str = "params") -> FlatSpec:
  """Refuse model state passed as parameters (flax variables dicts, a whole nnx state)."""
  if isinstance(params, collections.abc.Mapping) and "params" in params and len(params) > 1:
    others = sorted(str(k) for k in params if k != "params")
    raise ValueError(
        f"{name} is a flax variables dict with collections {others} beside 'params'; model "
        "state is carried, never differentiated; allowed: params=variables['params'] and "
        f"state={{{', '.join(repr(o) + ': ...' for o in others)}}} with a contract loss "
        "loss_fn(params, batch, key, *, state, train) (see jaxlab.models.contract).")
  if type(params).__module__.startswith("flax.nnx"):
    from flax import nnx

    kinds = {type(v).__name__ for v in jax.tree_util.tree_leaves(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)) if isinstance(v, nnx.Variable)
        and not isinstance(v, nnx.Param)}
    if kinds:
      raise ValueError(
          f"{name} is an nnx state holding non-parameter variables {sorted(kinds)}; allowed: the "
          "Param part, graphdef, params, state = nnx.split(model, nnx.Param, ...), with "
          "state=state (see jaxlab.models.cnn.nnx_classifier_loss).")
  return flat_spec(params, name)


def _call_first(params, batch, *, fn, train):
  return contract.call(fn, params, batch, train=train)[0]


@functools.lru_cache(maxsize=512)
def _plain_cached(fn: Callable, train: bool) -> Callable:
  return functools.partial(_call_first, fn=fn, train=train)


def probe_loss(loss_fn: Callable, *, state: Any = None, key: Any = None, train: bool = False,
               name: str = "loss_fn") -> Partial:
  """``(params, batch) -> scalar`` of a contract loss at fixed state, key and mode, as a
  ``Partial`` whose leaves are state and key (so they enter jitted code as arguments).

  One function object per (loss_fn, mode), so compiled products are reused across calls.
  """
  contract.check_loss(loss_fn, state=state, name=name)
  f = contract.scalar_loss(loss_fn, key=key, state=state, train=bool(train))
  if isinstance(f, Partial):
    return f
  try:
    return Partial(_plain_cached(loss_fn, bool(train)))
  except TypeError:  # unhashable callable
    return Partial(functools.partial(_call_first, fn=loss_fn, train=bool(train)))


def _apply_first(params, x, *, fn, train, has_aux):
  spec = contract.loss_spec(fn)
  args = [params, x] + ([jax.random.key(0)] if spec.takes_key else [])
  out = fn(*args, **({"train": train} if spec.takes_train else {}))
  return _outputs(out, has_aux)


def _apply_stateful(state, key, params, x, *, fn, train, has_aux):
  spec = contract.loss_spec(fn)
  args = [params, x]
  if spec.takes_key:
    args.append(jax.random.key(0) if key is None else key)
  kwargs = {}
  if spec.takes_state and state is not None:
    kwargs["state"] = state
  if spec.takes_train:
    kwargs["train"] = train
  return _outputs(fn(*args, **kwargs), has_aux)


def _outputs(out, has_aux):
  if has_aux is None:
    return out[0] if isinstance(out, tuple) and len(out) == 2 else out
  if has_aux:
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(f"apply_fn returned a {type(out).__name__} with has_aux=True; allowed: "
                       "a pair (outputs, aux).")
    return out[0]
  return out


@functools.lru_cache(maxsize=512)
def _apply_cached(fn: Callable, train: bool, has_aux: Any, stateful: bool) -> Callable:
  f = _apply_stateful if stateful else _apply_first
  return functools.partial(f, fn=fn, train=train, has_aux=has_aux)


def probe_apply(apply_fn: Callable, *, state: Any = None, key: Any = None, train: bool = False,
                has_aux: Any = None) -> Partial:
  """``(params, x) -> outputs`` of a contract model at fixed state, key and mode (a ``Partial``)."""
  if not callable(apply_fn):
    raise ValueError(f"apply_fn={apply_fn!r} is not callable; allowed: apply_fn(params, x[, key]"
                     "[, *, state, train]) -> outputs or (outputs, aux).")
  spec = contract.loss_spec(apply_fn)
  if state is not None and not spec.takes_state:
    raise ValueError("apply_fn takes no `state` argument, but a model state was given; allowed: "
                     "apply_fn(params, x, key=None, *, state, train) -> outputs or (outputs, aux).")
  stateful = state is not None or key is not None
  args = (state, key) if stateful else ()
  try:
    fn = _apply_cached(apply_fn, bool(train), has_aux, stateful)
  except TypeError:
    fn = functools.partial(_apply_stateful if stateful else _apply_first, fn=apply_fn,
                           train=bool(train), has_aux=has_aux)
  return Partial(fn, *args)


# ---------------------------------------------------------------------------
# Per-batch products. Every piece of data is an argument of one module-level jitted
# function (the loss and model are Partials whose leaves are state and key), so a
# compile is paid once per (function, shapes) and reused at any params and batch.


def _xy(batch: Batch, name: str = "batch") -> tuple[Any, Any]:
  if isinstance(batch, collections.abc.Mapping) and "x" in batch and "y" in batch:
    return batch["x"], batch["y"]
  if isinstance(batch, (tuple, list)) and len(batch) == 2:
    return batch[0], batch[1]
  raise ValueError(f"ggn_vp needs {name} to be a pair (x, y) or a dict with keys 'x' and 'y'; "
                   f"got a {type(batch).__name__}.")


def _hvp_lin(loss, params, batch):
  """``v -> Hv`` from residuals of one linearization of the gradient."""
  return jax.linearize(lambda p: jax.grad(loss)(p, batch), params)[1]


def _hvp_direct(loss, params, batch):
  """``v -> Hv`` by forward-over-reverse (primal recomputed per product)."""
  grad = jax.grad(loss)
  return lambda v: jax.jvp(lambda p: grad(p, batch), (params,), (v,))[1]


def _per_example_hvp(out_loss, z, y, u):
  return jax.jvp(lambda zz: jax.grad(out_loss)(zz, y), (z,), (u,))[1]


def _ggn_lin(model, out_loss, params, batch):
  """``v -> Jᵀ H_out J v / B`` (J v by linearize, H_out per example, Jᵀ by vjp)."""
  x, y = _xy(batch)
  n = batch_size(batch)
  z, jvp_fn = jax.linearize(lambda p: model(p, x), params)
  _, vjp_fn = jax.vjp(lambda p: model(p, x), params)

  def gv(v):
    hjv = jax.vmap(functools.partial(_per_example_hvp, out_loss))(z, y, jvp_fn(v))
    return vjp_fn(jax.tree.map(lambda a: a / n, hjv))[0]

  return gv


def _casting(fn: Callable, params: PyTree, v: PyTree) -> PyTree:
  """``fn(v)`` in the params' dtypes, the result cast back to v's dtypes."""
  v_p = jax.tree.map(lambda t, p: t.astype(p.dtype), v, params)
  return jax.tree.map(lambda h, t: h.astype(t.dtype), fn(v_p), v)


@jax.jit
def _hvp_product(loss, params, batch, v):
  return _casting(_hvp_direct(loss, params, batch), params, v)


@jax.jit
def _ggn_product(model, out_loss, params, batch, v):
  return _casting(_ggn_lin(model, out_loss, params, batch), params, v)


# ---------------------------------------------------------------------------
# A quick-to-compile program of the product, for one-off host-path probes on a CPU.

# XLA:CPU's legacy emitters at LLVM -O0. On the benchmark's 99k-parameter MLP (batch 512;
# benchmarks/RESULTS.md, first-call section) the product then compiles in 0.08 s of CPU time
# instead of 0.45 s and runs in ~10.5 ms instead of ~6.2 ms: a cold call of fewer than ~80
# products is done sooner, a longer or repeated one later.
QUICK_CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
_QUICK_CACHE = 256  # signatures whose quick executable is kept (least recently used dropped)
_quick: collections.OrderedDict = collections.OrderedDict()


def on_one_cpu_device(leaf: Any) -> bool:
  """Whether ``leaf`` lies on one CPU device (a NumPy array or a ShapeDtypeStruct without
  placement: whether JAX's default backend is the CPU)."""
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    return jax.default_backend() == "cpu"
  devices = sharding.device_set
  return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def quick_call(product: Callable, args: tuple) -> PyTree:
  """``product(*args)`` (a module-level jitted product) through its quick-to-compile program.

  On one CPU device the product is compiled with :data:`QUICK_CPU_OPTIONS`, once per
  signature (the args' pytree structure, shapes and dtypes), and that executable is used.
  The trace and lowering are shared with the default program through jit's caches:
  whichever of the two programs runs second for a signature costs only its backend
  compile (counted with jax's trace/lowering/compile events, either order, in
  tests/spectral/spectral_quick_tier_test.py). The two programs compute
  the same product and round differently (about 3e-7 relative on the 99k MLP in float32);
  which one runs depends only on the caller's choice, never on what was compiled before.
  Elsewhere (accelerators, several devices) it is ``product(*args)``.
  """
  leaves, treedef = jax.tree_util.tree_flatten(args)
  try:
    sig = (product, treedef, tuple(jax.typeof(x) for x in leaves))
    compiled = _quick.get(sig)
  except TypeError:  # an unhashable static part: the default program
    return product(*args)
  if compiled is None:
    compiled = False
    if all(on_one_cpu_device(x) for x in leaves):
      compiled = product.trace(*args).lower().compile(compiler_options=QUICK_CPU_OPTIONS)
    _quick[sig] = compiled
    if len(_quick) > _QUICK_CACHE:
      _quick.popitem(last=False)
  _quick.move_to_end(sig)
  return compiled(*args) if compiled is not False else product(*args)


@jax.jit
def _axpy(total, mv, n):
  return jax.tree.map(lambda t, a: t + a * n, total, mv)


@jax.jit
def _scale(tree, c):
  return jax.tree.map(lambda a: a * c, tree)


# ---------------------------------------------------------------------------
# Operators.


@jax.tree_util.register_pytree_node_class
class BatchOperator:
  """``v -> M v`` for one in-memory batch: a pytree (params, batch, loss/model), so it can
  also be passed into ``jax.jit`` and called there.

  ``host_loop = True``: Lanczos, trace and density drive it from Python, one
  compiled product per step. A product inside XLA:CPU's while loop ran
  convolutions in a naive non-canonical form (30-100x slower, measured on
  SmallCNN), and fusing the product into the loop made every new ``num_iters``
  recompile it; one jitted product per step costs a few dispatches instead.
  """

  host_loop = True

  def __init__(self, kind: str, fns: tuple, params: PyTree, batch: Batch, spec: FlatSpec = None):
    self.kind, self.fns, self.params, self.batch = kind, fns, params, batch
    self.spec = spec

  def tree_flatten(self):
    return (self.fns, self.params, self.batch), self.kind

  @classmethod
  def tree_unflatten(cls, kind, children):
    return cls(kind, *children)

  def __call__(self, v: PyTree) -> PyTree:
    check_like(v, self.spec or flat_spec(self.params, "params"), "v")
    if self.kind == "hvp":
      return _hvp_product(*self.fns, self.params, self.batch, v)
    return _ggn_product(*self.fns, self.params, self.batch, v)

  def quick(self, v: PyTree) -> PyTree:
    """``M v`` as a call, through the quick-to-compile program on a CPU (:func:`quick_call`;
    ``top_eigenpairs(..., quick_compile=True)`` calls this)."""
    check_like(v, self.spec or flat_spec(self.params, "params"), "v")
    product = _hvp_product if self.kind == "hvp" else _ggn_product
    return quick_call(product, (*self.fns, self.params, self.batch, v))

  def linearize(self) -> Callable:
    """``v -> Mv`` from residuals computed now (call inside a jit; see :func:`linearized`)."""
    lin = (_hvp_lin(*self.fns, self.params, self.batch) if self.kind == "hvp"
           else _ggn_lin(*self.fns, self.params, self.batch))

    def mv(v):
      check_like(v, flat_spec(self.params, "params"), "v")
      return _casting(lin, self.params, v)

    return mv


class DataSetOperator:
  """``v -> Σ_b n_b · M_b v / Σ_b n_b`` over an iterable of batches (host loop, jitted per batch).

  ``M_b`` is the per-batch Hessian or GGN of a loss that is a mean over the batch,
  so the result is the operator of the mean loss over the whole data set.
  """

  host_loop = True  # tells lanczos/trace to drive matvecs from Python

  def __init__(self, kind: str, fns: tuple, params: PyTree, source: Any, spec: FlatSpec,
               mesh: Mesh | None = None):
    self._kind, self._fns = kind, fns
    self.params = params
    self._mesh = mesh  # the params' mesh (layout_of), None on the single-device path
    # a list or a BatchSource; batches are placed per pass (host batches stream to
    # the device one at a time, as the data set need not fit in device memory)
    self._source = source
    self._spec = spec

  def __call__(self, v: PyTree) -> PyTree:
    check_like(v, self._spec, "v")
    product = _hvp_product if self._kind == "hvp" else _ggn_product
    total, count = None, 0
    for i, batch in enumerate(self._source):
      n = batch_size(batch, f"batch {i}")
      mv = product(*self._fns, self.params, place_batch(batch, self._mesh), v)
      total = _scale(mv, n) if total is None else _axpy(total, mv, n)
      count += n
    if total is None:
      raise ValueError("batches yielded no batch on this pass; pass at least one batch.")
    return _scale(total, 1.0 / count)


def _operator(kind: str, fns: tuple, params: PyTree, batches: Any, num_batches: Any,
              check: Callable = lambda b, name: None):
  spec = _check_params(params)
  layout = layout_of(params)
  mesh = None if layout is None else layout.mesh
  how, data = _classify(batches, num_batches)
  if how == "one":
    batch_size(data, "batches")
    check(data, "batches")
    return BatchOperator(kind, fns, params, place_batch(data, mesh), spec)
  if how == "many":
    for i, b in enumerate(data):
      batch_size(b, f"batch {i}")
      check(b, f"batch {i}")
    return DataSetOperator(kind, fns, params, data, spec, mesh)
  batch_size(data.first, "batch 0")
  check(data.first, "batch 0")
  return DataSetOperator(kind, fns, params, data, spec, mesh)


def linearized(matvec: Callable) -> Callable:
  """The same operator with its primal work done once, for a loop of many products.

  For a single-batch :func:`hessian_vp` or :func:`ggn_vp` operator, returns
  ``v -> Mv`` that evaluates only the tangent part of the product from residuals
  computed now (``jax.linearize``: a Hessian-vector product then costs ≈ 2
  gradients instead of ≈ 2.5-3, and a GGN product one forward-tangent and one
  backward pass). Call it inside the ``jax.jit`` that runs the loop: the result
  closes over the residuals and is not itself a pytree. Any other matvec is
  returned unchanged. (jaxlab's own Lanczos, trace and density drive
  single-batch operators from Python instead, one compiled product per step:
  see :class:`BatchOperator`.)

  Example:
    >>> @jax.jit
    ... def power(mv, v):
    ...   lin = linearized(mv)
    ...   return jax.lax.fori_loop(0, 20, lambda i, u: normalize(lin(u)), v)
  """
  if isinstance(matvec, BatchOperator):
    return matvec.linearize()
  return matvec


_BATCHES_DOC = """batches: one batch, several, or a data set, read by this rule:
      one batch is a dict (Mapping), an array, or a tuple whose elements are
      not all containers (``(x, y)``, ``((x1, x2), y)``); several batches are a
      list, or a tuple whose elements are all containers (dict/tuple/list) of
      one pytree structure (``((x1, y1), (x2, y2))``; a tuple of containers of
      different structures is ambiguous and raises); a data set is a
      re-iterable, a zero-argument callable returning a fresh iterable, or a
      step -> batch function (``jaxlab.data.Batches``) with ``num_batches``.
      The operator is the mean over all examples: batch b of size n_b weighs
      ``n_b / Σ n_b``, whatever the sizes. Scalar and PRNG-key leaves of a
      batch ride along (no batch axis)."""


def hessian_vp(loss_fn: Callable, params: PyTree, batches: Any, *, state: Any = None,
               key: Any = None, train: bool = False, num_batches: int | None = None,
               compute_dtype: Any = None) -> Callable:
  """Hessian-vector product of a mean loss over one batch or a whole data set.

  Math:
    ``Hv = ∂/∂ε ∇_θ L(θ + εv; s)|_{ε=0}``, forward-over-reverse (a ``jax.jvp``
    of ``jax.grad``; Pearlmutter 1994), at fixed model state ``s``. Over
    batches ``b`` of sizes ``n_b`` the data-set Hessian of the per-example mean
    is ``H = Σ_b n_b H_b / Σ_b n_b``, where ``H_b`` is the Hessian of the loss
    on batch b (a mean over the batch), so batches of any sizes are weighted
    correctly.

  Args:
    loss_fn: a loss of the model contract (:mod:`jaxlab.models.contract`):
      ``loss_fn(params, batch[, key][, *, state, train]) -> loss`` or
      ``(loss, aux)`` (aux is ignored).
    params: the point θ, a pytree of floating arrays (the differentiated part
      only: a flax variables dict with ``batch_stats`` or a whole nnx state is
      refused).
    {batches}
    state: the model state (e.g. ``{{"batch_stats": ...}}``), held fixed and
      never differentiated; None for a stateless model.
    key: the rng of stochastic layers; None gives a fixed key (only read in
      train mode by contract losses).
    train: False (default): eval mode, running statistics, no dropout. True:
      batch statistics of each batch (and dropout with ``key``); the state is
      still neither differentiated nor updated.
    num_batches: how many steps of a step -> batch function make the data set.
    compute_dtype: None (default): the loss as it computes. ``"bfloat16"``:
      mixed precision (:func:`jaxlab.models.precision.mixed_precision`): the
      params, ``v`` and the floating batch leaves are cast to bfloat16 inside
      the product, the loss is returned float32, and ``Hv`` comes back in
      ``v``'s dtype (float32); the sum over batches of a data set, and
      Lanczos, trace and density on top, stay float32. ``"float32"``: as None.
      Each product errs by ≤ 0.6·2^-8·‖H‖‖v‖ against the dense float64
      Hessian of a small MLP (``tests/spectral/spectral_bf16_test.py``); the
      top-5 eigenvalues and the density's moments are within 0.08-0.3%
      (MNIST-1D MLP) and 0.9% (tiny ICL transformer) of float32 (see
      :func:`~jaxlab.spectral.eigen.top_eigenpairs`). The batch's floating
      targets are cast too (≤ 2^-9 relative): for a regression on float32
      targets, build the model with a bfloat16 compute dtype instead (e.g.
      ``ICLTransformer(dtype=jnp.bfloat16)``) and leave this None.

  Sharded params: ``params`` placed over a mesh (e.g. ``jax.device_put(params,
  jaxlab.train.mesh.tree_shardings(params, mesh))``; see :func:`layout_of`) stay
  where they are; each batch is placed on the same mesh (:func:`place_batch`:
  split over its devices, or kept when already placed there, and with several
  processes each feeds its own rows), and the product is one SPMD program
  over the mesh.

  Returns:
    ``matvec(v) -> Hv`` with ``v`` and ``Hv`` shaped like ``params``: a
    :class:`BatchOperator` for one batch (a pytree, usable inside ``jax.jit``)
    or a :class:`DataSetOperator` (a host loop over jitted batches). Either
    compiles one product per (loss, shapes), reused at new params and batches.

  Raises:
    ValueError: a bad batch (empty, one-shot iterator, inconsistent leading
      axis, ambiguous tuple), a variables dict as params, a state the loss does
      not take, a bad num_batches, or (at call time) ``v`` not shaped like params.

  Example:
    >>> loss = jaxlab.models.linen_classifier_loss(model)
    >>> mv = hessian_vp(loss, params, [b1, b2], state={{"batch_stats": stats}})
    >>> hv = mv(jax.tree.map(jnp.ones_like, params))

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Comput. 1994.
  """
  loss_fn = precision.mixed_precision(loss_fn, compute_dtype)  # unchanged for None / float32
  loss = probe_loss(loss_fn, state=state, key=key, train=train)
  return _operator("hvp", (loss,), params, batches, num_batches)


def ggn_vp(apply_fn: Callable, output_loss_fn: Callable, params: PyTree, batches: Any,
           has_aux: bool | None = None, *, state: Any = None, key: Any = None,
           train: bool = False, num_batches: int | None = None,
           compute_dtype: Any = None) -> Callable:
  """Generalized Gauss-Newton-vector product ``Gv = (1/N) Σ_i J_iᵀ H_i J_i v``.

  Math:
    With ``z_i = f(θ, x_i; s)`` the model output at fixed state ``s``,
    ``J_i = ∂z_i/∂θ`` and ``H_i = ∇²_z ℓ(z_i, y_i)`` the Hessian of the
    per-example output loss, ``G = (1/N) Σ_i J_iᵀ H_i J_i`` (Schraudolph 2002,
    eq. 7; Martens 2020, §5). ``J v`` comes from ``jax.linearize`` of the
    model, ``H_i (J v)_i`` from a forward-over-reverse product of ``ℓ`` per
    example (``vmap``), and ``Jᵀ(·)`` from ``jax.vjp``. For softmax
    cross-entropy ``H_i = diag(p) − ppᵀ``.

  Args:
    apply_fn: the model in the contract's form,
      ``apply_fn(params, x[, key][, *, state, train]) -> outputs`` or
      ``(outputs, aux)`` (the first element is taken), outputs with a leading
      batch axis. Read like a loss: a third positional parameter is the key,
      keyword ``state`` and ``train`` are passed when it names them.
    output_loss_fn: ``output_loss_fn(output_i, y_i) -> scalar``, the loss of ONE
      example given its output; the training loss is its mean over examples.
    params: the point θ (the differentiated part only, as in :func:`hessian_vp`).
    {batches} Each batch is a pair ``(x, y)`` or a dict with keys ``"x"``, ``"y"``.
    has_aux: None (default): a returned pair is ``(outputs, aux)``; True: it
      must be; False: the output is used as it is.
    state, key, train: as in :func:`hessian_vp` (fixed state, eval mode by default);
      sharded params as there too.
    num_batches: as in :func:`hessian_vp`.
    compute_dtype: None (default): the model as it computes. ``"bfloat16"``:
      ``J v`` and ``Jᵀ u`` in bfloat16 (params, ``v`` and ``x`` cast;
      :func:`jaxlab.models.precision.mixed_precision_apply`), the outputs
      cast to float32, so the output Hessian ``H_i`` and the sums over
      examples and batches are float32; ``Gv`` in ``v``'s dtype.

  Returns:
    ``matvec(v) -> Gv`` shaped like ``params`` (a :class:`BatchOperator` or a
    :class:`DataSetOperator`, as in :func:`hessian_vp`).

  Example:
    >>> ce = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y)
    >>> mv = ggn_vp(model.apply, ce, params, {{"x": x, "y": y}})

  References:
    Schraudolph, "Fast curvature matrix-vector products for second-order
    gradient descent", Neural Comput. 2002. Martens, "New insights and
    perspectives on the natural gradient method", JMLR 2020.
  """
  if has_aux not in (None, True, False):
    raise ValueError(f"has_aux is {has_aux!r}; allowed: None (auto), True or False.")
  if not callable(output_loss_fn):
    raise ValueError(f"output_loss_fn={output_loss_fn!r} is not callable; allowed: "
                     "output_loss_fn(output_i, y_i) -> scalar.")
  apply_fn = precision.mixed_precision_apply(apply_fn, compute_dtype)  # None: unchanged
  model = probe_apply(apply_fn, state=state, key=key, train=train, has_aux=has_aux)
  return _operator("ggn", (model, Partial(output_loss_fn)), params, batches, num_batches,
                   check=lambda b, name: _xy(b, name))


hessian_vp.__doc__ = hessian_vp.__doc__.replace("{batches}", _BATCHES_DOC).replace("{{", "{").replace("}}", "}")
ggn_vp.__doc__ = ggn_vp.__doc__.replace("{batches}", _BATCHES_DOC).replace("{{", "{").replace("}}", "}")


# ---------------------------------------------------------------------------
# Restriction to a sub-tree of parameters.


def restrict_to_subtree(loss_fn: Callable, params: PyTree, where: Any
                        ) -> tuple[Callable, PyTree]:
  """Restrict ``loss_fn`` to a sub-tree of ``params``, the other leaves frozen.

  Every probe applied to ``(sub_loss_fn, sub_params)`` then measures the block
  ``∂²L/∂θ_S²`` of the Hessian for the selected leaves ``S``.

  Args:
    loss_fn: a contract loss ``loss_fn(params, batch[, key][, *, state, train])``.
    params: the full parameter pytree (the frozen values are taken from it).
    where: which leaves to keep: a path prefix (``"params/Dense_0"`` or a tuple
      of keys, matched component by component), a predicate
      ``where(path_tuple_of_str, leaf) -> bool``, or a pytree of bools shaped
      like ``params``.

  Returns:
    ``(sub_loss_fn, sub_params)``: ``sub_params`` is ``params`` with every
    unselected leaf replaced by ``None`` (an empty sub-tree, so tree maps and
    the probes skip it), and ``sub_loss_fn(sub_params, batch, ...)`` (the same
    contract form as ``loss_fn``: state, key and mode pass through) evaluates
    ``loss_fn`` with the frozen leaves put back.

  Example:
    >>> f, p = restrict_to_subtree(loss_fn, params, "params/Dense_1")
    >>> lam = top_eigenpairs(hessian_vp(f, p, batch), p, k=1, key=key).eigenvalues
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_parts(p) for p, _ in flat]
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

  def sub_loss_fn(sub, batch, *args, **kwargs):
    sub_leaves = jax.tree_util.tree_flatten(sub, is_leaf=lambda t: t is None)[0]
    if len(sub_leaves) != len(leaves):
      raise ValueError("sub_loss_fn got a pytree not shaped like sub_params.")
    full = [s if m else x for s, x, m in zip(sub_leaves, leaves, mask, strict=True)]
    return loss_fn(jax.tree_util.tree_unflatten(treedef, full), batch, *args, **kwargs)

  try:  # the same contract form as loss_fn (key, state, train), read from the signature
    sub_loss_fn.__signature__ = inspect.signature(loss_fn)
  except (TypeError, ValueError):
    pass

  return sub_loss_fn, sub_params


__all__ = [
    "BatchOperator",
    "DataSetOperator",
    "hessian_vp",
    "ggn_vp",
    "restrict_to_subtree",
]

