"""Analytic NNGP and NTK of fully connected networks in NTK parametrization.

Two families share one layer recursion:

* `fc_kernels`: neural-tangents' convention (`stax.serial(Dense, act) x depth,
  Dense` with `parameterization="ntk"`): `depth` hidden layers, each a Dense
  then the nonlinearity, then a Dense readout; every Dense is

      y = sigma_w / sqrt(fan_in) * x W + sigma_b * b,   W, b ~ N(0, 1), all trained,

  with the same sigma_w, sigma_b everywhere. `jaxlab.models.mlp(...,
  parametrization="ntk", weight_std=sigma_w, bias_std=sigma_b)` is this network.
* `two_layer_kernels`: the two-layer ReLU net of the permutation study
  (Giapitzakis, Back de Luca & Fountoulakis 2025, arXiv:2502.16763),

      h_r(x) = sigma_w * <w_r, x> / sqrt(d) + sigma_b * b_r          (r = 1..n)
      f_o(x) = sigma_a / sqrt(n) * sum_r a_{r,o} relu(h_r(x))        (o = 1..O)

  with w, b, a ~ N(0, 1), all trained (Jacot et al. 2018; Lee et al. 2019,
  Eq. 1). It differs from neural-tangents' convention in its readout: its own
  scale sigma_a and no readout bias. It equals `fc_kernels(depth=1)` when
  sigma_b = 0 and sigma_a = sigma_w; otherwise its behaviour is kept as it was.
  The paper's body could not be read from this workplace, so the scales are
  arguments (defaults 1) rather than the paper's constants.

The recursion (Jacot et al. 2018, Prop. 1 and Thm 1; Lee et al. 2018,
arXiv:1711.00165), with u, v ~ N(0, [[S(x,x), S(x,x')], [S(x,x'), S(x',x')]]):

    S^1(x, x')     = sigma_w^2 <x, x'> / d + sigma_b^2,          T^1 = S^1
    S^{l+1}(x, x') = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2                     (NNGP)
    T^{l+1}(x, x') = S^{l+1}(x, x') + sigma_w^2 E[phi'(u) phi'(v)] T^l(x, x')   (NTK)

and the Gaussian expectations in closed form:

* relu, the arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009, J_1 and
  J_0), cos(theta) = S(x,x') / sqrt(S(x,x) S(x',x')):
    E[phi phi]   = sqrt(S(x,x) S(x',x')) (sin theta + (pi - theta) cos theta) / (2 pi)
    E[phi' phi'] = (pi - theta) / (2 pi)
* erf (Williams 1997, the arcsin kernel):
    E[phi phi]   = 2/pi arcsin(2 S(x,x') / sqrt((1 + 2 S(x,x)) (1 + 2 S(x',x'))))
    E[phi' phi'] = 4/pi / sqrt((1 + 2 S(x,x)) (1 + 2 S(x',x')) - 4 S(x,x')^2)
  (phi' = 2/sqrt(pi) exp(-u^2): the Gaussian integral of det(I + 2 S)^(-1/2)).
* identity: E[phi phi] = S(x, x'), E[phi' phi'] = 1.

Identical inputs (the diagonal of a symmetric kernel, or any rows of x1 and x2
that are equal bit for bit) take the diagonal closed forms instead, theta = 0
exactly: E[relu relu] = S/2, E[relu' relu'] = 1/2, E[erf erf] =
2/pi arcsin(2S / (1 + 2S)), E[erf' erf'] = 4/pi / sqrt(1 + 4S). Computing them
through arccos(S(x,x') / sqrt(S(x,x) S(x,x))) instead puts theta at
sqrt(rounding error) ~ 5e-4 (float32), a relative error of theta/pi in the
ReLU NTK (measured 7.8e-5 in float32, 3.4e-9 in float64 before this form).

Each output is an independent copy: the multi-output kernels are K (x) I_O and
Theta (x) I_O.
"""
from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = ("relu", "erf", "identity")


class Kernels(NamedTuple):
  """NNGP `nngp` and NTK `ntk`, each (N1, N2) (pairwise) or (N,) (elementwise)."""
  nngp: jax.Array
  ntk: jax.Array


def _check_scales(**scales: float) -> None:
  for name, value in scales.items():
    if not (np.isfinite(value) and value >= 0):
      raise ValueError(f"{name}={value!r}: must be a finite number >= 0")


def precision_scope(dtype) -> contextlib.AbstractContextManager:
  """A `jax.enable_x64(True)` scope when `dtype` is float64, else a no-op scope."""
  if dtype is not None and jnp.dtype(dtype) == jnp.float64:
    return jax.enable_x64(True)
  return contextlib.nullcontext()


