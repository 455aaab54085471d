"""GPT-2-style causal decoder for in-context regression, as a flax.linen module.

Tokenization of Garg et al. 2022 ("What Can Transformers Learn In-Context?",
arXiv:2208.01066, Sec. 2 and their reference model): the prompt
(x_1, y_1, ..., x_N, y_N) becomes 2N tokens z_1 = x_1, z_2 = (y_1, 0, ..., 0),
z_3 = x_2, ...; a linear read-in maps each d-vector to the width, a learned
positional embedding is added, L pre-LayerNorm blocks (causal multi-head
self-attention, 4x GELU MLP) follow, then a final LayerNorm and a linear
read-out; the prediction of y_i is the read-out at the token of x_i, which by
causality sees exactly (x_j, y_j)_{j<i} and x_i. No dropout (the papers use 0).

The module returns the hidden state after the embedding and after every block
(Fu et al. 2023, arXiv:2310.17086, Sec. 3, probe each layer's output) so probes
can read them.

`normalize=False` drops every LayerNorm (the blocks and the final one).
`normalize="nap"` keeps GPT-2's LayerNorms and adds one on the MLP's hidden
pre-activation, before the GELU (`ln_mlp`): normalization before every
nonlinearity of the MLP block, as Normalize-and-Project prescribes (Lyle et al.
2024, arXiv:2407.01800, its "normalize" step). The attention softmax keeps its unnormalized
q·k logits (our reading: the MLP's GELU is the block's elementwise
nonlinearity). With it, `fc` feeds a normalization (scale-invariant on its
own) and everything writing into the residual stream (read-in, positional
table, every `attn/proj` and `fc_out`) is jointly scale-invariant through the
pre-LayerNorms and the final LayerNorm; `jaxlab.nap.nap_mask` builds those
groups. The default (True) is the GPT-2 block, unchanged.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def interleave(xs: jax.Array, ys: jax.Array) -> jax.Array:
  """(B, N, d), (B, N) -> (B, 2N, d) tokens x_1, (y_1, 0, ..., 0), x_2, ..."""
  b, n, d = xs.shape
  y_tok = jnp.concatenate([ys[..., None], jnp.zeros((b, n, d - 1), xs.dtype)], axis=-1)
  return jnp.stack([xs, y_tok], axis=2).reshape(b, 2 * n, d)


class CausalSelfAttention(nn.Module):
  num_heads: int
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_BxTxW):
    b, t, w = h_BxTxW.shape
    hd = w // self.num_heads
    qkv = nn.Dense(3 * w, dtype=self.dtype, name="qkv")(h_BxTxW)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.num_heads, hd), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, T, H, hd)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(hd).astype(self.dtype)
    causal = jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.where(causal[None, None], logits, jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhts,bshd->bthd", attn, v).reshape(b, t, w)
    return nn.Dense(w, dtype=self.dtype, name="proj")(out)


NORMALIZE = (True, False, "nap")


class Block(nn.Module):
  num_heads: int
  width: int
  mlp_ratio: int = 4
  normalize: bool | str = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    norm = (lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)) \
        if self.normalize else (lambda name: (lambda x: x))
    h = h + CausalSelfAttention(self.num_heads, self.width, self.dtype, name="attn")(
        norm("ln1")(h))
    m = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, name="fc")(norm("ln2")(h))
    if self.normalize == "nap":  # LayerNorm on the pre-activation, before the nonlinearity
      m = norm("ln_mlp")(m)
    m = nn.Dense(self.width, dtype=self.dtype, name="fc_out")(nn.gelu(m, approximate=True))
    return h + m


class ICLTransformer(nn.Module):
  """GPT-2-style decoder predicting y at every x position.

  Attributes:
    num_layers, num_heads, width: L, H, W (Garg et al.: 12, 8, 256).
    max_points: the largest N (positional table of 2N entries).
    mlp_ratio: MLP hidden size / W (GPT-2: 4).
    normalize: True: pre-LayerNorm blocks + final LayerNorm (GPT-2); False: no
      LayerNorm; "nap": GPT-2's plus a LayerNorm before the MLP's GELU (NaP).
    dtype: compute dtype (params stay float32).

  Call: `apply(params, xs (B, N, d), ys (B, N))` -> (preds (B, N), hidden
  (L + 1, B, 2N, W)); hidden[0] is the embedding, hidden[l] the output of block l
  (before the final LayerNorm).

  Example:
    >>> m = ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=11)
    >>> xs, ys = jnp.ones((3, 11, 5)), jnp.ones((3, 11))
    >>> params = m.init(jax.random.key(0), xs, ys)
    >>> preds, hidden = m.apply(params, xs, ys)
    >>> preds.shape, hidden.shape
    ((3, 11), (3, 3, 22, 16))
  """
  num_layers: int
  num_heads: int
  width: int
  max_points: int
  mlp_ratio: int = 4
  normalize: bool | str = True
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if not any(self.normalize is v or (isinstance(v, str) and self.normalize == v)
               for v in NORMALIZE):
      raise ValueError(f"normalize={self.normalize!r}; allowed: {NORMALIZE}")
    for name in ("num_layers", "num_heads", "width", "max_points", "mlp_ratio"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}={v!r}: expected an int >= 1")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}")
    init = nn.initializers.normal(0.02)  # GPT-2 initializer range
    self.read_in = nn.Dense(self.width, dtype=self.dtype, kernel_init=init)
    self.pos = self.param("pos_embedding", init, (2 * self.max_points, self.width))
    self.blocks = [Block(self.num_heads, self.width, self.mlp_ratio, self.normalize,
                         self.dtype, name=f"block_{i}") for i in range(self.num_layers)]
    self.ln_f = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype) if self.normalize else None
    self.read_out = nn.Dense(1, dtype=self.dtype, kernel_init=init)

  def embed(self, xs, ys):
    if xs.ndim != 3 or ys.shape != xs.shape[:2]:
      raise ValueError(f"xs, ys: expected shapes (B, N, d), (B, N); got {xs.shape}, {ys.shape}")
    if xs.shape[1] > self.max_points:
      raise ValueError(f"xs: N={xs.shape[1]} points exceeds max_points={self.max_points}")
    tok = interleave(xs, ys)
    return self.read_in(tok) + self.pos[None, : tok.shape[1]].astype(self.dtype)

  def readout(self, h):
    """Read-out of a hidden state (B, T, W) at the x tokens: (B, N)."""
    if self.ln_f is not None:
      h = self.ln_f(h)
    return self.read_out(h[:, ::2])[..., 0].astype(jnp.float32)

  def __call__(self, xs, ys):
    h = self.embed(xs, ys)
    hidden = [h]
    for blk in self.blocks:
      h = blk(h)
      hidden.append(h)
    return self.readout(h), jnp.stack(hidden)
