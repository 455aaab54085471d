"""TrAct: first-layer weights trained with the dynamics of their activations.

Petersen, Borgelt & Ermon 2024, "TrAct: Making First-layer Pre-Activations
Trainable" (NeurIPS; https://arxiv.org/abs/2410.23970). For a first layer
z = X W (rows of X: the b inputs of a batch, or for a convolution the b =
batch × output-positions patches, each of size d), the paper takes a gradient
step on the activations z and fits the weights to it by regularized least
squares; the closed form of the resulting update (the paper's final TrAct
update in §3, in our row-major layout) replaces the kernel gradient by

    ∇W_TrAct = (XᵀX / b + λ I_d)⁻¹ ∇W,    ∇W = Xᵀ ∇z  (the ordinary gradient),

with λ = 0.1 the paper's default. Here it is the backward pass of a
`jax.custom_vjp`: the forward pass, the input gradient and the bias gradient
are the ordinary ones, so any optax optimizer consumes the preconditioned
gradient unchanged (the paper pairs it with SGD and Adam alike). We checked
the normalization (XᵀX divided by the number of rows b, λ added after) and the
b-counting for convolutions (batch × positions) against the authors' released
reference implementation; the paper's own equation numbers are not quoted here.

Limits: λ → 0 approaches the least-squares fit of the activation step, λ → ∞
gives ∇W / λ (plain gradient descent at learning rate η/λ). The preconditioner
is built from the batch's own inputs: the first layer only (its input is data,
not a trained representation), no weight sharing across groups, no dilation.

Cost: one d × d Gram matrix XᵀX (b·d² flops) and a Cholesky solve (d³/3 + d²·F)
per step, d = input features (Dense) or patch size kh·kw·C (Conv). When b < d
the Woodbury identity (XᵀX/b + λI)⁻¹ = (I − Xᵀ(λ b I + X Xᵀ)⁻¹ X)/λ turns it
into a b × b solve. A conv also materializes its b × d patches once in the
backward pass. On CPU the Cholesky and triangular solves are LAPACK calls
(OpenBLAS): on a machine shared with other jobs OpenBLAS's spinning threads
made each solve 10-1000× slower in our runs (0.02 ms → 16 ms for 27 × 27);
set ``OPENBLAS_NUM_THREADS=1`` before Python starts.

flax.nnx: no nnx module is shipped; an nnx layer gets the same gradient by
calling :func:`tract_dense` / :func:`tract_conv` on its own kernel in
`__call__` (the functions are plain JAX).
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
PADDINGS = ("SAME", "VALID")


def check_lam(lam: Any, name: str = "lam") -> float:
  """λ as a float; ValueError unless it is a finite number > 0."""
  if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (
      math.isfinite(lam) and lam > 0):
    raise ValueError(f"{name}={lam!r}; allowed: a finite number > 0 (the paper uses 0.1)")
  return float(lam)


def precondition(x_BxD: jax.Array, g_DxF: jax.Array, lam: float) -> jax.Array:
  """(XᵀX / b + λ I)⁻¹ G for the rows X of a batch (b = x_BxD.shape[0]).

  A d × d Cholesky solve, or the b × b Woodbury form when b < d (chosen from
  the static shapes). Computed in the dtype of `x_BxD`.
  """
  b, d = x_BxD.shape
  g_DxF = g_DxF.astype(x_BxD.dtype)
  if b >= d:
    a_DxD = x_BxD.T @ x_BxD / b + lam * jnp.eye(d, dtype=x_BxD.dtype)
    return _spd_solve(a_DxD, g_DxF)
  a_BxB = x_BxD @ x_BxD.T + (lam * b) * jnp.eye(b, dtype=x_BxD.dtype)
  return (g_DxF - x_BxD.T @ _spd_solve(a_BxB, x_BxD @ g_DxF)) / lam


def _spd_solve(a: jax.Array, g: jax.Array) -> jax.Array:
  """a⁻¹ g for symmetric positive definite a: Cholesky, then two triangular solves."""
  c = jnp.linalg.cholesky(a)
  y = lax.linalg.triangular_solve(c, g, left_side=True, lower=True)
  return lax.linalg.triangular_solve(c, y, left_side=True, lower=True, transpose_a=True)


# ----------------------------------------------------------------------------- dense


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tract_dense(x: jax.Array, kernel: jax.Array, lam: float) -> jax.Array:
  """`x @ kernel` whose kernel gradient is TrAct's (XᵀX/b + λI)⁻¹ Xᵀ ∇z.

  x: (..., d); every leading axis counts into b. kernel: (d, F). `lam` is a
  Python float (static). The input gradient is the ordinary ∇z kernelᵀ.
  """
  return x @ kernel


def _dense_fwd(x, kernel, lam):
  return x @ kernel, (x, kernel)


def _dense_bwd(lam, res, g):
  x, kernel = res
  x_BxD = x.reshape(-1, x.shape[-1])
  g_BxF = g.reshape(-1, g.shape[-1])
  grad_w = precondition(x_BxD, x_BxD.T @ g_BxF, lam)
  return (g @ kernel.T).astype(x.dtype), grad_w.astype(kernel.dtype)


tract_dense.defvjp(_dense_fwd, _dense_bwd)


# ----------------------------------------------------------------------------- conv


def _dimension_numbers(num_spatial: int) -> tuple[str, str, str]:
  """channels-last (NHWC / HWIO), the layout of flax's nn.Conv, for 1-3 spatial axes."""
  s = "DHW"[-num_spatial:] if num_spatial <= 3 else None
  if s is None:
    raise ValueError(f"tract_conv: {num_spatial} spatial axes; allowed: 1, 2 or 3")
  return ("N" + s + "C", s + "IO", "N" + s + "C")


