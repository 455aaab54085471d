"""Lanczos tridiagonalization with full reorthogonalization: a jitted loop, or jitted steps."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxlab.spectral import lanczos_host
from jaxlab.spectral import operators as ops

_HI = jax.lax.Precision.HIGHEST


class LanczosResult(NamedTuple):
  """Output of :func:`lanczos`.

  alphas: (m,) float64 NumPy array, the diagonal of T.
  betas: (m-1,) float64 NumPy array, the off-diagonal of T (0 marks a restart
    after an invariant subspace was found).
  basis: (m, n) array of orthonormal Lanczos vectors (rows, flattened in the
    leaf order of ``params_like``) in ``dtype``, or None.
  beta_last: β_m, the norm of the remainder in ``A V = V T + β_m v_{m+1} e_mᵀ``.
  """

  alphas: np.ndarray
  betas: np.ndarray
  basis: jax.Array | None
  beta_last: float = 0.0


def tridiagonal(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
  """Dense float64 T from its diagonal and off-diagonal."""
  a = np.asarray(alphas, np.float64)
  b = np.asarray(betas, np.float64)
  return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


def resolve_dtype(params_like: Any, dtype: Any) -> np.dtype:
  if dtype is None:
    return np.dtype(jnp.result_type(*jax.tree_util.tree_leaves(params_like)))
  dt = np.dtype(dtype)
  if dt not in (np.float32, np.float64):
    raise ValueError(f"dtype is {dt}; allowed: float32, float64 (or None for the params' dtype).")
  return dt


def as_partial(matvec: Callable) -> Callable:
  """Wrap a plain callable so it can be passed into ``jax.jit`` as an argument."""
  if getattr(matvec, "host_loop", False) or isinstance(matvec, Partial):
    return matvec
  if not callable(matvec):
    raise ValueError(f"matvec must be callable (a pytree -> pytree map); got {type(matvec).__name__}.")
  return Partial(matvec)


def flat_apply(matvec: Callable, x: jax.Array, spec: ops.FlatSpec) -> jax.Array:
  """``A x`` in flat coordinates: unravel to the params' dtypes, ravel into x's dtype."""
  return ops.ravel(matvec(ops.unravel(x, spec)), spec, x.dtype)


@functools.partial(jax.jit, static_argnames=("spec",))
def _apply_one_jit(matvec, x, spec):
  return flat_apply(matvec, x, spec)


_unravel_jit = jax.jit(ops.unravel, static_argnums=(1,))
_ravel_jit = jax.jit(ops.ravel, static_argnums=(1, 2))


def host_apply(matvec: Callable, x: jax.Array, spec: ops.FlatSpec) -> jax.Array:
  """``A x`` for a host-loop operator, with jitted (not op-by-op) flattening."""
  return _ravel_jit(matvec(_unravel_jit(x, spec)), spec, np.dtype(x.dtype))


def apply_rows(matvec: Callable, X: jax.Array, spec: ops.FlatSpec) -> jax.Array:
  """``A xᵢ`` for every row of X (k, n).

  One jitted single-vector product dispatched per row (compiled once for any k,
  unlike a ``lax.map`` over k rows), or the host loop of a data-set operator.
  """
  if getattr(matvec, "host_loop", False):
    return jnp.stack([host_apply(matvec, x, spec) for x in X])
  mv = as_partial(matvec)
  return jnp.stack([_apply_one_jit(mv, X[i], spec) for i in range(X.shape[0])])


_BLOCK = 32  # above 32 rows, the basis has whole blocks of 32 rows
# β_j at or below this many eps times the magnitudes of step j is rounding noise (breakdown)
_BREAKDOWN = 2.0
# a reorthogonalized basis of at least this many bytes grows by buckets (see run_lanczos)
_GROW_BYTES = 1 << 28


def basis_rows(num_iters: int) -> int:
  """Rows of the basis array for m steps: m + 1 rounded up to a bucket.

  The next power of two (at least 8) up to 32, then the next multiple of 32, so
  calls with nearby ``num_iters`` (20 and 24, 40 and 60) share every compiled
  piece; unused rows stay zero and change no result (zero rows add exact zeros
  to the Gram-Schmidt sums). The cost is up to 31 zero rows in each
  Gram-Schmidt pass.
  """
  r = int(num_iters) + 1
  if r <= _BLOCK:
    return max(8, 1 << (r - 1).bit_length())
  return -(-r // _BLOCK) * _BLOCK


_CHUNK = 128  # entries per chunk of a basis row (see _dots)


def chunk_shape(n: int, devices: int = 1) -> tuple[int, int]:
  """(K, C): a vector of n entries as K chunks of C ≤ 128 entries, ``K·C − n < K`` zeros of padding.

  K is a multiple of ``devices``, so a sharded basis splits K evenly over them.
  """
  k = -(-int(n) // _CHUNK)
  k = -(-k // devices) * devices
  return k, -(-int(n) // k)


def _kc(n: int, layout: ops.Layout | None) -> tuple[int, int]:
  return chunk_shape(n, 1 if layout is None else layout.mesh.size)


def _keep(x: jax.Array, layout: ops.Layout | None) -> jax.Array:
  """A chunk-major array split along K over the params' devices (as is without a layout)."""
  return x if layout is None else layout.constrain_chunks(x)


