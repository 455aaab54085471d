"""DCT low-rank Adam: SVD-free low-rank gradient projection with a fixed DCT basis."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import GaLoreDimensionNumbers

from jaxlab.optim._checks import (
  check_finite,
  check_float_params,
  check_in_range,
  check_learning_rate,
  check_positive_int,
)


class ScaleByDCTLowRankState(NamedTuple):
  """State of `scale_by_dct_lowrank`: indices, never projection matrices."""

  count: jax.Array  # int32 scalar
  base_optimizer_state: optax.OptState  # e.g. Adam moments of the projected gradients
  indices: optax.Updates  # int32 (rank,) per projected leaf; int32 (0,) for the others


BASES = ("dct3", "dct2")


@functools.lru_cache(maxsize=64)
def dct_basis(size: int, dtype_name: str = "float32", basis: str = "dct3") -> np.ndarray:
  """The orthonormal projection matrix Q (size x size) whose columns are selected.

  With C the orthonormal DCT-II matrix, C[k, j] = c_k cos(pi k (2j + 1) / (2 size)),
  c_0 = sqrt(1/size), c_k = sqrt(2/size) (so C x = DCT-II of x):
    basis="dct3": Q = C, the authors' ``dct3_matrix`` and DCTAdamW's default
      (``sim_type='matmul'``); x @ Q is the orthonormal DCT-III of a row x.
    basis="dct2": Q = C^T, their ``sim_type='makhoul'`` path; column k is the
      cosine of frequency k and x @ Q is the orthonormal DCT-II of x.
  Computed once per (size, dtype, basis) in float64 and cached, so layers of
  the same size share it.
  """
  k = np.arange(size)[:, None]
  j = np.arange(size)[None, :]
  c = np.sqrt(2.0 / size) * np.cos(np.pi * k * (2 * j + 1) / (2 * size))
  c[0, :] *= np.sqrt(0.5)
  return (c if basis == "dct3" else c.T).astype(dtype_name)


def _matrix_view(x, dim_nums: GaLoreDimensionNumbers):
  """Reshape functions (to (reduction, output) matrix, and back), as optax's galore does."""
  def axes(a):
    return tuple(ax % x.ndim for ax in ((a,) if isinstance(a, int) else a))

  red, out = axes(dim_nums.reduction_axis), axes(dim_nums.output_axis)
  if set(red) & set(out) or len(set(red) | set(out)) != x.ndim:
    raise ValueError(
        f"weight_dimension_numbers={dim_nums} does not split shape {x.shape} into disjoint "
        "reduction and output axes covering every axis.")
  perm = red + out
  inv = tuple(int(i) for i in np.argsort(perm))
  shape_t = tuple(x.shape[a] for a in perm)
  n, m = math.prod(shape_t[:len(red)]), math.prod(shape_t[len(red):])
  to_mat = lambda y: jnp.transpose(y, perm).reshape(n, m)
  from_mat = lambda y: jnp.transpose(y.reshape(shape_t), inv)
  return to_mat, from_mat, (n, m)


