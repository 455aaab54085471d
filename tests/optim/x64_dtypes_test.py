"""Optimizers under jax x64: fixed state dtypes and float64 arithmetic for float64 params.

Under `jax.enable_x64`, `optax.inject_hyperparams` stores hyperparameters as
float64 arrays; a transform whose state mixes them in must still return the
state dtypes it was initialised with, or `lax.scan` over steps raises a
TypeError. For float64 params every scalar a transform computes (bias
corrections, scales) must be float64: the references below are float64 numpy
loops of the papers' equations, compared at 1e-12 relative (float32 scalars
are off by ~1e-7).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.optim import diffgrad, hypergradient, normalized_gd

RTOL64 = 1e-12  # float64 arithmetic, same operations, ~25 steps
STEPS = 25


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def _logistic(dtype, n=16, d=3, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, d))
  y = np.sign(a @ rng.standard_normal(d))
  return jnp.asarray(a, dtype), jnp.asarray(y, dtype)


def _extra_args(name, params, dtype):
  if name != "normalized_gd":
    return {}
  a, y = _logistic(dtype)
  return {"margins": y * (a @ params["w"])}


def _hypergradient_adam(learning_rate, hypergrad_lr=1e-7):
  return hypergradient(learning_rate, hypergrad_lr)  # both become float64 arrays when injected


FACTORIES = {
    "hypergradient": _hypergradient_adam,
    "diffgrad": diffgrad,
    "normalized_gd": normalized_gd,
}


@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dtypes_fixed_under_inject_hyperparams_and_scan(name, param_dtype):
  with jax.enable_x64(True):
    tx = optax.inject_hyperparams(FACTORIES[name])(learning_rate=1e-2)
    params = {"w": jnp.linspace(-1.0, 1.0, 3).astype(param_dtype)}
    state = tx.init(params)

    def loss(p):
      return jnp.sum(jnp.cos(p["w"]) + p["w"] ** 2)

    def step(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p, **_extra_args(name, p, param_dtype))
      return (optax.apply_updates(p, u), s), None

    (_, s1), _ = jax.lax.scan(step, (params, state), None, length=3)  # TypeError if a dtype drifts
    want = jax.tree.map(lambda x: jnp.asarray(x).dtype, state)
    got = jax.tree.map(lambda x: jnp.asarray(x).dtype, s1)
    assert got == want


def test_diffgrad_float64_params_use_float64_bias_correction():
  rng = np.random.default_rng(0)
  b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-2
  grads = [rng.standard_normal(4) for _ in range(STEPS)]
  with jax.enable_x64(True):
    tx = diffgrad(lr, b1, b2, eps)
    params = jnp.zeros(4, jnp.float64)
    state = tx.init(params)
    update = jax.jit(tx.update)
    m, v, prev = np.zeros(4), np.zeros(4), np.zeros(4)
    for t, g in enumerate(grads, start=1):
      u, state = update(jnp.asarray(g), state, params)
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g**2
      xi = 1.0 / (1.0 + np.exp(-np.abs(prev - g)))
      ref = -lr * np.sqrt(1 - b2**t) / (1 - b1**t) * xi * m / (np.sqrt(v) + eps)  # Dubey et al. Alg. 1
      prev = g
      assert u.dtype == jnp.float64
      assert _rel(u, ref) <= RTOL64, (t, _rel(u, ref))


def test_normalized_gd_float64_beta():
  gamma = 10.0
  with jax.enable_x64(True):
    a, y = (np.asarray(v) for v in _logistic(jnp.float64, n=40, d=5, seed=4))
    tx = normalized_gd(gamma)
    params = jnp.zeros(a.shape[1], jnp.float64)
    state = tx.init(params)

    @jax.jit
    def step(th, state):
      g = jax.grad(lambda t: jnp.mean(jax.nn.softplus(-y * (a @ t))))(th)
      u, state = tx.update(g, state, th, margins=y * (a @ th))
      return optax.apply_updates(th, u), state, u

    for t in range(STEPS):
      th = np.asarray(params)
      sig = 1.0 / (1.0 + np.exp(y * (a @ th)))  # (1 + exp(m_i))^-1, Tyurin Sec. 6
      beta = 1.0 / sig.mean()
      ref = -gamma * beta * (-(sig * y) @ a / len(y))
      params, state, u = step(params, state)
      assert _rel(u, ref) <= RTOL64, (t, _rel(u, ref))
      assert abs(float(state[0].last_scale) - beta) <= RTOL64 * beta
      assert state[0].last_scale.dtype == jnp.float64


def test_hypergradient_float64_learning_rate():
  rng = np.random.default_rng(5)
  alpha0, beta = 1e-2, 1e-3
  grads = [rng.standard_normal(5) for _ in range(STEPS)]
  with jax.enable_x64(True):
    tx = hypergradient(alpha0, hypergrad_lr=beta, inner=optax.identity())
    params = jnp.zeros(5, jnp.float64)
    state = tx.init(params)
    update = jax.jit(tx.update)
    alpha, prev = alpha0, np.zeros(5)
    for t, g in enumerate(grads, start=1):
      u, state = update(jnp.asarray(g), state, params)
      alpha = alpha + beta * g @ prev  # Baydin et al. 2018, SGD-HD
      prev = g
      assert _rel(u, -alpha * g) <= RTOL64, (t, _rel(u, -alpha * g))
    assert state[0].lr_offset.dtype == jnp.float64
    assert abs(float(state[0].lr_offset) - (alpha - alpha0)) <= RTOL64 * alpha
