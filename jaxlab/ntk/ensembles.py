"""Ensembles of two-layer ReLU nets trained by full-batch GD, as one vmapped program.

The network is the one of `jaxlab.ntk.kernels` (NTK parametrization, trainable
hidden bias, no output bias):

    f(x) = sigma_a / sqrt(n) * relu(sigma_w x W / sqrt(d) + sigma_b b) A

Each member starts from its own N(0, 1) draw of (W, b, A) and runs `steps` of
full-batch GD on L = 1/2 sum_i ||f(x_i) - y_i||^2 (so its NTK-regime law is
`jaxlab.ntk.predict.gp_predict(..., discrete=True)`). The ensemble prediction is
the average of the members' outputs, then rounded (Giapitzakis et al. 2025,
arXiv:2502.16763: "averaging these runs and applying a simple rounding step";
see `jaxlab.ntk.permutations.round_bits` for the rule used here).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class EnsembleResult(NamedTuple):
  """`outputs` (M, N_test, O) per member; `train_loss` (M,) after the last step."""
  outputs: jax.Array
  train_loss: jax.Array


def init_two_layer(key: jax.Array, d: int, width: int, n_out: int, dtype=jnp.float32) -> dict:
  """Standard-normal parameters {"w": (d, n), "b": (n,), "a": (n, O)} (NTK parametrization)."""
  kw, kb, ka = jax.random.split(key, 3)
  return {"w": jax.random.normal(kw, (d, width), dtype),
          "b": jax.random.normal(kb, (width,), dtype),
          "a": jax.random.normal(ka, (width, n_out), dtype)}


def apply_two_layer(params: dict, x: jax.Array, *, weight_std: float = 1.0,
                    bias_std: float = 1.0, output_std: float = 1.0) -> jax.Array:
  """f(x) = sigma_a/sqrt(n) relu(sigma_w x W/sqrt(d) + sigma_b b) A; x (N, d) -> (N, O)."""
  d, n = params["w"].shape
  h = (weight_std / np.sqrt(d)) * (x @ params["w"]) + bias_std * params["b"][None, :]
  return (output_std / np.sqrt(n)) * (jax.nn.relu(h) @ params["a"])


def _check(name, value, ok, allowed):
  if not ok:
    raise ValueError(f"{name}={value!r}: {allowed}")


@functools.partial(jax.jit, static_argnames=("width", "scales"))
def _train_members(keys, x_train, y_train, x_test, steps, learning_rate, *, width, scales):
  sw, sb, sa = scales
  apply = functools.partial(apply_two_layer, weight_std=sw, bias_std=sb, output_std=sa)
  opt = optax.sgd(learning_rate)

  def loss_fn(p):
    return 0.5 * jnp.sum((apply(p, x_train) - y_train) ** 2)

  def one_member(key):
    params = init_two_layer(key, x_train.shape[1], width, y_train.shape[1], x_train.dtype)
    state = opt.init(params)

    def step(_, carry):
      p, s = carry
      g = jax.grad(loss_fn)(p)
      upd, s = opt.update(g, s, p)
      return optax.apply_updates(p, upd), s

    params, _ = jax.lax.fori_loop(0, steps, step, (params, state))
    return apply(params, x_test), loss_fn(params)

  return jax.vmap(one_member)(keys)


def train_ensemble(key: jax.Array, x_train: jax.Array, y_train: jax.Array, x_test: jax.Array, *,
                   n_members: int, width: int, steps: int, learning_rate: float,
                   weight_std: float = 1.0, bias_std: float = 1.0, output_std: float = 1.0,
                   chunk_size: int | None = None, mesh=None) -> EnsembleResult:
  """Trains `n_members` independent two-layer nets with full-batch GD, vmapped and jitted.

  Math:
    theta_{t+1} = theta_t - eta grad L(theta_t),  L = 1/2 sum_i ||f(x_i) - y_i||^2,
    each member from its own initialization (key = fold_in(key, member)).

  Members are processed in chunks of `chunk_size` (one compiled program reused
  for every chunk, to bound memory); within a chunk the member axis is vmapped
  and split over every device of `mesh` (`jaxlab.train.mesh.put_split`: the
  chunk is padded to a multiple of the device count, each device trains its
  members whole). With several processes every process calls this with the
  same arguments; the outputs span every process's devices
  (`jaxlab.train.mesh.to_host` gathers them).

  Args:
    key: PRNG key.
    x_train: (N, d); y_train: (N, O); x_test: (N_test, d).
    n_members: M >= 1. width: hidden width n >= 1. steps: GD steps >= 0.
    learning_rate: eta > 0 (GD converges for eta < 2 / lambda_max(Theta(X, X))).
    weight_std, bias_std, output_std: sigma_w, sigma_b, sigma_a.
    chunk_size: members per compiled call (default: all).
    mesh: a `jax.sharding.Mesh` whose devices share the members (any axes: the
      member axis is split over all of them); default every device, as
      `jaxlab.train.mesh.make_mesh()`.

  Returns:
    `EnsembleResult(outputs (M, N_test, O), train_loss (M,))`.

  Example:
    >>> r = train_ensemble(jax.random.key(0), jnp.eye(3), jnp.eye(3), jnp.ones((1, 3)),
    ...                    n_members=4, width=64, steps=10, learning_rate=0.5)
    >>> r.outputs.shape
    (4, 1, 3)

  References:
    Giapitzakis, Back de Luca, Fountoulakis 2025, arXiv:2502.16763 (ensembles
    of independently trained two-layer nets); Lee et al. 2019, arXiv:1902.06720.
  """
  _check("n_members", n_members, isinstance(n_members, (int, np.integer)) and n_members >= 1,
         "must be an int >= 1")
  _check("width", width, isinstance(width, (int, np.integer)) and width >= 1, "must be an int >= 1")
  _check("steps", steps, isinstance(steps, (int, np.integer)) and steps >= 0, "must be an int >= 0")
  _check("learning_rate", learning_rate, np.isfinite(learning_rate) and learning_rate > 0,
         "must be a finite number > 0")
  _check("chunk_size", chunk_size, chunk_size is None or chunk_size >= 1, "must be None or >= 1")
  x_train, y_train, x_test = (jnp.asarray(a) for a in (x_train, y_train, x_test))
  if y_train.ndim == 1:
    y_train = y_train[:, None]
  _check("x_train", x_train.shape, x_train.ndim == 2 and y_train.shape[0] == x_train.shape[0],
         f"need (N, d) with N = len(y_train) = {y_train.shape[0]}")
  _check("x_test", x_test.shape, x_test.ndim == 2 and x_test.shape[1] == x_train.shape[1],
         f"need (N_test, {x_train.shape[1]})")
  y_train = y_train.astype(x_train.dtype)
  x_test = x_test.astype(x_train.dtype)

  # Imported here: `import jaxlab.ntk` stays free of the train package (orbax).
  from jaxlab.train import mesh as mesh_lib

  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  chunk = mesh_lib.padded_size(int(min(chunk_size or n_members, n_members)), mesh)
  if mesh.size > 1:  # the data on every device (from every process's same host values)
    x_train, y_train, x_test = mesh_lib.sharding.put_replicated((x_train, y_train, x_test), mesh)
  outs, losses = [], []
  for start in range(0, n_members, chunk):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(start, start + chunk))
    if mesh.size > 1:
      keys = mesh_lib.put_split(keys, mesh)
    # steps and learning rate are traced: one compile serves every run of the same shapes.
    # numpy scalars: host values that every process passes alike.
    o, l = _train_members(keys, x_train, y_train, x_test, np.int32(steps),
                          np.asarray(learning_rate, x_train.dtype), width=int(width),
                          scales=(float(weight_std), float(bias_std), float(output_std)))
    outs.append(o)
    losses.append(l)
  if len(outs) == 1 and chunk == n_members:  # keep the members' layout on the mesh
    return EnsembleResult(outputs=outs[0], train_loss=losses[0])
  outputs = jnp.concatenate(outs)[:n_members]
  return EnsembleResult(outputs=outputs, train_loss=jnp.concatenate(losses)[:n_members])


def ensemble_average(outputs: jax.Array) -> jax.Array:
  """Mean over the member axis: (M, N, O) -> (N, O)."""
  return jnp.mean(outputs, axis=0)


def gd_settings(ntk_train: jax.Array, *, lr_fraction: float = 1.0,
                tolerance: float = 1e-6) -> tuple[float, int]:
  """Learning rate and step count that keep GD in the NTK (lazy) regime and converge.

  eta = lr_fraction / lambda_max(Theta(X, X)) (the linearized GD is stable for
  eta < 2 / lambda_max; larger rates leave the lazy regime, the "catapult"),
  and steps = ceil(log(1 / tolerance) / (eta lambda_min)), after which every
  residual mode has shrunk by at least `tolerance`.
  """
  if not 0 < lr_fraction < 2:
    raise ValueError(f"lr_fraction={lr_fraction!r}: must be in (0, 2)")
  if not 0 < tolerance < 1:
    raise ValueError(f"tolerance={tolerance!r}: must be in (0, 1)")
  lam = np.linalg.eigvalsh(np.asarray(ntk_train, np.float64))
  if lam[0] <= 0:
    raise ValueError(f"ntk_train: not positive definite (lambda_min={lam[0]:.3g})")
  lr = lr_fraction / lam[-1]
  decay = min(lr * lam[0], lr * (2 / lr - lam[-1]))  # slowest of |1 - eta lambda|
  return float(lr), int(math.ceil(math.log(1 / tolerance) / max(decay, 1e-12)))