def scale_by_dct_lowrank(
    rank: int = 128,
    update_every: int = 200,
    scale: float = 1.0,
    base_optimizer: Optional[optax.GradientTransformation] = None,
    weight_dimension_numbers: Any = None,
    basis: str = "dct3",
) -> optax.GradientTransformation:
  r"""Low-rank projection of matrix gradients onto r columns of a DCT matrix (DCT-AdamW).

  Math (Modoranu et al. 2025, Section 3; the authors' DCTAdamW): for a gradient
  G of shape n x m (after `weight_dimension_numbers`), with Q the orthonormal
  DCT matrix of size min(n, m) (`dct_basis`, built once, shared by same-size
  layers):
    n >= m: S = G Q (n x m); on a refresh step keep the r columns of largest
            l1 norm, idx = top_r ||S[:, k]||_1; a = G Q[:, idx]  (n x r);
            back: U = u Q[:, idx]^T.
    n <  m: S = Q^T G; rows by l1 norm; a = Q[:, idx]^T G (r x m); U = Q[:, idx] u.
  The base optimizer (Adam by default; ``scale_by_adam`` equals the paper's
  u = m / (eps sqrt(bc2) + sqrt(v)) * sqrt(bc2)/bc1) runs on a; leaves that are
  not projected get the base optimizer on their full gradient. Only idx is
  stored. The subspace is refreshed when count % update_every == 0 (step 0
  included), the convention of optax's galore; the moments are not rotated
  when it changes (the authors' default). One refresh costs one matmul
  (n m^2) plus a sort; other steps cost two n m r matmuls.

  Args:
    rank: r > 0 (clipped to min(n, m) per leaf).
    update_every: steps between subspace refreshes (> 0). The authors' code
      refreshes every step by default; galore's default gap is 200.
    scale: multiplies the projected-back update.
    base_optimizer: gradient-only transform applied in the low-rank space
      (default ``optax.scale_by_adam()``); must not need params.
    weight_dimension_numbers: as in ``optax.contrib.galore``: None (project
      2-D leaves), one ``GaLoreDimensionNumbers`` for every leaf of rank >= 2,
      a pytree of them (None to skip a leaf), or a callable params -> pytree.
    basis: which DCT matrix Q is (`dct_basis`). "dct3" (default) is the matrix
      the authors' DCTAdamW uses by default (``sim_type='matmul'``, their
      ``dct3_matrix``: S = G Q is the DCT-III of G's rows), so the default
      reproduces their released optimizer. "dct2" is the transpose, which their
      ``sim_type='makhoul'`` option uses (S = the DCT-II of G's rows, computable
      by FFT; its columns are single-frequency cosines). Both are orthonormal
      and pick different subspaces for the same gradient.

  Returns:
    An optax.GradientTransformation.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> tx = optax.chain(scale_by_dct_lowrank(rank=4), optax.scale(-1e-3))
    >>> state = tx.init({"w": jnp.ones((16, 8)), "b": jnp.ones(8)})
    >>> state[0].indices["w"].shape
    (4,)

  References:
    Modoranu, Safaryan, Schultheis, Alistarh, "SVD-Free Low-Rank Adaptive
    Gradient Optimization for Large Language Models", 2025,
    https://arxiv.org/abs/2505.17967
  """
  check_positive_int(rank, "rank")
  check_positive_int(update_every, "update_every")
  check_finite(scale, "scale")
  if basis not in BASES:
    raise ValueError(f"basis={basis!r} is not allowed: one of {BASES} (dct3 = the authors' "
                     "default DCTAdamW matrix, dct2 = its transpose, their makhoul path).")
  base = optax.scale_by_adam() if base_optimizer is None else base_optimizer
  is_dn_leaf = lambda x: x is None or isinstance(x, GaLoreDimensionNumbers)

  def dim_nums_for(params):
    if weight_dimension_numbers is None:
      return jax.tree.map(lambda p: GaLoreDimensionNumbers() if p.ndim == 2 else None, params)
    if isinstance(weight_dimension_numbers, GaLoreDimensionNumbers):
      return jax.tree.map(lambda p: weight_dimension_numbers if p.ndim >= 2 else None, params)
    if callable(weight_dimension_numbers):
      return weight_dimension_numbers(params)
    return weight_dimension_numbers

  def plan(x, dn):
    """(to_mat, from_mat, right, size, r) for a projected leaf, None otherwise."""
    if dn is None:
      return None
    to_mat, from_mat, (n, m) = _matrix_view(x, dn)
    right = n >= m
    size = min(n, m)
    return to_mat, from_mat, right, size, min(rank, size)

  def proxy(x, dn):
    p = plan(x, dn)
    if p is None:
      return x
    to_mat, _, right, _, r = p
    n, m = to_mat(x).shape
    return jnp.zeros((n, r) if right else (r, m), x.dtype)

  def init_fn(params):
    check_float_params(params, "dct_lowrank")
    dns = dim_nums_for(params)
    proxies = jax.tree.map(proxy, params, dns, is_leaf=is_dn_leaf)
    indices = jax.tree.map(
        lambda x, dn: jnp.zeros((0,) if dn is None else (plan(x, dn)[4],), jnp.int32),
        params, dns, is_leaf=is_dn_leaf)
    return ScaleByDCTLowRankState(
        count=jnp.zeros([], jnp.int32), base_optimizer_state=base.init(proxies), indices=indices)

  def update_fn(updates, state, params=None):
    del params
    dns = dim_nums_for(updates)
    refresh = state.count % update_every == 0

    def project(g, idx, dn):
      p = plan(g, dn)
      if p is None:
        return g, idx
      to_mat, _, right, size, r = p
      g2 = to_mat(g)
      q = jnp.asarray(dct_basis(size, np.dtype(g2.dtype).name, basis))

      def new_subspace():
        if right:
          s = g2 @ q
          new_idx = jax.lax.top_k(jnp.sum(jnp.abs(s), axis=0), r)[1].astype(jnp.int32)
          return jnp.take(s, new_idx, axis=1), new_idx
        s = q.T @ g2
        new_idx = jax.lax.top_k(jnp.sum(jnp.abs(s), axis=1), r)[1].astype(jnp.int32)
        return jnp.take(s, new_idx, axis=0), new_idx

      def same_subspace():
        q_r = jnp.take(q, idx, axis=1)
        return (g2 @ q_r if right else q_r.T @ g2), idx

      return jax.lax.cond(refresh, new_subspace, same_subspace)

    pairs = jax.tree.map(project, updates, state.indices, dns, is_leaf=is_dn_leaf)
    outer = jax.tree.structure(updates)
    low, new_indices = jax.tree.transpose(outer, jax.tree.structure((0, 0)), pairs)
    low_updates, base_state = base.update(low, state.base_optimizer_state, None)

    def back(u, g, idx, dn):
      p = plan(g, dn)
      if p is None:
        return u
      _, from_mat, right, size, _ = p
      q_r = jnp.take(jnp.asarray(dct_basis(size, np.dtype(u.dtype).name, basis)), idx, axis=1)
      full = u @ q_r.T if right else q_r @ u
      return (scale * from_mat(full)).astype(g.dtype)

    full_updates = jax.tree.map(back, low_updates, updates, new_indices, dns, is_leaf=is_dn_leaf)
    return full_updates, ScaleByDCTLowRankState(
        count=optax.safe_increment(state.count), base_optimizer_state=base_state,
        indices=new_indices)

  return optax.GradientTransformation(init_fn, update_fn)