def _conv(x, kernel, strides, padding):
  dn = _dimension_numbers(x.ndim - 2)
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dn)


def patches(x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int],
            padding: str | Sequence[tuple[int, int]]) -> jax.Array:
  """The convolution's input patches as rows: (N · positions, C · prod(kernel_size)).

  Feature order is channel-major (C, *kernel_size), as
  `lax.conv_general_dilated_patches` lays it out.
  """
  dn = _dimension_numbers(x.ndim - 2)
  p = lax.conv_general_dilated_patches(x, tuple(kernel_size), tuple(strides), padding,
                                       dimension_numbers=dn)
  return p.reshape(-1, p.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def tract_conv(x: jax.Array, kernel: jax.Array, lam: float, strides: tuple[int, ...],
               padding: str | tuple[tuple[int, int], ...]) -> jax.Array:
  """A channels-last convolution (as nn.Conv) whose kernel gradient is TrAct's.

  x: (N, *spatial, C); kernel: (*kernel_size, C, F). With X the b × d patch
  matrix (b = N · output positions, d = C · prod(kernel_size)), the kernel
  gradient is (XᵀX/b + λI)⁻¹ ∇W, ∇W the ordinary conv kernel gradient
  flattened to d × F. `lam`, `strides` (tuple) and `padding` ("SAME", "VALID"
  or a tuple of (low, high) pairs) are static.
  """
  return _conv(x, kernel, strides, padding)


def _conv_fwd(x, kernel, lam, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(lam, strides, padding, res, g):
  x, kernel = res
  _, vjp = jax.vjp(lambda a, w: _conv(a, w, strides, padding), x, kernel)
  grad_x, grad_w = vjp(g)
  ks, c, f = kernel.shape[:-2], kernel.shape[-2], kernel.shape[-1]
  n = len(ks)
  x_BxD = patches(x, ks, strides, padding)
  # Kernel (*ks, C, F) -> rows in the patches' channel-major order (C, *ks).
  perm = (n, *range(n), n + 1)
  g_DxF = jnp.transpose(grad_w, perm).reshape(-1, f)
  pre_DxF = precondition(x_BxD, g_DxF, lam)
  inv = tuple(perm.index(i) for i in range(n + 2))
  grad_w = jnp.transpose(pre_DxF.reshape(c, *ks, f), inv)
  return grad_x, grad_w.astype(kernel.dtype)


tract_conv.defvjp(_conv_fwd, _conv_bwd)


def _normalize_padding(padding: Padding, num_spatial: int) -> str | tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    if padding.upper() not in PADDINGS:
      raise ValueError(f"padding={padding!r}; allowed: 'SAME', 'VALID', an int, or one "
                       "(low, high) pair per spatial axis")
    return padding.upper()
  if isinstance(padding, numbers.Integral) and not isinstance(padding, bool) and padding >= 0:
    return ((int(padding), int(padding)),) * num_spatial
  try:
    pairs = tuple((int(p), int(p)) if isinstance(p, numbers.Integral) else
                  (int(p[0]), int(p[1])) for p in padding)
  except (TypeError, IndexError, ValueError):
    pairs = ()
  if len(pairs) != num_spatial or min((v for pr in pairs for v in pr), default=0) < 0:
    raise ValueError(f"padding={padding!r}; allowed: 'SAME', 'VALID', an int >= 0, or "
                     f"{num_spatial} non-negative (low, high) pairs")
  return pairs


# ----------------------------------------------------------------------------- modules


class TrActDense(nn.Module):
  """`nn.Dense` with TrAct's first-layer kernel gradient (Petersen et al. 2024).

  The forward pass, the parameters (`kernel` (d, F), `bias` (F,)), their
  initializers and the input and bias gradients are nn.Dense's; the kernel
  gradient is (XᵀX/b + λI)⁻¹ Xᵀ∇z, X the (b, d) inputs of the batch (all
  leading axes count into b). Use it as the first layer only; any optax
  optimizer then applies. Cost: a d × d solve per step (b × b if b < d).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> layer = TrActDense(16, lam=0.1)
    >>> x = jax.random.normal(jax.random.key(0), (32, 8))
    >>> params = layer.init(jax.random.key(1), x)["params"]
    >>> loss = lambda p: jnp.mean(layer.apply({"params": p}, x) ** 2)
    >>> tx = optax.adam(1e-3)
    >>> updates, _ = tx.update(jax.grad(loss)(params), tx.init(params))
    >>> params = optax.apply_updates(params, updates)
    >>> params["kernel"].shape
    (8, 16)
  """

  features: int
  lam: float = 0.1
  use_bias: bool = True
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lam = check_lam(self.lam)
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                        self.param_dtype)
    y = tract_dense(x, kernel, lam)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y


class TrActConv(nn.Module):
  """`nn.Conv` (channels-last, no groups or dilation) with TrAct's kernel gradient.

  Parameters `kernel` (*kernel_size, C, F) and `bias` (F,) as nn.Conv's, and
  the same forward pass; the kernel gradient is (XᵀX/b + λI)⁻¹ ∇W with X the
  (b, d) patch matrix, b = batch × output positions, d = C · prod(kernel_size)
  (the paper's counting). Cost: a d × d solve per step plus the b × d patches.
  """

  features: int
  kernel_size: Sequence[int]
  lam: float = 0.1
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lam = check_lam(self.lam)
    ks = ((self.kernel_size,) if isinstance(self.kernel_size, int)
          else tuple(self.kernel_size))
    n = len(ks)
    if not 1 <= n <= 3 or min(ks) < 1:
      raise ValueError(f"kernel_size={self.kernel_size!r}; allowed: 1-3 positive ints")
    unbatched = x.ndim == n + 1  # as nn.Conv allows
    if unbatched:
      x = x[None]
    if x.ndim != n + 2:
      raise ValueError(f"TrActConv input of shape {x.shape}; allowed: (N, *spatial, C) with "
                       f"{n} spatial axes (kernel_size={ks})")
    strides = ((self.strides,) * n if isinstance(self.strides, int) else tuple(self.strides))
    if len(strides) != n or min(strides) < 1:
      raise ValueError(f"strides={self.strides!r}; allowed: an int >= 1 or {n} of them")
    padding = _normalize_padding(self.padding, n)
    kernel = self.param("kernel", self.kernel_init, (*ks, x.shape[-1], self.features),
                        self.param_dtype)
    y = tract_conv(x, kernel, lam, strides, padding)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y[0] if unbatched else y
