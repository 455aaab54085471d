"""M-FAC on convex quadratics: where it diverges, and the float32 solve that must not return NaN.

Since F = damping I + G^T G / m >= damping I, the step P g with P = F^{-1} obeys
P <= I / damping for every window, and the descent lemma on an L-smooth f gives
f(x - lr P g) <= f(x) - lr (1 - lr L / (2 damping)) g^T P g: every step decreases f
when damping > lr L / 2, whatever the window holds. Below that, directions the
window barely spans are amplified by up to 1 / damping and the iterate can
diverge in exact arithmetic (float64 below), not only in float32.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.optim import mfac
from jaxlab.optim.mfac import scale_by_mfac

D = 8
CURV = np.linspace(1.0, 10.0, D)  # Hessian eigenvalues: L = 10


def _run(m, damping, lr, steps, dtype=jnp.float32):
  c = jnp.asarray(CURV, dtype)
  f = lambda x: 0.5 * jnp.sum(c * (x - 0.7) ** 2)
  tx = mfac(lr, num_grads=m, damping=damping)

  def body(carry, _):
    x, s = carry
    u, s = tx.update(jax.grad(f)(x), s, x)
    return (x + u, s), f(x + u)

  x0 = jnp.zeros(D, dtype)
  _, fs = jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=steps))(x0)
  return float(f(x0)), np.asarray(fs, np.float64)


@pytest.mark.parametrize("m", [8, 128])
def test_converges_monotonically_when_damping_exceeds_half_lr_times_l(m):
  # The documented rule with a 2x margin: damping = lr * L. Measured: f / f0 = 6e-2 (m = 8)
  # and 1e-10 (m = 128) after 100 steps, 6e-15 (float32 floor) after 300, every step down.
  lr = 0.1
  f0, fs = _run(m, damping=lr * CURV.max(), lr=lr, steps=300)
  assert np.all(np.diff(np.r_[f0, fs]) <= 1e-6 * f0)  # monotone up to float32 rounding
  assert fs[-1] <= 1e-8 * f0, fs[-1] / f0


def test_small_damping_diverges_in_float64_too():
  # lr L / (2 damping) = 5e3: the iterate itself diverges (measured f / f0 = 60 after 100
  # steps, 560 after 1000, in float64), so this is the method's regime, not float32.
  with jax.enable_x64(True):
    f0, fs = _run(8, damping=1e-5, lr=1e-2, steps=100, dtype=jnp.float64)
  assert np.all(np.isfinite(fs))
  assert fs[-1] > 10 * f0, fs[-1] / f0


def test_float32_diverging_run_stays_finite():
  # The same run in float32 went NaN at step 9 (m = 8) and 12 (m = 32) from the Cholesky
  # factorization, well before the iterate overflows.
  for m in (8, 32):
    _, fs = _run(m, damping=1e-5, lr=1e-2, steps=100)
    assert np.all(np.isfinite(fs)), (m, np.argmin(np.isfinite(fs)))


def test_float32_solve_never_nan_when_gram_rounding_exceeds_damping():
  # Nearly collinear gradients of norm ~300: float32 rounding of G G^T / m (~eps |g|^2)
  # is far above damping = 1e-5, the computed damping I + G G^T / m is indefinite and its
  # Cholesky factor is NaN. The exact solve satisfies |u| <= |g| / damping.
  rng = np.random.default_rng(0)
  v = 100 * rng.standard_normal(D)
  damping = 1e-5
  tx = scale_by_mfac(num_grads=4, damping=damping)
  state = tx.init(jnp.zeros(D, jnp.float32))
  update = jax.jit(tx.update)
  for k in range(6):
    g = jnp.asarray(v * (1 + 1e-3 * k) + 1e-3 * rng.standard_normal(D), jnp.float32)
    u, state = update(g, state)
    assert np.all(np.isfinite(np.asarray(u))), k
    assert float(jnp.linalg.norm(u)) <= 1.01 * float(jnp.linalg.norm(g)) / damping, k