def dct_lowrank(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    update_every: int = 200,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Optional[Any | Callable[[optax.Params], Any]] = None,
    scale: float = 1.0,
    base_optimizer: Optional[optax.GradientTransformation] = None,
    weight_dimension_numbers: Any = None,
    basis: str = "dct3",
) -> optax.GradientTransformation:
  r"""DCT-AdamW: `scale_by_dct_lowrank` with Adam, decoupled weight decay and a learning rate.

  Math:
    theta <- theta - lr_t * (U_t + weight_decay * theta) with U_t from
    `scale_by_dct_lowrank` (base optimizer ``scale_by_adam(b1, b2, eps)``
    unless ``base_optimizer`` is given), i.e. theta (1 - lr wd) - lr U as in
    the authors' DCTAdamW. Same layout as ``optax.contrib.galore``.

  Args:
    learning_rate: float >= 0 or an optax schedule.
    rank, update_every, scale, weight_dimension_numbers, basis: see `scale_by_dct_lowrank`.
    b1, b2, eps: Adam parameters (ignored when ``base_optimizer`` is given).
    weight_decay: decoupled weight decay >= 0; ``mask`` selects leaves.
    base_optimizer: replaces Adam in the low-rank space.

  Returns:
    An optax.GradientTransformation.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = dct_lowrank(1e-3, rank=4, update_every=10)
    >>> state = tx.init({"w": jnp.ones((16, 8))})

  References:
    Modoranu et al. 2025, https://arxiv.org/abs/2505.17967
  """
  check_learning_rate(learning_rate)
  check_in_range(b1, "b1", 0.0, 1.0)
  check_in_range(b2, "b2", 0.0, 1.0)
  check_in_range(eps, "eps", 0.0, float("inf"))
  check_in_range(weight_decay, "weight_decay", 0.0, float("inf"))
  if base_optimizer is None:
    base_optimizer = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  parts = [scale_by_dct_lowrank(rank, update_every, scale, base_optimizer, weight_dimension_numbers,
                                basis)]
  if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
