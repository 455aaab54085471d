"""Lanczos algebra in NumPy float64 on the host; only the operator product is compiled.

On a CPU backend the host is the device: the recurrence, the reorthogonalization
and the Ritz vectors cost the same in NumPy as in XLA, but NumPy compiles
nothing. A cold ``top_eigenpairs`` on the device path compiled five programs
(start vector, Lanczos step, Ritz vectors, residual norms, beside the product);
the step alone took longer to compile than the whole run of 20 products. Here
the product (the operator's own jitted program) is the only compile.

The recurrence is the device path's (:func:`jaxlab.spectral.lanczos._update`,
Paige's ordering with classical Gram-Schmidt twice when the first pass
cancelled, the same breakdown test and restart), in float64 whatever the
working dtype: the start vector is the same hashed uniform / Rademacher vector
of the key's bits, bit for bit, so both paths give the same Ritz values to the
working precision.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxlab.spectral import operators as ops

# the host path is chosen by default only while its float64 basis stays below this
HOST_BASIS_BYTES = 1 << 28  # 256 MiB
_BREAKDOWN = 2.0  # as jaxlab.spectral.lanczos._BREAKDOWN (see its _update)


class HostCarry(NamedTuple):
  """The host recurrence's coefficients (float64), zero beyond the steps done."""

  alphas: np.ndarray  # (num_iters,)
  betas: np.ndarray  # (num_iters,): betas[j] = β_{j+1}, 0 marks a breakdown (restart)


def choose_host(host: Any, params_like: Any, n: int, num_iters: int) -> bool:
  """Whether the Lanczos algebra runs in NumPy (True) or in jitted steps (False).

  ``host=None`` (auto): NumPy when every leaf of ``params_like`` lies on one CPU
  device (NumPy leaves: when JAX's default backend is the CPU) and the float64
  basis, ``(num_iters + 1) · n · 8`` bytes, is below 256 MiB; else the device path
  (accelerators, sharded or replicated params, large bases).
  """
  if host is not None and not isinstance(host, bool):
    raise ValueError(f"host is {host!r}; allowed: None (automatic: NumPy on the host for params "
                     "on one CPU device and a float64 basis below 256 MiB), True or False.")
  layout = ops.layout_of(params_like, "params_like")
  if layout is not None:  # placed over a mesh, or several processes: the basis stays split
    if host:
      raise ValueError(f"host is True but params_like is placed over {layout.mesh.size} devices "
                       f"(or the job has {jax.process_count()} processes), where the Lanczos "
                       "basis stays split over the devices; allowed: None or False.")
    return False
  if host is not None:
    return host
  if (int(num_iters) + 1) * int(n) * 8 >= HOST_BASIS_BYTES:
    return False
  return all(ops.on_one_cpu_device(x) for x in jax.tree_util.tree_leaves(params_like))


# ---------------------------------------------------------------------------
# The device path's hashed start vectors, in NumPy uint32 (wrapping) arithmetic.


def _mix(x: np.ndarray) -> np.ndarray:
  """lowbias32, as :func:`jaxlab.spectral.lanczos._mix`."""
  x = np.asarray(x, np.uint32)
  with np.errstate(over="ignore"):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def key_words(key: Any, name: str = "key") -> Any:
  """``key`` as given, or for an int seed s the words of ``jax.random.key(s)``.

  JAX's default threefry2x32 key of a seed ``0 <= s < 2**32`` has the words
  ``[0, s]`` (tested); they are built here in NumPy, where ``jax.random.key(s)``
  compiles its seeding program on first use (0.045 s of CPU time on a 2-core
  CPU, a tenth of a quick cold ``top_eigenpairs``). Both Lanczos paths read a
  key only through its words, so an int seed and ``jax.random.key(s)`` give the
  same start vector, bit for bit; :func:`~jaxlab.spectral.trace.trace` hands the
  words to ``jax.random`` as a raw (``jax.random.PRNGKey``-style) key, whose
  draws are those of the typed key with the same words.

  Anything else raises ValueError naming ``name``, before anything compiles:
  a bool, a float, a negative or too large int, an array that is neither a
  typed PRNG key nor the uint32 words of a raw one (a 0-d int array included:
  its words would not be those of ``key(s)``), or no array at all.
  """
  ok = "a PRNG key (jax.random.key(s), or the uint32 words of jax.random.PRNGKey(s)) or an " \
      "int seed 0 <= s < 2**32"
  if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
    if not 0 <= int(key) < 2 ** 32:
      raise ValueError(f"{name} is {key!r}; allowed: {ok}.")
    return np.array([0, int(key)], np.uint32)
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return key
  if dtype is None or np.dtype(dtype) != np.uint32 or np.ndim(key) < 1:
    raise ValueError(f"{name} is {key!r}; allowed: {ok}.")
  return key


