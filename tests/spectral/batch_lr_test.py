"""Batch sharpness model, its fit, stability limits and the on-the-fly learning-rate hook."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab import train
from jaxlab.spectral import batch_lr


def _spiked_wigner_top(p, lam, var, rng):
  """Top eigenvalue of λuuᵀ + W, W symmetric with off-diagonal entry variance `var`."""
  g = rng.standard_normal((p, p)) * np.sqrt(var)
  w = (g + g.T) / np.sqrt(2.0)
  u = rng.standard_normal(p)
  u /= np.linalg.norm(u)
  return np.linalg.eigvalsh(lam * np.outer(u, u) + w)[-1]


def test_batch_sharpness_matches_dense_spiked_wigner():
  # Entry variance σ²(1/B − 1/N) with P σ² = noise: the formula's s(B) = P · var.
  rng = np.random.default_rng(0)
  p, lam, sigma2, n = 600, 3.0, 0.04, 4096
  noise = p * sigma2
  for b in (2, 8, 64):  # B = 2 below the BBP threshold (bulk edge), 8 and 64 above
    var = sigma2 * (1.0 / b - 1.0 / n)
    measured = _spiked_wigner_top(p, lam, var, rng)
    predicted = float(batch_sharpness_at(b, lam, noise, n))
    # Finite-P fluctuations: O(P^{-2/3}) ≈ 1.4% at the edge, O(P^{-1/2}) ≈ 4% for the BBP
    # outlier (seen: ≤ 3.1% over 3 seeds); the predictions differ from λ by 4-130%.
    assert measured == pytest.approx(predicted, rel=0.06), (b, measured, predicted)


def batch_sharpness_at(b, lam, noise, n):
  return batch_lr.batch_sharpness(b, lam, noise, n)


def test_batch_sharpness_branches_and_limits():
  lam, noise, n = 2.0, 400.0, 1000
  b_star = batch_lr.bbp_batch_size(lam, noise, n)
  assert lam**2 == pytest.approx(noise * (1 / b_star - 1 / n))
  below, above = batch_lr.batch_sharpness([b_star * 0.5, b_star * 2], lam, noise, n)
  s_below = noise * (1 / (b_star * 0.5) - 1 / n)
  assert below == pytest.approx(2 * np.sqrt(s_below))  # bulk edge
  s_above = noise * (1 / (b_star * 2) - 1 / n)
  assert above == pytest.approx(lam + s_above / lam)  # outlier
  # Continuous at B*, decreasing in B, exactly λ at B = N.
  lo, hi = batch_lr.batch_sharpness([b_star * 0.999, b_star * 1.001], lam, noise, n)
  assert lo == pytest.approx(hi, rel=3e-3)  # a 0.2% step in B moves s(B) by 0.2%
  curve = batch_lr.batch_sharpness(np.arange(1, n + 1), lam, noise, n)
  assert np.all(np.diff(curve) <= 1e-12) and curve[-1] == pytest.approx(lam)


def test_fit_recovers_parameters_and_a_wrong_form_fits_worse():
  b = np.array([4, 8, 16, 32, 64, 128, 256, 1000])
  lam, noise, n = 5.0, 3000.0, 1000
  rng = np.random.default_rng(1)
  y = batch_lr.batch_sharpness(b, lam, noise, n) * np.exp(0.02 * rng.standard_normal(b.size))
  fit = batch_lr.fit_batch_sharpness(b, y, num_examples=n)
  assert fit.lambda_full == pytest.approx(lam, rel=0.05)
  assert fit.noise == pytest.approx(noise, rel=0.1)
  assert fit.rel_rms_error < 0.04  # the 2% multiplicative noise
  fixed = batch_lr.fit_batch_sharpness(b, y, num_examples=n, lambda_full=lam)
  assert fixed.noise == pytest.approx(noise, rel=0.1) and fixed.lambda_full == lam
  # Data from a different law (λ_max ∝ B^-0.2, no plateau) is not fitted as well.
  other = batch_lr.fit_batch_sharpness(b, 40.0 * b**-0.2, num_examples=n)
  assert other.rel_rms_error > 3 * fit.rel_rms_error


def test_sgd_limit_is_the_heavy_ball_threshold_on_a_quadratic():
  lam = 7.0
  for beta in (0.0, 0.9):
    eta = float(batch_lr.max_stable_lr_sgd(lam, beta))
    for factor, bounded in ((0.98, True), (1.02, False)):
      x, v = 1.0, 0.0
      for _ in range(3000):
        v = beta * v + lam * x  # optax.sgd(momentum=β): trace of gradients
        x = x - factor * eta * v
      assert (abs(x) < 1.0) == bounded, (beta, factor, x)


def test_adam_limit_with_frozen_preconditioner_on_a_quadratic():
  # Adam's EMA m ← β₁m + (1−β₁)g and x ← x − η m / p on ½λx²: stable iff η λ/p < (2+2β₁)/(1−β₁).
  lam, p, b1 = 3.0, 0.25, 0.9
  eta = float(batch_lr.max_stable_lr_adam(lam / p, b1))
  for factor, bounded in ((0.98, True), (1.02, False)):
    x, m = 1.0, 0.0
    for _ in range(5000):
      m = b1 * m + (1 - b1) * lam * x
      x = x - factor * eta * m / p
    assert (abs(x) < 1.0) == bounded, (factor, x)


def test_scaling_exponent_of_power_laws():
  b = np.array([4, 8, 16, 32])
  assert batch_lr.scaling_exponent(b, 0.01 * b).exponent == pytest.approx(1.0)
  e = batch_lr.scaling_exponent(b, 0.3 * np.sqrt(b))
  assert e.exponent == pytest.approx(0.5) and e.stderr == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("call, match", [
    (lambda: batch_lr.batch_sharpness([0, 4], 1.0, 1.0), "batch_sizes"),
    (lambda: batch_lr.batch_sharpness([4], -1.0, 1.0), "lambda_full"),
    (lambda: batch_lr.batch_sharpness([4, 2000], 1.0, 1.0, 1000), "num_examples"),
    (lambda: batch_lr.fit_batch_sharpness([4, 8], [1.0]), "one each"),
    (lambda: batch_lr.fit_batch_sharpness([4, 8], [1.0, -2.0]), "sharpness"),
    (lambda: batch_lr.fit_batch_sharpness([4, 4], [1.0, 2.0]), "distinct"),
    (lambda: batch_lr.max_stable_lr_sgd(1.0, momentum=1.0), "momentum"),
    (lambda: batch_lr.scaling_exponent([4, 8], [1.0, 0.0]), "learning_rates"),
    (lambda: batch_lr.slq_lr_hook(None, lambda s: None, every_steps=0), "every_steps"),
    (lambda: batch_lr.slq_lr_hook(None, lambda s: None, 5, fraction=1.5), "fraction"),
    (lambda: batch_lr.slq_lr_hook(None, None, 5), "batch_fn"),
])
def test_bad_arguments(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def _regression(n=64, d=6, seed=0):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((n, d)) * np.linspace(0.5, 2.0, d)).astype(np.float32)
  y = rng.standard_normal(n).astype(np.float32)
  return {"x": x, "y": y}


def _probe(p, b):
  return 0.5 * jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)


def test_slq_hook_sets_the_injected_learning_rate_from_the_batch_hessian():
  batch = _regression()
  lam = np.linalg.eigvalsh(batch["x"].T.astype(np.float64) @ batch["x"] / len(batch["x"]))[-1]
  params = {"w": np.zeros(6, np.float32)}
  hook = batch_lr.slq_lr_hook(_probe, lambda s: batch, every_steps=4, num_iters=6,
                              fraction=0.5, momentum=0.5)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3, momentum=0.5)
  result = train.train(lambda p, b, k: (_probe(p, b), {}), params, tx, lambda s: batch,
                       num_steps=8, key=jax.random.key(0), log_every=4, hooks=(hook,),
                       progress=False)
  expected = 0.5 * 2 * 1.5 / lam
  # Lanczos with as many steps as dimensions is exact up to float32 rounding.
  np.testing.assert_allclose(result.history[0]["slq_batch_sharpness"], lam, rtol=1e-4)
  np.testing.assert_allclose(result.history[-1]["slq_learning_rate"], expected, rtol=1e-4)
  np.testing.assert_allclose(float(result.state.opt_state.hyperparams["learning_rate"]),
                             expected, rtol=1e-4)
  # Steps 5-8 ran at the hook's rate: SGD+momentum at half the limit reduces the loss.
  assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_slq_hook_needs_injected_hyperparams():
  batch = _regression(n=8, d=3)
  hook = batch_lr.slq_lr_hook(_probe, lambda s: batch, every_steps=2, num_iters=3)
  with pytest.raises(ValueError, match="inject_hyperparams"):
    train.train(lambda p, b, k: (_probe(p, b), {}), {"w": np.zeros(3, np.float32)},
                optax.sgd(0.01), lambda s: batch, num_steps=2, key=jax.random.key(0),
                hooks=(hook,), progress=False)


def test_preconditioned_operator_matches_dense_d_inverse_h():
  batch = _regression(n=32, d=5, seed=3)
  params = {"w": np.zeros(5, np.float32)}
  diag = {"w": np.array([0.5, 1.0, 2.0, 0.1, 3.0], np.float32)}
  mv = batch_lr.preconditioned_hessian_vp(_probe, params, batch, diag)
  h = batch["x"].T.astype(np.float64) @ batch["x"] / 32
  dense = np.linalg.eigvals(np.diag(1 / diag["w"].astype(np.float64)) @ h).real.max()
  top = batch_lr.top_eigenvalue(mv, params, 5, jax.random.key(0))
  np.testing.assert_allclose(top, dense, rtol=1e-4)  # float32 Lanczos, 5 exact steps
  with pytest.raises(ValueError, match="diag"):
    batch_lr.preconditioned_hessian_vp(_probe, params, batch, {"w": -np.ones(5, np.float32)})
