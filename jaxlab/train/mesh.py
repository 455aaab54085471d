"""A 2-D (`data`, `fsdp`) device mesh and FSDP-style sharding of the train state.

Config keys `mesh.data` and `mesh.fsdp` choose the mesh: `data × fsdp` must
equal the device count (`mesh.data = -1`: the device count divided by
`mesh.fsdp`). With `mesh.fsdp = 1` (the default) the mesh is today's 1-D
"data" mesh and the state is replicated, exactly as before.

With `mesh.fsdp = N > 1` (fully sharded data parallelism, ZeRO-3 style, Rajbhandari
et al. 2020, arXiv:1910.02054; Zhao et al. 2023, arXiv:2304.11277):

- every leaf of the parameters and of the optimizer state is split over the
  `fsdp` axis along its largest dimension whose size is divisible by N (the
  first such dimension on a tie); a scalar or a leaf with no such dimension is
  replicated. Optimizer moments have their parameter's shape, so they get the
  same split. The step counter, the PRNG key and the model's carried state
  (e.g. `batch_stats`) stay replicated.
- the batch is split over both axes (`data × fsdp` data-parallel workers), as
  in FSDP, where every worker sees its own rows.
- the step is `jax.jit` with these shardings as its output shardings; XLA's
  SPMD partitioner inserts the all-gathers of the parameters before use and
  the reduce-scatters of the gradients. Per device, parameters and optimizer
  state take about 1/N of the replicated bytes (`state_bytes_per_device`).

Why a shape rule and not flax's logical partitioning (`nn.with_partitioning`):
the models in `jaxlab.models` are plain `(init, apply)` pairs over dicts of
arrays and carry no axis annotations, and the rule needs none: any model and
any optax state shards the same way. The result equals the replicated run's
up to float32 reduction order.

Independent copies of one computation (an ensemble's members, the points of a
learning-rate grid: a `jax.vmap` whose leading axis is the copy) use the same
mesh the other way round: the copy axis is split over every device of the mesh
(`put_split`), each device runs its copies whole, and `to_host` brings the
results back, from every process.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlab.train import sharding
from jaxlab.train.step import TrainState

DATA_AXIS = sharding.DATA_AXIS
FSDP_AXIS = "fsdp"


def fsdp_size(mesh: Mesh) -> int:
  """The size of the mesh's `fsdp` axis (1 when it has none)."""
  return dict(mesh.shape).get(FSDP_AXIS, 1)


def resolve(data: int, fsdp: int, num_devices: int | None = None) -> tuple[int, int]:
  """Checks `mesh.data`, `mesh.fsdp` and returns `(data, fsdp)` with -1 resolved.

  Raises ValueError naming the key, its value and what is allowed.
  """
  n = jax.device_count() if num_devices is None else num_devices
  for key, v in (("mesh.data", data), ("mesh.fsdp", fsdp)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
      raise ValueError(f"config key {key!r}: {v!r}; allowed: an integer")
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"config key 'mesh.fsdp': {fsdp}; allowed: a divisor of the device count "
                     f"{n} (e.g. 1, the default, or {n})")
  if data == -1:
    data = n // fsdp
  if data < 1 or data * fsdp != n:
    raise ValueError(f"config key 'mesh.data': {data} with mesh.fsdp={fsdp}; allowed: "
                     f"mesh.data × mesh.fsdp = the device count {n} (mesh.data={n // fsdp}, "
                     "or -1 for that)")
  return int(data), int(fsdp)


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """The (`data`, `fsdp`) mesh over `devices` (default: every device).

  With `fsdp == 1` this is `sharding.data_mesh` (1-D "data"), the default.
  """
  devices = jax.devices() if devices is None else list(devices)
  data, fsdp = resolve(data, fsdp, len(devices))
  if fsdp == 1:
    return sharding.data_mesh(devices)
  try:  # a topology-aware order on GPU/TPU; plain order on CPU
    grid = mesh_utils.create_device_mesh((data, fsdp), devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, (DATA_AXIS, FSDP_AXIS))