def _moments(activation, s12, s11, s22):
  """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for (u, v) ~ N(0, [[s11, s12], [s12, s22]])."""
  if activation == "identity":
    return s12, jnp.ones_like(s12)
  if activation == "relu":
    norms = jnp.sqrt(s11 * s22)
    # Zero norms only occur with sigma_b = 0 and x = 0: theta is then irrelevant (norms = 0).
    cos = jnp.clip(s12 / jnp.where(norms > 0, norms, 1.0), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
    return (norms * (sin + (jnp.pi - theta) * cos) / (2 * jnp.pi),
            (jnp.pi - theta) / (2 * jnp.pi))
  if activation == "erf":
    a11, a22 = 1.0 + 2.0 * s11, 1.0 + 2.0 * s22
    rho = jnp.clip(2.0 * s12 / jnp.sqrt(a11 * a22), -1.0, 1.0)
    # a11 a22 - 4 s12^2 >= 1 + 2 s11 + 2 s22 (Cauchy-Schwarz): never near zero.
    return (2 / jnp.pi) * jnp.arcsin(rho), (4 / jnp.pi) / jnp.sqrt(a11 * a22 - 4.0 * s12 * s12)
  raise ValueError(f"activation={activation!r}; allowed: {ACTIVATIONS}")


def _diag_moments(activation, q):
  """`_moments` at u = v ~ N(0, q) in closed form (theta = 0 exactly)."""
  if activation == "identity":
    return q, jnp.ones_like(q)
  if activation == "relu":
    return q / 2, jnp.full_like(q, 0.5)
  if activation == "erf":
    return (2 / jnp.pi) * jnp.arcsin(2.0 * q / (1.0 + 2.0 * q)), (4 / jnp.pi) / jnp.sqrt(1.0 + 4.0 * q)
  raise ValueError(f"activation={activation!r}; allowed: {ACTIVATIONS}")


def _recursion(s12, s11, s22, same, activation, layers):
  """Kernels after the Dense layers `layers` = ((sigma_w, sigma_b), ...), phi between them.

  s12, s11, s22: <x, x'> / d, |x|^2 / d, |x'|^2 / d (broadcasting against each
  other); same: True where x and x' are identical (those entries take the
  diagonal recursion, so theta = 0 there exactly).
  """
  (sw, sb), rest = layers[0], layers[1:]
  s12, s11, s22 = (sw**2 * s + sb**2 for s in (s12, s11, s22))
  s12 = jnp.where(same, s11, s12)
  t12, t11, t22 = s12, s11, s22
  for sw, sb in rest:
    e12, d12 = _moments(activation, s12, s11, s22)
    (e11, d11), (e22, d22) = _diag_moments(activation, s11), _diag_moments(activation, s22)
    s12, s11, s22 = sw**2 * e12 + sb**2, sw**2 * e11 + sb**2, sw**2 * e22 + sb**2
    t12, t11, t22 = s12 + sw**2 * d12 * t12, s11 + sw**2 * d11 * t11, s22 + sw**2 * d22 * t22
    s12, t12 = jnp.where(same, s11, s12), jnp.where(same, t11, t12)
  return Kernels(nngp=s12, ntk=t12)


def _mix(h):
  """murmur3's 32-bit finalizer: every input bit flips about half the output bits."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _fingerprint(x):
  """A 32-bit fingerprint of each row's bit pattern; equal rows get equal ones
  (unsigned sums wrap exactly, so the reduction order does not matter)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(x.shape[0], -1)
  pos = _mix(jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(0x9E3779B9))
  return jnp.sum(_mix(bits ^ pos[None, :]), axis=1, dtype=jnp.uint32)


def _same_rows(x1, x2):
  """(N1, N2) bool, True exactly where x1[i] == x2[j] (no false positives).

  Rows with equal fingerprints are checked against one representative, the
  first row of x2 with that fingerprint; O(N1 N2 + (N1 + N2) d), where a
  direct comparison of all pairs costs O(N1 N2 d) (10x the kernel itself). A
  fingerprint collision can only hide a match (that entry then goes through
  arccos, as for distinct inputs).
  """
  eq = _fingerprint(x1)[:, None] == _fingerprint(x2)[None, :]
  first = jnp.argmax(eq, axis=1)  # per x1 row: the first x2 row with its fingerprint
  rep2 = first[jnp.argmax(eq, axis=0)]  # per x2 row: the same representative
  ok1 = jnp.all(x1 == x2[first], axis=1)
  ok2 = jnp.all(x2 == x2[rep2], axis=1)
  return eq & ok1[:, None] & ok2[None, :]


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _kernels(x1, x2, activation, layers, pairwise, symmetric):
  d = x1.shape[1]
  s11 = jnp.sum(x1 * x1, axis=1) / d
  s22 = s11 if symmetric else jnp.sum(x2 * x2, axis=1) / d
  if not pairwise:
    same = jnp.ones(x1.shape[:1], bool) if symmetric else jnp.all(x1 == x2, axis=1)
    return _recursion(jnp.sum(x1 * x2, axis=1) / d, s11, s22, same, activation, layers)
  if symmetric:
    same = jnp.eye(x1.shape[0], dtype=bool)
  else:
    same = _same_rows(x1, x2)
  return _recursion((x1 @ x2.T) / d, s11[:, None], s22[None, :], same, activation, layers)


def _prepare(x1, x2, pairwise, dtype):
  x1 = x1 if isinstance(x1, jax.Array) else np.asarray(x1)
  symmetric = x2 is None or x2 is x1
  x2 = x1 if x2 is None else (x2 if isinstance(x2, jax.Array) else np.asarray(x2))
  if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
    raise ValueError(f"x1, x2: need shapes (N1, d), (N2, d); got {x1.shape}, {x2.shape}")
  if not pairwise and x1.shape[0] != x2.shape[0]:
    raise ValueError(f"pairwise=False needs len(x1) == len(x2); got {x1.shape[0]}, {x2.shape[0]}")
  if dtype is None:
    dtype = x1.dtype if jnp.issubdtype(x1.dtype, jnp.floating) else jnp.float32
  return x1, x2, symmetric, dtype


def fc_kernels(x1: jax.Array, x2: jax.Array | None = None, *, depth: int,
               activation: str = "relu", weight_std: float = 1.0, bias_std: float = 0.0,
               pairwise: bool = True, dtype=None) -> Kernels:
  """Analytic NNGP and NTK of a fully connected net of any depth (neural-tangents' convention).

  The net: `depth` hidden layers, each Dense then phi, then a Dense readout;
  every Dense is y = sigma_w / sqrt(fan_in) x W + sigma_b b with W, b ~ N(0, 1)
  (NTK parametrization), the same sigma_w, sigma_b in every layer -- as
  `stax.serial(*[Dense(sigma_w, sigma_b), phi] * depth, Dense(sigma_w, sigma_b))`
  in neural-tangents, and `jaxlab.models.mlp(d, (n,) * depth, O,
  parametrization="ntk", weight_std=sigma_w, bias_std=sigma_b)` in jaxlab.

  Math (Jacot et al. 2018, Prop. 1 and Thm 1), l = 1..depth:
    S^1 = T^1 = sigma_w^2 x x'^T / d + sigma_b^2;
    S^{l+1} = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2;
    T^{l+1} = S^{l+1} + sigma_w^2 E[phi'(u) phi'(v)] T^l;
    NNGP = S^{depth+1}, NTK = T^{depth+1};
  the expectations in closed form: arc-cosine kernels J_1, J_0 for relu (Cho &
  Saul 2009), the arcsin kernel for erf (Williams 1997); see the module
  docstring. Identical inputs (the diagonal when x2 is None, equal rows
  otherwise) use the diagonal closed forms, theta = 0 exactly.

  Args:
    x1: inputs, shape (N1, d).
    x2: inputs, shape (N2, d); None (or x1 itself) -> the symmetric kernel of x1.
    depth: number of hidden layers, an int >= 0 (0: the linear kernel of one Dense).
    activation: "relu", "erf" or "identity".
    weight_std, bias_std: sigma_w, sigma_b of every Dense.
    pairwise: True -> all pairs, (N1, N2) matrices; False -> the pairs
      (x1[i], x2[i]), (N,) vectors (needs N1 == N2; with x2 None, the diagonal).
    dtype: computation dtype; `jnp.float64` computes inside a
      `jax.enable_x64` scope (no global flip). Default: x1's float dtype.

  Returns:
    `Kernels(nngp, ntk)`.

  Example:
    >>> k = fc_kernels(jnp.eye(3), depth=3, activation="erf", bias_std=0.1)
    >>> k.ntk.shape
    (3, 3)

  References:
    Jacot, Gabriel, Hongler 2018, arXiv:1806.07572; Lee et al. 2018,
    arXiv:1711.00165; Cho & Saul 2009, "Kernel Methods for Deep Learning";
    Williams 1997, "Computing with Infinite Networks"; Novak et al. 2020,
    arXiv:1912.02803 (neural-tangents, whose convention this follows).
  """
  if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 0:
    raise ValueError(f"depth={depth!r}: must be an int >= 0")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r}; allowed: {ACTIVATIONS}")
  _check_scales(weight_std=weight_std, bias_std=bias_std)
  x1, x2, symmetric, dtype = _prepare(x1, x2, pairwise, dtype)
  layers = ((float(weight_std), float(bias_std)),) * (int(depth) + 1)
  with precision_scope(dtype):
    return _kernels(jnp.asarray(x1, dtype), jnp.asarray(x2, dtype), activation, layers,
                    pairwise, symmetric)