def _as_tree(x: jax.Array, spec: ops.FlatSpec, layout: ops.Layout | None) -> Any:
  """A flat vector as a pytree in the params' dtypes, laid out like the params.

  With a layout the vector (one, not the basis) is first gathered on every
  device: cutting a K-split vector into leaves split another way is no even
  reshard, which XLA's partitioner would otherwise do the same way with a
  warning. The product gathers each parameter anyway (FSDP).
  """
  if layout is None:
    return ops.unravel(x, spec)
  x = jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(layout.mesh, jax.sharding.PartitionSpec()))
  return layout.constrain_tree(ops.unravel(x, spec))


def to_chunks(x: jax.Array, kc: tuple[int, int]) -> jax.Array:
  """A flat vector (n,) as (K, C), zero-padded at the end."""
  k, c = kc
  return jnp.pad(x, (0, k * c - x.shape[0])).reshape(k, c)


def from_chunks(x: jax.Array, n: int) -> jax.Array:
  """(K, C) (or (K, r, C) → (r, n)) back to flat coordinates, the padding dropped."""
  if x.ndim == 3:
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(x.shape[0], -1)[:, :n]
  return x.reshape(-1)[:n]


def _ksum(P: jax.Array) -> jax.Array:
  """Sum over the chunk axis 0 of per-chunk partial sums, in float64 (back in P's dtype)."""
  if P.dtype == jnp.float64:
    return jnp.sum(P, axis=0)
  with jax.enable_x64(True):
    return jnp.sum(P.astype(jnp.float64), axis=0).astype(P.dtype)


def _dots(V: jax.Array, w: jax.Array) -> jax.Array:
  """``⟨v_i, w⟩`` for every basis row: V (K, rows, C), w (K, C) -> (rows,).

  Blocked summation: a batched matrix-vector product sums each chunk of C ≤ 128
  products in the working precision, then the K partial sums are added in
  float64. A float32 sum of n terms errs by up to about eps·n (eps·√n
  typically) relative to its partial sums; XLA's CPU GEMV sums a whole row of
  1e6 in a few running accumulators, and at n = 1e6 a coefficient of a vector
  dominated by a few large entries (a converged Ritz direction) came out 1e-4
  off relative to ‖w‖, far above what Lanczos must resolve. Here a chunk adds at
  most 128 terms (a few per accumulator), so the error is a few eps of the
  chunk's largest partial sum, whatever n (Higham, *Accuracy and Stability of
  Numerical Algorithms*, §4.2 on blocked/pairwise summation). This needs the
  basis stored chunk-major: the batched product then runs over contiguous
  (rows, C) blocks at GEMV speed, where a row-major (rows, n) basis needs a
  transposing copy (10x slower on CPU). Summing every product in float64
  instead (the previous code) was as accurate and 3-4x slower per pass on CPU.
  """
  return _ksum(jnp.einsum("krc,kc->kr", V, w, precision=_HI))


def _vdot(a: jax.Array, b: jax.Array) -> jax.Array:
  """``⟨a, b⟩`` of two chunked vectors (K, C), blocked as in :func:`_dots`."""
  return _ksum(jnp.sum(a * b, axis=-1))


def _norm(w: jax.Array) -> jax.Array:
  return jnp.sqrt(_vdot(w, w))


