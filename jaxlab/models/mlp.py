"""A multilayer perceptron with a choice of parametrization.

Three parametrizations, written as (init std, forward multiplier) per layer for
a layer with fan-in f and fan-out n (σ_w = √2 for ReLU, 1 otherwise; the
readout uses σ_w = 1). All three give O(1) pre-activations at initialization;
they differ in how the output and the updates scale with width:

| layer   | standard          | ntk (Jacot et al. 2018) | mup (Yang & Hu 2021, SGD form) |
|---------|-------------------|-------------------------|--------------------------------|
| input   | σ_w/√f, ×1        | 1, ×σ_w/√f              | σ_w/√(f·n), ×√n                |
| hidden  | σ_w/√f, ×1        | 1, ×σ_w/√f              | σ_w/√f, ×1                     |
| readout | 1/√f, ×1          | 1, ×1/√f                | 1/√f, ×1/√f                    |

The mup column is Table 3 of "Tensor Programs V" (input LR ∝ n, output init
∝ 1/f², output LR ∝ 1/f) moved into multipliers by the SGD abc-symmetry
(a, b, c) → (a + θ, b − θ, c − 2θ), so that one global SGD learning rate is
correct at every width. Biases start at zero with multiplier 1, except under
mup, where the biases of the input and hidden layers (Table 3: SGD LR ∝ their
fan-out n) get the multiplier √n by the same symmetry. Adam's symmetry is
(a + θ, b − θ, c − θ): under Adam these multipliers need per-layer learning
rates (input and readout weights and the √n biases ∝ 1/√n, hidden weights
∝ 1/n, readout bias 1), which the optimizer must apply.

With `normalize=True` a LayerNorm (scale and offset) is applied to every
hidden pre-activation, before the nonlinearity.

Infinite-width kernels. `weight_std=σ_w, bias_std=σ_b` (standard and ntk only)
switch to neural-tangents' convention: σ_w replaces the gain in every layer,
the readout included, and biases start at N(0, 1) × σ_b (ntk: multiplier σ_b;
standard: init std σ_b, multiplier 1). `mlp(d, (n,) * L, O, parametrization=
"ntk", weight_std=σ_w, bias_std=σ_b)` is then `stax.serial(*[Dense(σ_w, σ_b,
parameterization="ntk"), act] * L, Dense(σ_w, σ_b))`, and its empirical NTK
converges, like 1/√n, to `jaxlab.ntk.fc_kernels(depth=L, weight_std=σ_w,
bias_std=σ_b)`. The default (both None) is a different net with the same
function at init as "standard": hidden gain √2 (ReLU) but readout gain 1, and
biases that start at zero yet train with multiplier 1, so its NNGP has no bias
term while every bias adds 1 to its NTK. Its limit is therefore no
`fc_kernels` (nor `two_layer_ntk`, the permutation study's net with a N(0, 1)
hidden bias and no readout bias): measured at width 4,096 its empirical NTK is
0.65 (one hidden layer) and 1.23 (two) away, relative, from `two_layer_ntk`,
and 0.73 and 0.51 from `fc_kernels(weight_std=√2, bias_std=0)` (six Gaussian
inputs, d = 5).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlab.models import precision, tract

PARAMETRIZATIONS = ("standard", "ntk", "mup")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


class ScaledDense(nn.Module):
  """y = multiplier · x @ kernel + bias_multiplier · bias.

  kernel ~ N(0, init_std²), bias ~ N(0, bias_init_std²) (zero by default).
  `tract_lam=λ`: the kernel gradient is TrAct's (XᵀX/b + λI)⁻¹ times the
  ordinary one (`jaxlab.models.tract`, Petersen et al. 2024); None: plain.
  """

  features: int
  init_std: float
  multiplier: float = 1.0
  use_bias: bool = True
  bias_multiplier: float = 1.0
  bias_init_std: float = 0.0
  tract_lam: float | None = None
  dtype: Any = None  # compute dtype; None: the promoted dtype of x and the float32 kernel

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                        (x.shape[-1], self.features))
    if self.tract_lam is not None:
      # TrAct's Cholesky solve stays float32 (bfloat16 would keep 8 bits of
      # (XᵀX/b + λI)⁻¹); the product is cast to the compute dtype after.
      xw = tract.tract_dense(x.astype(jnp.promote_types(x.dtype, jnp.float32)), kernel,
                             self.tract_lam)
      xw = xw if self.dtype is None else xw.astype(self.dtype)
    elif self.dtype is None:
      xw = x @ kernel
    else:  # params are float32 masters: cast them (and x) for the product
      xw = x.astype(self.dtype) @ kernel.astype(self.dtype)
    y = self.multiplier * xw
    if self.use_bias:
      init = (nn.initializers.normal(self.bias_init_std) if self.bias_init_std > 0
              else nn.initializers.zeros)
      bias = self.param("bias", init, (self.features,))
      bias = bias if self.dtype is None else bias.astype(self.dtype)
      y = y + self.bias_multiplier * bias[None, :]
    return y


def bias_multiplier(parametrization: str, fan_out: int, kind: str) -> float:
  """√fan_out for the mup input/hidden biases (SGD LR ∝ fan_out moved into the multiplier), else 1."""
  return math.sqrt(fan_out) if parametrization == "mup" and kind != "readout" else 1.0


def layer_scales(parametrization: str, fan_in: int, fan_out: int, kind: str,
                 gain: float) -> tuple[float, float]:
  """(init_std, multiplier) of one layer's kernel; kind in {"input", "hidden", "readout"}.

  `gain` is σ_w of this layer (the MLP passes 1 for its readout unless
  weight_std is set); mup's readout ignores it.
  """
  if parametrization == "standard":
    return gain / math.sqrt(fan_in), 1.0
  if parametrization == "ntk":
    return 1.0, gain / math.sqrt(fan_in)
  if parametrization == "mup":
    if kind == "input":
      return gain / math.sqrt(fan_in * fan_out), math.sqrt(fan_out)
    if kind == "hidden":
      return gain / math.sqrt(fan_in), 1.0
    return 1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in)
  raise ValueError(f"parametrization={parametrization!r}; allowed: {PARAMETRIZATIONS}")


class MLP(nn.Module):
  """MLP returning `(outputs, hidden)`; hidden = post-activation of each layer.

  Attributes:
    hidden_sizes: widths of the hidden layers.
    num_outputs: size of the readout.
    parametrization: "standard", "ntk" or "mup" (see the module docstring).
    normalize: LayerNorm on each hidden pre-activation, before the nonlinearity.
    activation: name in ACTIVATIONS.
    weight_std: None (gain √2 for ReLU hidden layers, 1 otherwise and for the
      readout) or σ_w for every layer (neural-tangents' convention).
    bias_std: None (biases start at zero, multiplier 1) or σ_b: biases start
      at N(0, 1) with multiplier σ_b (ntk) or at N(0, σ_b²) (standard).
    tract_lam: None (plain) or λ: the input layer's kernel gradient becomes
      TrAct's (XᵀX/b + λI)⁻¹ ∇W (Petersen et al. 2024; `jaxlab.models.tract`).
    dtype: the compute dtype (None: as before, the inputs' dtype promoted with
      float32). bfloat16: every layer computes in bfloat16 from float32
      parameters (the TrAct input layer's solve stays float32), LayerNorm
      statistics in float32 (flax), and the outputs are returned as float32 so
      that the loss is computed in float32 (`jaxlab.models.precision`).
  """

  hidden_sizes: Sequence[int]
  num_outputs: int
  parametrization: str = "standard"
  normalize: bool = False
  activation: str = "relu"
  weight_std: float | None = None
  bias_std: float | None = None
  tract_lam: float | None = None
  dtype: Any = None

  def _bias_args(self, fan_out: int, kind: str) -> dict:
    if self.bias_std is None:
      return dict(bias_multiplier=bias_multiplier(self.parametrization, fan_out, kind))
    if self.parametrization == "ntk":
      return dict(bias_multiplier=self.bias_std, bias_init_std=1.0)
    return dict(bias_init_std=self.bias_std)

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    act = ACTIVATIONS[self.activation]
    if self.weight_std is None:
      gain, readout_gain = (math.sqrt(2.0) if self.activation == "relu" else 1.0), 1.0
    else:
      gain = readout_gain = self.weight_std
    hidden = []
    h = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_sizes):
      kind = "input" if i == 0 else "hidden"
      std, mult = layer_scales(self.parametrization, h.shape[-1], width, kind, gain)
      tract_lam = self.tract_lam if i == 0 else None
      h = ScaledDense(width, std, mult, **self._bias_args(width, kind), tract_lam=tract_lam,
                      dtype=self.dtype, name=f"dense_{i}")(h)
      if self.normalize:
        h = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(h)
      h = act(h)
      hidden.append(h)
    std, mult = layer_scales(self.parametrization, h.shape[-1], self.num_outputs, "readout",
                             readout_gain)
    out = ScaledDense(self.num_outputs, std, mult, **self._bias_args(self.num_outputs, "readout"),
                      dtype=self.dtype, name="readout")(h)
    if self.dtype is not None:
      out = out.astype(jnp.float32)  # the loss (softmax, its mean) in float32
    return out, tuple(hidden)


class Model(NamedTuple):
  """A pure model: `init(key) -> params`, `apply(params, x) -> (y, aux)`."""

  init: Callable[[jax.Array], dict]
  apply: Callable[[dict, jax.Array], tuple[jax.Array, dict]]


def mlp(input_dim: int, hidden_sizes: Sequence[int], num_outputs: int, *,
        parametrization: str = "standard", normalize: bool = False,
        activation: str = "relu", weight_std: float | None = None,
        bias_std: float | None = None, tract_lam: float | None = None,
        compute_dtype: Any = None) -> Model:
  """Builds an MLP as a pure `(init, apply)` pair.

  `apply(params, x)` returns `(logits, {"hidden": (h_1, ..., h_L)})`.
  `weight_std`, `bias_std` (standard and ntk only; see the module docstring):
  neural-tangents' σ_w, σ_b in every layer; with parametrization="ntk" the
  infinite-width NTK is `jaxlab.ntk.fc_kernels(depth=len(hidden_sizes),
  weight_std=weight_std, bias_std=bias_std)`. The default None keeps the
  He-gain, zero-bias net, whose limit that is not. `tract_lam=λ` trains the
  input layer with TrAct's kernel gradient (XᵀX/b + λI)⁻¹ ∇W (Petersen et al.
  2024, λ = 0.1 there); None (default) is the plain gradient.
  `compute_dtype`: None or "float32" (default, unchanged) or "bfloat16": mixed
  precision with float32 parameters, bfloat16 products and float32 logits
  (`jaxlab.models.precision`); the hidden states in aux are bfloat16 then.

  Example:
    >>> model = mlp(40, (64, 64), 10, parametrization="mup")
    >>> params = model.init(jax.random.key(0))
    >>> logits, aux = model.apply(params, jnp.ones((8, 40)))
  """
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"parametrization={parametrization!r}; allowed: {PARAMETRIZATIONS}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r}; allowed: {tuple(ACTIVATIONS)}")
  if input_dim <= 0 or num_outputs <= 0 or not hidden_sizes or min(hidden_sizes) <= 0:
    raise ValueError(
        f"mlp sizes must be positive: input_dim={input_dim}, hidden_sizes={tuple(hidden_sizes)}, "
        f"num_outputs={num_outputs}")
  for name, value in (("weight_std", weight_std), ("bias_std", bias_std)):
    if value is None:
      continue
    if parametrization == "mup":
      raise ValueError(f"{name}={value!r} with parametrization='mup': only 'standard' and 'ntk' "
                       "take neural-tangents' weight_std/bias_std; leave it None")
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value)
                                       and value >= 0):
      raise ValueError(f"{name}={value!r}: must be None or a finite number >= 0")
  if tract_lam is not None:
    tract_lam = tract.check_lam(tract_lam, "tract_lam")
  dtype = precision.resolve(compute_dtype, "compute_dtype")
  module = MLP(tuple(hidden_sizes), num_outputs, parametrization, normalize, activation,
               None if weight_std is None else float(weight_std),
               None if bias_std is None else float(bias_std), tract_lam,
               None if dtype == jnp.float32 else dtype)

  def init(key: jax.Array) -> dict:
    return module.init(key, jnp.zeros((1, input_dim), jnp.float32))["params"]

  def apply(params: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    out, hidden = module.apply({"params": params}, x)
    return out, {"hidden": hidden}

  return Model(init, apply)