def two_layer_kernels(x1: jax.Array, x2: jax.Array | None = None, *,
                      weight_std: float = 1.0, bias_std: float = 1.0,
                      output_std: float = 1.0, pairwise: bool = True,
                      dtype=None) -> Kernels:
  """Analytic NNGP and NTK of the two-layer ReLU net in NTK parametrization.

  Math:
    Sigma = sigma_w^2 x x'^T / d + sigma_b^2;  theta = arccos(Sigma / sqrt(diag diag'));
    K = sigma_a^2/(2 pi) sqrt(Sigma(x,x) Sigma(x',x')) (sin theta + (pi - theta) cos theta);
    Theta = K + Sigma * sigma_a^2 (pi - theta) / (2 pi)
    (arc-cosine kernels of degree 1 and 0, Cho & Saul 2009; NTK of Jacot et
    al. 2018, Thm 1, for one hidden layer with trainable bias). The readout has
    its own scale sigma_a and no bias, unlike neural-tangents' convention of
    `fc_kernels`; the two agree (depth=1) when sigma_b = 0 and sigma_a = sigma_w.
    theta = 0 exactly on identical inputs (see `fc_kernels`).

  Args:
    x1: inputs, shape (N1, d).
    x2: inputs, shape (N2, d); defaults to x1.
    weight_std, bias_std, output_std: sigma_w, sigma_b, sigma_a of the net.
    pairwise: True -> all pairs, (N1, N2) matrices; False -> the pairs
      (x1[i], x2[i]), (N,) vectors (needs N1 == N2).
    dtype: computation dtype; `jnp.float64` computes inside a
      `jax.enable_x64` scope (no global flip). Default: x1's float dtype.

  Returns:
    `Kernels(nngp, ntk)`.

  Example:
    >>> x = jnp.eye(3)
    >>> k = two_layer_kernels(x, dtype=jnp.float64)
    >>> k.ntk.shape
    (3, 3)

  References:
    Jacot, Gabriel, Hongler 2018, arXiv:1806.07572; Lee et al. 2019,
    arXiv:1902.06720; Giapitzakis, Back de Luca, Fountoulakis 2025,
    arXiv:2502.16763 (the network whose kernel this is).
  """
  _check_scales(weight_std=weight_std, bias_std=bias_std, output_std=output_std)
  x1, x2, symmetric, dtype = _prepare(x1, x2, pairwise, dtype)
  layers = ((float(weight_std), float(bias_std)), (float(output_std), 0.0))
  with precision_scope(dtype):
    return _kernels(jnp.asarray(x1, dtype), jnp.asarray(x2, dtype), "relu", layers,
                    pairwise, symmetric)