def _combine(c: jax.Array, V: jax.Array) -> jax.Array:
  """``Σ_i c_i v_i`` (K, C) over the basis rows: a batched (1, rows) x (rows, C) product."""
  return jnp.einsum("kr,krc->kc", jnp.broadcast_to(c, (V.shape[0], c.shape[0])), V,
                    precision=_HI)


def _gs(V: jax.Array, w: jax.Array) -> jax.Array:
  """One classical Gram-Schmidt pass ``w − Vᵀ(V w)``; rows of V past the basis are zero."""
  return w - _combine(_dots(V, w), V)


def _orthogonalize(V: jax.Array, w: jax.Array) -> jax.Array:
  """Classical Gram-Schmidt of w against the rows of V, a second pass if it cancelled.

  Kahan-Parlett "twice is enough" (Parlett, *The Symmetric Eigenvalue Problem*,
  §6.9; Giraud, Langou & Rozložník 2005): a second pass runs when the first
  lost more than 1/√2 of the norm, i.e. when cancellation could have left
  components along V; then the result is orthogonal to V to working precision,
  given projections accurate to working precision — which is why the
  coefficients ``V w`` are summed blockwise (:func:`_dots`). Measured at n = 1e6,
  m = 80, float32 (2-core CPU, float64-summed coefficients): always running two
  passes gave the same |VVᵀ − I| (1.7e-7) and top-10 error (6e-7) at 1.9x the
  time per step, so the second pass stays conditional. Each pass streams the
  whole basis array twice (rows past j are zero and contribute nothing; slicing
  the filled rows inside the loop measured 2-6x slower on CPU; the host-driven
  loop grows large bases in buckets instead, see :func:`run_lanczos`).
  """
  w1 = _gs(V, w)
  return jax.lax.cond(_norm(w1) < 0.7071 * _norm(w), lambda u: _gs(V, u), lambda u: u, w1)


def _row(V: jax.Array, j: jax.Array) -> jax.Array:
  """Basis row j as a chunked vector (K, C)."""
  return jax.lax.dynamic_index_in_dim(V, j, axis=1, keepdims=False)