def check_config(config: Any, batch_keys: tuple[str, ...] = ("train.batch_size",), *,
                 num_devices: int | None = None) -> None:
  """Validates `config.mesh` (if present) and that each batch size splits over it.

  Call from a study's `validate`, before anything compiles.
  """
  if "mesh" not in config:
    return
  data, fsdp = resolve(config.mesh.data, config.mesh.fsdp, num_devices)
  n = data * fsdp
  for key in batch_keys:
    value = config
    for part in key.split("."):
      value = value[part]
    if value % n:
      raise ValueError(f"config key {key!r}: {value} is not divisible by mesh.data × mesh.fsdp "
                       f"= {data} × {fsdp} = {n}; allowed: a multiple of {n}")


def from_config(config: Any) -> Mesh | None:
  """The mesh `config.mesh` selects (None without `mesh` keys: the loop's default)."""
  if "mesh" not in config:
    return None
  return make_mesh(config.mesh.data, config.mesh.fsdp)


def leaf_spec(shape: tuple[int, ...], n: int) -> PartitionSpec:
  """The FSDP split of one leaf: its largest dimension divisible by `n` over `fsdp`."""
  dims = [i for i, d in enumerate(shape) if n > 1 and d % n == 0]
  if not dims:
    return PartitionSpec()
  i = max(dims, key=lambda j: (shape[j], -j))
  return PartitionSpec(*([None] * i), FSDP_AXIS)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """A NamedSharding per leaf of `tree` by `leaf_spec` (keys and scalars replicated)."""
  n = fsdp_size(mesh)

  def one(x):
    if _is_key(x):
      return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, leaf_spec(np.shape(x), n))
  return jax.tree.map(one, tree)


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
  """Shardings of a TrainState: params and opt_state by `leaf_spec`, the rest replicated."""
  rep = sharding.replicated(mesh)
  return TrainState(
      params=tree_shardings(state.params, mesh),
      opt_state=tree_shardings(state.opt_state, mesh),
      step=rep, key=rep,
      model_state=jax.tree.map(lambda _: rep, state.model_state))


def _put(x: Any, target: NamedSharding) -> Any:
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, target)
  # Several processes, the same host value on each: every process builds its own shards.
  if _is_key(x):
    data = _put(jax.random.key_data(x), target)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def put_state(state: TrainState, mesh: Mesh) -> TrainState:
  """`state` placed on `mesh`: replicated when `fsdp` is 1 (as before), else FSDP-sharded."""
  if fsdp_size(mesh) == 1:
    return sharding.put_replicated(state, mesh)
  return jax.tree.map(_put, state, state_shardings(state, mesh))


def pin_step(step_fn, state: TrainState, mesh: Mesh):
  """`step_fn` (jitted or not) jitted again with the state's FSDP shardings as outputs.

  Identity when `fsdp` is 1. Pinning the output shardings makes every step
  take and return the same layout, so the step compiles once.
  """
  if fsdp_size(mesh) == 1:
    return step_fn
  return jax.jit(step_fn, out_shardings=(state_shardings(state, mesh), None),
                 donate_argnums=0)


def state_bytes_per_device(state: TrainState, mesh: Mesh) -> int:
  """Bytes of params + opt_state that one device holds under `put_state`'s layout."""
  shardings = state_shardings(state, mesh)
  total = 0
  for x, s in zip(jax.tree.leaves((state.params, state.opt_state)),
                  jax.tree.leaves((shardings.params, shardings.opt_state)), strict=True):
    shard = s.shard_shape(np.shape(x))
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def split_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over every axis of the mesh (`data`, or `data × fsdp`)."""
  return sharding.batch_sharded(mesh)


def padded_size(n: int, mesh: Mesh) -> int:
  """`n` rounded up to a multiple of the mesh's device count."""
  return -(-n // mesh.size) * mesh.size


def put_split(tree: Any, mesh: Mesh) -> Any:
  """`tree` with each leaf's leading axis split over all devices of `mesh`.

  For a vmapped axis of independent copies (ensemble members, grid points):
  every process passes the same host values and builds the shards its devices
  hold (unlike `sharding.put_batch`, which takes each process's rows). The
  leading size must be a multiple of `mesh.size` (see `padded_size`).
  """
  target = split_sharding(mesh)

  def one(x):
    if np.shape(x)[0] % mesh.size:
      raise ValueError(f"leading size {np.shape(x)[0]} is not a multiple of the mesh's "
                       f"{mesh.size} devices; pad it to padded_size(n, mesh)")
    return _put(x, target)
  return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
  """numpy copies of the leaves; an array spread over several processes is gathered first."""
  return jax.tree.map(sharding.whole, tree)