def _key_seed(key: Any, salt: int) -> np.ndarray:
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = np.ravel(np.asarray(key)).astype(np.uint32)
  with np.errstate(over="ignore"):
    s = _mix(np.uint32(salt) + np.uint32(0x9E3779B9))
  for w in words:
    s = _mix(s ^ w)
  return s


def _uniform(seed: np.ndarray, n: int) -> np.ndarray:
  """As :func:`jaxlab.spectral.lanczos._uniform` in float32: uniform in (−1, 1), none zero."""
  with np.errstate(over="ignore"):
    x = _mix(np.arange(n, dtype=np.uint32) * np.uint32(0x9E3779B9) + seed)
  x = _mix(x ^ seed)
  u = (x >> np.uint32(8)).astype(np.float32) + np.float32(0.5)
  return u * np.float32(2.0 ** -23) - np.float32(1.0)


def _start(key, salt, v0, spec: ops.FlatSpec, dist: str) -> tuple[np.ndarray, np.ndarray]:
  """(x0 float64, the restart seed), as the device path's ``_start_vector``."""
  s = _key_seed(key, salt)
  if v0 is not None:
    return ravel(v0), s
  u = _uniform(_mix(s ^ np.uint32(1)), spec.size)
  x0 = np.where(u < 0, -1.0, 1.0) if dist == "rademacher" else u.astype(np.float64)
  return x0, _mix(s ^ np.uint32(2))


# ---------------------------------------------------------------------------
# Flat float64 vectors <-> pytrees of the params' dtypes (NumPy: nothing compiled).


def ravel(tree: Any) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in jax.tree_util.tree_leaves(tree)])


def unravel(x: np.ndarray, spec: ops.FlatSpec) -> Any:
  """Leaves in the params' dtypes, as NumPy arrays (jitted code takes them as arguments)."""
  out, i = [], 0
  for shape, dt in zip(spec.shapes, spec.dtypes, strict=True):
    size = int(np.prod(shape, dtype=np.int64))
    out.append(x[i:i + size].astype(dt).reshape(shape))
    i += size
  return jax.tree_util.tree_unflatten(spec.treedef, out)


# Sums by np.einsum, not np.dot / @: einsum's own single-threaded loops, where NumPy's
# OpenBLAS spins a thread team per call. On the shared 2-core CPU under load (load average
# ~20) a dot of 99k float64 entries took 35 ms wall (7.5 ms CPU) through BLAS against
# 0.035 ms through einsum, and a (21, 99k) matrix-vector product 41 against 5 ms.


def _dot(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.einsum("i,i->", a, b))


def _norm(a: np.ndarray) -> float:
  return float(np.sqrt(_dot(a, a)))


def _gs(V: np.ndarray, w: np.ndarray) -> np.ndarray:
  """One classical Gram-Schmidt pass ``w − Vᵀ(V w)`` against the rows of V."""
  return w - np.einsum("i,ij->j", np.einsum("ij,j->i", V, w), V)