def _set_row(V: jax.Array, j: jax.Array, v: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(V, v, j, axis=1)


def _mix(x: jax.Array) -> jax.Array:
  """An invertible uint32 hash with good avalanche (lowbias32, C. Wellons' hash-prospector)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _key_seed(key: jax.Array, salt: Any = 0) -> jax.Array:
  """A uint32 seed from the bits of a PRNG key (typed or raw uint32) and a salt."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = jnp.ravel(key).astype(jnp.uint32)
  s = _mix(jnp.asarray(salt).astype(jnp.uint32) + jnp.uint32(0x9E3779B9))
  for i in range(words.shape[0]):
    s = _mix(s ^ words[i])
  return s


def _uniform(seed: jax.Array, n: int, dt: Any) -> jax.Array:
  """n hashed values uniform in (−1, 1), symmetric, none zero.

  A counter-based hash of (index, seed) instead of ``jax.random``: threefry
  compiles slowly on CPU (0.2 s for a split, 0.5 s for a normal vector of 1e5,
  measured on a 2-core CPU), which dominated a first call. Uniform (−1, 1) start
  vectors are what ARPACK uses (``dgetv0``); any vector with a component along
  the wanted eigenvectors serves Lanczos.
  """
  x = _mix(jax.lax.iota(jnp.uint32, n) * jnp.uint32(0x9E3779B9) + seed)
  x = _mix(x ^ seed)
  return (((x >> 8).astype(jnp.float32) + 0.5) * (2.0 ** -23) - 1.0).astype(dt)


def _rademacher(seed: jax.Array, n: int, dt: Any) -> jax.Array:
  return jnp.where(_uniform(seed, n, jnp.float32) < 0, -1, 1).astype(dt)


class _Carry(NamedTuple):
  """The recurrence's state; the basis V (K, rows, C) (chunk-major, see :func:`_dots`)
  travels apart from it (donated to each step)."""

  alphas: jax.Array  # (rows,), zeros beyond the steps done
  betas: jax.Array  # (rows,)
  beta_prev: jax.Array  # ()
  j: jax.Array  # int32 (), steps done: V[j] is the next vector to multiply
  seed: jax.Array  # uint32 (), for restart vectors
  broke: jax.Array  # bool (), the last step reached an invariant subspace: restart pending


def _init(x0: jax.Array, seed: jax.Array, rows: int,
          layout: ops.Layout | None = None) -> tuple[jax.Array, _Carry]:
  """x0 flat (n,) -> the basis (K, rows, C) with row 0 = x0 / ‖x0‖, and the carry."""
  dt = x0.dtype
  x = _keep(to_chunks(x0, _kc(x0.shape[0], layout)), layout)
  V = _keep(jnp.zeros((x.shape[0], rows, x.shape[1]), dt), layout)
  V = _keep(_set_row(V, 0, x / _norm(x)), layout)
  z = jnp.zeros((rows,), dt)
  return V, _Carry(z, z, jnp.zeros((), dt), jnp.zeros((), jnp.int32), seed,
                   jnp.zeros((), bool))


def _start_vector(key, salt, v0, spec, dtype, dist):
  """(x0 in dtype, the restart seed): hashed uniform / Rademacher from the key, or v0 flattened."""
  n = spec.size
  if v0 is not None:
    return ops.ravel(v0, spec, dtype), _key_seed(key, salt)
  s = _key_seed(key, salt)
  draw = _rademacher if dist == "rademacher" else _uniform
  return draw(_mix(s ^ jnp.uint32(1)), n, dtype), _mix(s ^ jnp.uint32(2))


def _update(V: jax.Array, c: _Carry, av: jax.Array, reorth: bool) -> tuple[jax.Array, _Carry]:
  """One Lanczos step given av = A v_j, chunked (K, C) (Paige's variant; Golub & Van Loan
  Alg. 10.1.1).

  Breakdown (an invariant subspace) is declared when, after reorthogonalization,
  ``β_j ≤ 2 eps (‖A v_j‖ + |α_j| + β_{j−1})``: w is then no larger than the
  rounding error of the step that formed it, so it carries no direction of A.
  Measured at exact breakdowns (three distinct eigenvalues; float32 and float64;
  n = 30 to 1e6) the noise is 0.77–0.88 eps times those magnitudes; the smallest
  genuine residual in the float32 test spectrum (10 eigenvalues in [1, 10], 1e6
  − 10 in [0, 1e-5]) is 6.7 eps times them, so the factor 2 sits between the two.
  The test has no √n factor: a norm of entrywise relative errors is relative
  to the norm, whatever n. (The former ``10 eps √n`` bound was 1.2e-2 relative
  at n = 1e6 in float32 and took genuine residuals for breakdown.) A residual
  the test misses, e.g. the noise of a float32 matvec, is harmless: it is
  orthogonalized like any other and enters T with its own tiny β, so
  T = Vᵀ A V still holds to the operator's accuracy. On breakdown the step
  records β_j = 0 and sets ``broke``; the caller then replaces row j + 1 with
  :func:`_restart`. (Restarting inside the step, under a ``lax.cond`` holding
  the basis, doubled the step's compile time and made XLA:CPU copy the basis
  every step: 11.9 against 2.8 ms a step at n = 99k, 32 rows.)
  """
  j = c.j
  v = _row(V, j)
  v_prev = _row(V, jnp.maximum(j - 1, 0))
  w = av - c.beta_prev * v_prev
  alpha = _vdot(w, v)
  w = w - alpha * v
  if reorth:
    w = _orthogonalize(V, w)
  beta = _norm(w)
  scale = _norm(av) + jnp.abs(alpha) + c.beta_prev
  breakdown = beta <= _BREAKDOWN * jnp.finfo(w.dtype).eps * scale
  v_next = w / jnp.where(beta > 0, beta, 1)
  beta = jnp.where(breakdown, jnp.zeros((), w.dtype), beta)
  V = _set_row(V, j + 1, v_next)
  return V, _Carry(c.alphas.at[j].set(alpha), c.betas.at[j].set(beta), beta, j + 1, c.seed,
                   breakdown)


def _restart_row(V: jax.Array, c: _Carry, n: int) -> jax.Array:
  """V with row c.j replaced by a random unit vector orthogonal to rows 0..c.j−1.

  After a breakdown at step j = c.j − 1 (an invariant subspace): continuing from
  such a vector with β_j = 0 recorded keeps T = Vᵀ A V exact. Two Gram-Schmidt
  passes, as the random vector may lie largely in the basis.
  """
  j = c.j
  V = _set_row(V, j, jnp.zeros(V.shape[::2], V.dtype))
  k, cc = V.shape[0], V.shape[2]
  r = _uniform(_mix(c.seed ^ _mix((j - 1).astype(jnp.uint32))), k * cc, V.dtype).reshape(k, cc)
  r = jnp.where(jnp.arange(k * cc).reshape(k, cc) < n, r, 0)  # zero padding stays zero
  r = _gs(V, _gs(V, r))
  return _set_row(V, j, r / _norm(r))


def once_jit(fun: Callable, **jit_kwargs) -> Callable:
  """``jax.jit`` for a piece that runs once per call: on CPU compiled at XLA's
  optimization level 0, which halved its compile time (0.59 -> 0.24 s for
  :func:`_start`, 0.47 -> 0.24 s for the Ritz vectors, 2-core CPU under load)
  at no measurable run-time cost for such small memory-bound work. Other
  backends keep the default."""
  plain = jax.jit(fun, **jit_kwargs)
  quick = jax.jit(fun, compiler_options={"xla_backend_optimization_level": 0}, **jit_kwargs)

  @functools.wraps(fun)
  def call(*args, **kwargs):
    return (quick if jax.default_backend() == "cpu" else plain)(*args, **kwargs)

  return call


@functools.partial(once_jit, static_argnames=("spec", "rows", "dtype", "dist", "layout"))
def _start(key, salt, v0, spec, rows, dtype, dist, layout=None):
  """(V, carry, v₁ as a pytree in the params' dtypes) for the host-driven loop.

  With a ``layout`` (params placed over a mesh) the basis is split along its
  chunk axis K over every device and v₁ is laid out like the params.
  """
  x0, seed = _start_vector(key, salt, v0, spec, dtype, dist)
  V, c = _init(x0, seed, rows, layout)
  return V, c, _as_tree(from_chunks(_row(V, 0), spec.size), spec, layout)


@functools.partial(jax.jit, static_argnames=("spec", "layout"), donate_argnums=0)
def _restart(V, c, spec, layout=None):
  """Replace row c.j after a breakdown (see :func:`_restart_row`); compiled only when needed."""
  V = _keep(_restart_row(V, c, spec.size), layout)
  return V, c._replace(broke=jnp.zeros((), bool)), _as_tree(
      from_chunks(_row(V, c.j), spec.size), spec, layout)


@functools.partial(jax.jit, static_argnames=("spec", "reorth", "layout"), donate_argnums=0)
def _step(V, c, av, spec, reorth, layout=None):
  """One host-driven step: flatten ``A v_j``, update, return ``v_{j+1}`` as a pytree.

  One compiled piece per (params spec, basis rows) whatever ``num_iters``; the
  basis is donated, so the row written each step updates it in place.
  """
  av = _keep(to_chunks(ops.ravel(av, spec, V.dtype), _kc(spec.size, layout)), layout)
  V, c = _update(V, c, av, reorth)
  V = _keep(V, layout)
  return V, c, _as_tree(from_chunks(_row(V, c.j), spec.size), spec, layout)


@functools.partial(once_jit, static_argnames=("rows", "layout"))
def _grow(V, c, rows, layout=None):
  """The basis and coefficients padded with zero rows to ``rows``."""
  pad = rows - V.shape[1]
  return (_keep(jnp.pad(V, ((0, 0), (0, pad), (0, 0))), layout),
          c._replace(alphas=jnp.pad(c.alphas, (0, pad)), betas=jnp.pad(c.betas, (0, pad))))


_call = jax.jit(lambda mv, x: mv(x))


def tree_product(matvec: Callable) -> Callable:
  """``x -> A x`` on pytrees, one compiled call (a host-loop operator is returned as is)."""
  if getattr(matvec, "host_loop", False):
    return matvec
  return functools.partial(_call, as_partial(matvec))


def check_iters(num_iters: Any, n: int, name: str = "num_iters") -> int:
  if isinstance(num_iters, bool) or not isinstance(num_iters, (int, np.integer)):
    raise ValueError(f"{name} must be an int; got {num_iters!r}.")
  if not 1 <= num_iters <= n:
    raise ValueError(f"{name} is {num_iters}; allowed: 1 <= {name} <= dimension of params "
                     f"({n}), since a Krylov basis cannot exceed the dimension.")
  return int(num_iters)


def run_lanczos(matvec, spec: ops.FlatSpec, key, num_iters: int, reorth: bool, dtype: Any,
                v0: Any = None, dist: str = "uniform", salt: int = 0,
                stop: Callable | None = None,
                layout: ops.Layout | None = None) -> tuple[jax.Array, _Carry, int]:
  """Lanczos from a hashed start vector of the key (or the pytree v0), inside the caller's x64 scope.

  Every run is driven from Python: the product is its own compiled program
  (:func:`tree_product`), then one jitted :func:`_step`. A product fused into
  a jitted ``fori_loop`` ran convolutions in a naive form on XLA:CPU (27x slower
  for 20 steps on SmallCNN, 29x for ``preconditioned_hessian_vp`` there),
  recompiled the whole loop for each new matvec, and was even slower on a plain
  diagonal matvec at n = 1e5 (2.4 s against 0.78 s for 100 steps, 2-core CPU
  under load); a host-driven step costs two dispatches (about 90 µs a step
  measured at n = 1000).

  ``stop(carry, j)``, if given, is asked on the host after each step j < num_iters
  and ends the run when true; the basis then starts
  with at most 32 rows and is padded to ``basis_rows(num_iters)`` only if the run
  gets that far, so a run that stops early shares the compiled step of short
  runs and sweeps a small basis. A large basis (``basis_rows(num_iters) · n``
  of 256 MB or more, reorthogonalized) grows
  through the buckets 8, 16, 32, 64, 96, ... as the run fills them: each
  Gram-Schmidt pass streams the whole basis array, so this halves the average
  work of a long run (about 74 rows streamed per step instead of 128 over
  100 steps) for a few more compiled steps, which cost less than the passes
  saved at that size. Returns the basis ``(K, rows, C)`` (chunk-major, see
  :func:`_dots`; :func:`from_chunks` gives ``(rows, n)``), the carry
  (``alphas``/``betas`` zero beyond the steps done) and the number of steps done.

  ``layout`` (:func:`~jaxlab.spectral.operators.layout_of` of the params, None
  on the single-device path): the basis is split along K over every device of
  the params' mesh (K a multiple of the device count, see :func:`chunk_shape`),
  so a device holds about ``rows · n / devices`` entries, and each ``v_j`` is
  handed to the product laid out like the params; the Gram-Schmidt sums become
  per-device partial sums plus one all-reduce, XLA's SPMD partitioning of the
  same program.
  """
  rows = basis_rows(num_iters)
  dt = np.dtype(dtype)
  big = reorth and rows * spec.size * dt.itemsize >= _GROW_BYTES
  product = tree_product(matvec)
  start = rows
  if big:
    start = basis_rows(min(num_iters, 7))
  elif stop is not None:  # likely to stop early: start with at most 32 rows, grow if needed
    start = min(rows, basis_rows(min(num_iters, _BLOCK - 1)))
  kw = {} if layout is None else {"layout": layout}  # the single-device path as before
  V, c, x = _start(key, salt, v0, spec=spec, rows=start, dtype=dt, dist=dist, **kw)
  for j in range(1, num_iters + 1):
    if j == V.shape[1]:  # this step writes row j
      V, c = _grow(V, c, rows=basis_rows(j) if big else rows, **kw)
    V, c, x = _step(V, c, product(x), spec=spec, reorth=reorth, **kw)
    if j < num_iters and bool(c.broke):  # an invariant subspace (rare): restart the basis
      V, c, x = _restart(V, c, spec=spec, **kw)
    if stop is not None and j < num_iters and stop(c, j):
      return V, c, j
  return V, c, num_iters


def lanczos(matvec: Callable, params_like: Any, num_iters: int, key: jax.Array | int,
            reorthogonalize: bool = True, dtype: Any = None, return_basis: bool = False,
            v0: Any = None, host: bool | None = None) -> LanczosResult:
  """Lanczos tridiagonalization ``Vᵀ A V = T`` of a symmetric operator on pytrees.

  Math:
    From a random unit ``v₁``, for ``j = 1..m``:
    ``w = A v_j − β_{j−1} v_{j−1}``, ``α_j = ⟨w, v_j⟩``, ``w ← w − α_j v_j``,
    ``β_j = ‖w‖``, ``v_{j+1} = w / β_j`` (Lanczos 1950; Paige's ordering, Golub
    & Van Loan, *Matrix Computations*, Alg. 10.1.1). With
    ``reorthogonalize=True`` (default) ``w`` is also projected off every
    previous ``v_i`` by classical Gram-Schmidt, with a second pass when the
    first cancelled (Kahan-Parlett "twice is enough"; Parlett, *The Symmetric
    Eigenvalue Problem*, §6.9) and the coefficients ``⟨v_i, w⟩`` (and α, β)
    summed blockwise (chunks of ≤ 128 products in the working precision, the
    chunk sums in float64; see ``_dots``), so even a float32 basis stays
    orthonormal to working precision at any n: without this, converged Ritz values reappear
    as spurious "ghost" copies (Paige 1971; Ghorbani et al. 2019 use full
    reorthogonalization in float64). On an invariant subspace the iteration
    restarts from a random vector orthogonal to the basis and records
    ``β_j = 0``; that is declared only when ``β_j`` is at the rounding level of
    its own step, ``β_j ≤ 2 eps (‖A v_j‖ + |α_j| + β_{j−1})`` (no dependence on
    n; see ``_update``). The basis is one array of :func:`basis_rows` rows
    (m + 1 rounded up to a bucket, zeros beyond), so nearby m share every
    compiled piece; it is stored chunk-major, (K, rows, C) with K·C ≥ n. The
    loop is driven from Python: the product (any callable, or a
    ``hessian_vp``/``ggn_vp`` operator of one batch or a data set) is its own
    compiled program, then one jitted step per iteration (flatten, update,
    unflatten the next vector; the basis donated), a large basis growing by
    buckets as it fills (see ``run_lanczos``). The start
    vector is uniform on (−1, 1) per entry, hashed from the key's bits rather
    than drawn with ``jax.random`` (threefry took 0.5-0.7 s to compile for a
    first call on a 2-core CPU).

    Accuracy, float32, n = 1e6, m = 80 (10 eigenvalues in [1, 10] over 1e6 − 10
    in [0, 1e-5]): |VVᵀ − I| = 1.9e-7 and the top-10 Ritz values within 4e-7
    of the exact ones (with every product summed in float64: 1.8e-7 and 5e-7;
    with XLA's float32 GEMV, 2.5e-4 and 3.1e-4; before the breakdown test was
    fixed: 7 false restarts, |VVᵀ − I| = 1).

  Cost: m products plus, per step, one or two Gram-Schmidt passes over the basis
  (memory-bound, two streams of the basis array each). At n = 1.1M, m = 100,
  float32, 2-core CPU under heavy load (load average 17): 282 ms a step,
  against 829 ms for the previous float64-summed reorthogonalization in the
  same process; the blocked sums alone gave 458 against 818 ms in another such
  pair of runs, the bucket growth the rest). Not yet measured on GPU or TPU. Pass ``reorthogonalize=False`` only if
  you accept ghost eigenvalues.

  Sharded params: when ``params_like`` is placed over a mesh (leaves with a
  ``NamedSharding`` over several devices, e.g. by
  ``jaxlab.train.mesh.tree_shardings``; see
  :func:`~jaxlab.spectral.operators.layout_of`), the same recurrence runs as one
  SPMD program over the mesh: the basis is split along its chunk axis over every
  device (a device holds ``1/devices`` of it, never the whole basis), each
  ``v_j`` reaches the product laid out like the params, and the sums are
  partial sums per device plus an all-reduce. The results equal the
  single-device ones to float32 rounding (tests/spectral/sharded_probes_test.py:
  top-5 and SLQ on 1×4 and 2×2 meshes). In a job of several processes every
  process calls it alike.

  Args:
    matvec: symmetric linear map ``pytree -> pytree`` (e.g. :func:`hessian_vp`).
    params_like: pytree with the structure, shapes and dtypes of ``matvec``'s input.
    num_iters: m, the number of Lanczos steps (= matvecs), ``1 <= m <= n``.
    key: PRNG key whose bits seed the starting vector (and restarts), or an int
      seed ``0 <= s < 2**32`` read as ``jax.random.key(s)`` without compiling
      (:func:`jaxlab.spectral.lanczos_host.key_words`).
    reorthogonalize: full reorthogonalization (default True).
    dtype: working precision of the recurrence and basis: ``jnp.float64`` runs
      inside a ``jax.enable_x64`` scope (the caller's global flag is untouched);
      None uses the params' dtype. The matvec itself runs in the params' dtype.
    return_basis: also return the basis V (m, n); for params placed over several
      devices it is split along n over all of them (n must be divisible by
      their number).
    v0: optional starting pytree (normalized internally) instead of a Gaussian.
    host: where the Lanczos algebra runs: True, in NumPy float64 on the host
      (only the operator's product is compiled; see
      :mod:`jaxlab.spectral.lanczos_host`); False, in jitted steps on the params'
      devices (basis in ``dtype``); None (default), the host when every params
      leaf is on one CPU device and the float64 basis, ``(num_iters + 1)·n·8``
      bytes, is below 256 MiB, else the devices. Both give the same values to
      the working precision. On the host the basis is returned in
      ``dtype`` after a float64 recurrence.

  Returns:
    :class:`LanczosResult` ``(alphas, betas, basis)``.

  Raises:
    ValueError: ``num_iters`` outside ``[1, n]``, a bad ``dtype``, ``v0`` not
      shaped like ``params_like``, or ``key`` neither a PRNG key nor an int in
      ``[0, 2**32)`` (a bool or a float included).

  Example:
    >>> res = lanczos(hessian_vp(loss_fn, params, batch), params, 50, key, dtype=jnp.float64)
    >>> ritz = numpy.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))

  References:
    Lanczos, J. Res. Nat. Bur. Standards 45, 1950. Paige, PhD thesis, 1971.
    Golub & Van Loan, Matrix Computations, 4th ed., §10.1. Ghorbani, Krishnan &
    Xiao, "An investigation into neural net optimization via Hessian eigenvalue
    density", ICML 2019, arXiv:1901.10159.
  """
  spec = ops.flat_spec(params_like)
  m = check_iters(num_iters, spec.size)
  dt = resolve_dtype(params_like, dtype)
  if v0 is not None:
    ops.check_like(v0, spec, "v0")
  key = lanczos_host.key_words(key)
  if lanczos_host.choose_host(host, params_like, spec.size, m):
    V, c, _ = lanczos_host.run(tree_product(matvec), spec, key, m, bool(reorthogonalize), dt,
                               v0=v0)
    with ops.x64_scope(dt):
      basis = jax.device_put(V[:m].astype(dt)) if return_basis else None
    return LanczosResult(c.alphas[:m].copy(), c.betas[:m - 1].copy(), basis,
                         float(c.betas[m - 1]))
  layout = ops.layout_of(params_like, "params_like")
  if return_basis and layout is not None and spec.size % layout.mesh.size:
    raise ValueError(
        f"return_basis=True with params_like placed over {layout.mesh.size} devices needs the "
        f"dimension n = {spec.size} divisible by {layout.mesh.size} (the basis (m, n) is split "
        "along n over every device and jax.Array shards are even); allowed: return_basis=False, "
        "e.g. top_eigenpairs for Ritz vectors laid out like the params.")
  with ops.x64_scope(dt):
    V, c, _ = run_lanczos(matvec, spec, key, m, bool(reorthogonalize), dt, v0=v0, layout=layout)
    alphas = np.asarray(c.alphas, np.float64)[:m]
    betas_all = np.asarray(c.betas, np.float64)
    basis = None
    if return_basis:
      basis = (from_chunks(V[:, :m], spec.size) if layout is None
               else _basis_rows(V, m=m, n=spec.size, layout=layout))
  return LanczosResult(alphas, betas_all[: m - 1], basis, float(betas_all[m - 1]))


@functools.partial(jax.jit, static_argnames=("m", "n", "layout"))
def _basis_rows(V, m, n, layout):
  """The first m basis rows as (m, n), split along n over every device of the layout."""
  B = from_chunks(V[:, :m], n)
  return jax.lax.with_sharding_constraint(
      B, jax.sharding.NamedSharding(layout.mesh, jax.sharding.PartitionSpec(None, layout.axes)))