def two_layer_nngp(x1, x2=None, **kwargs) -> jax.Array:
  """The NNGP K of `two_layer_kernels` alone."""
  return two_layer_kernels(x1, x2, **kwargs).nngp


def two_layer_ntk(x1, x2=None, **kwargs) -> jax.Array:
  """The NTK Theta of `two_layer_kernels` alone."""
  return two_layer_kernels(x1, x2, **kwargs).ntk


def kernels_from_products(sq1, sq2, dot, dim: int, *, weight_std: float = 1.0,
                          bias_std: float = 1.0, output_std: float = 1.0) -> Kernels:
  """The two-layer kernels from |x|^2, |x'|^2, <x, x'> and d (broadcasting arrays).

  Lets closed-form analyses evaluate K and Theta at inputs that are described
  only by their norms and overlap (e.g. binary vectors with s ones). x = x'
  exactly when |x|^2 = |x'|^2 = <x, x'> (Cauchy-Schwarz equality); those
  entries take the diagonal closed form.
  """
  _check_scales(weight_std=weight_std, bias_std=bias_std, output_std=output_std)
  sq1, sq2, dot = (jnp.asarray(v) / dim for v in (sq1, sq2, dot))
  same = (sq1 == sq2) & (dot == sq1)
  layers = ((float(weight_std), float(bias_std)), (float(output_std), 0.0))
  return _recursion(dot, sq1, sq2, same, "relu", layers)