def run(product: Callable, spec: ops.FlatSpec, key, num_iters: int, reorth: bool, dtype: Any,
        v0: Any = None, dist: str = "uniform", salt: int = 0,
        stop: Callable | None = None, layout: Any = None,
        quick: bool = False) -> tuple[np.ndarray, HostCarry, int]:
  """Lanczos on the host: the arguments and the stop rule of ``run_lanczos``
  (``product`` is its ``tree_product(matvec)``; a ``layout`` is ignored, the host holds
  the whole basis).

  Per step j (Golub & Van Loan Alg. 10.1.1, Paige's ordering):
  ``w = A v_j − β_{j−1} v_{j−1}``, ``α_j = ⟨w, v_j⟩``, ``w ← w − α_j v_j``, then
  (``reorth``) classical Gram-Schmidt against ``v_0..v_j``, a second pass when the
  first lost more than 1/√2 of the norm (Parlett §6.9), ``β_j = ‖w‖``. A breakdown
  is ``β_j ≤ 2 eps (‖A v_j‖ + |α_j| + β_{j−1})`` with eps of ``dtype`` (the
  working dtype the device path would use: the product's rounding, not float64's,
  is what the test must tell apart from a genuine residual); then β_j = 0 is
  recorded and the next vector is the device path's hashed restart vector,
  orthogonalized twice. The product sees each ``v_j`` rounded to the params'
  dtypes; everything else is float64 (NumPy's BLAS sums of n products err by
  about n·eps₆₄ relative, far below float32's resolution). ``quick``: a single-batch
  operator's products come from its quick-to-compile program
  (:func:`jaxlab.spectral.operators.quick_call`).

  Returns the basis (num_iters + 1, n) float64 (rows past the steps done are
  zero), the coefficients and the number of steps done.
  """
  n, m = spec.size, int(num_iters)
  product = _quick(product) if quick else product
  eps = float(np.finfo(np.dtype(dtype)).eps)
  x0, seed = _start(key, salt, v0, spec, dist)
  V = np.zeros((m + 1, n))
  V[0] = x0 / _norm(x0)
  alphas, betas = np.zeros(m), np.zeros(m)
  beta_prev = 0.0
  for j in range(m):
    av = ravel(product(unravel(V[j], spec)))
    w = av - beta_prev * V[j - 1] if j > 0 else av.copy()
    alpha = _dot(w, V[j])
    w -= alpha * V[j]
    if reorth:
      w1 = _gs(V[:j + 1], w)
      w = _gs(V[:j + 1], w1) if _norm(w1) < 0.7071 * _norm(w) else w1
    beta = _norm(w)
    broke = beta <= _BREAKDOWN * eps * (_norm(av) + abs(alpha) + beta_prev)
    V[j + 1] = w / (beta if beta > 0 else 1.0)
    beta_prev = 0.0 if broke else beta
    alphas[j], betas[j] = alpha, beta_prev
    if broke and j + 1 < m:  # an invariant subspace: continue from a vector orthogonal to it
      with np.errstate(over="ignore"):
        r = _uniform(_mix(seed ^ _mix(np.uint32(j))), n).astype(np.float64)
      V[j + 1] = 0.0
      r = _gs(V[:j + 1], _gs(V[:j + 1], r))
      V[j + 1] = r / _norm(r)
    if stop is not None and j + 1 < m and stop(HostCarry(alphas, betas), j + 1):
      return V, HostCarry(alphas, betas), j + 1
  return V, HostCarry(alphas, betas), m


def _quick(product: Callable) -> Callable:
  """A single-batch operator's quick-to-compile product; any other product as it is."""
  return getattr(product, "quick", product)


def ritz_pairs(product: Callable, V: np.ndarray, Uk: np.ndarray, theta: np.ndarray,
               spec: ops.FlatSpec, quick: bool = False) -> tuple[Any, np.ndarray]:
  """Unit Ritz vectors ``y_i = V u_i`` and their explicit residuals ``‖A y_i − θ_i y_i‖``.

  V: (m, n) float64 basis rows; Uk: (k, m) the selected eigenvectors of T; theta: (k,).
  Each ``y_i`` is normalized in float64 and rounded to the params' dtypes; the
  residual is formed with that rounded vector (the one returned and the one a
  user would apply) and summed in float64, as on the device path. Returns the
  vectors stacked as a pytree (leading axis k, JAX arrays) and the residuals.
  """
  product = _quick(product) if quick else product
  Y = np.einsum("km,mn->kn", np.asarray(Uk, np.float64), V)
  Y /= np.sqrt(np.einsum("kn,kn->k", Y, Y))[:, None]
  ys = [unravel(y, spec) for y in Y]
  resid = np.array([_norm(ravel(product(y)) - t * ravel(y))
                    for y, t in zip(ys, np.asarray(theta, np.float64), strict=True)])
  # device_put, not jnp.asarray: on a NumPy array the latter compiles a program per shape
  return jax.tree.map(lambda *a: jax.device_put(np.stack(a)), *ys), resid
