"""Baselines against numpy closed forms (OLS, ridge) and numpy loops (GD-k, Newton-k).

The comparisons run in float64 (jax.enable_x64 scope) where the acceptance bar is a
relative error <= 1e-5; a float32 run checks the same code at float32 accuracy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.icl import baselines, tasks

B, N, D = 4, 9, 5


def _prompts(dtype=np.float64, kappa=1.0, noise=0.0, seed=0):
  p = tasks.sample_prompts(jax.random.key(seed), B, N, D, condition_number=kappa,
                           noise_std=noise, dtype=dtype)
  return np.asarray(p.xs), np.asarray(p.ys)


def _rel(a, b):
  return np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300)


def _np_loop(xs, ys, fit):
  """preds[b, i] = x_i . fit(X_{<i}, y_{<i}) (0 with no example)."""
  out = np.zeros(ys.shape)
  for b in range(xs.shape[0]):
    for i in range(1, xs.shape[1]):
      out[b, i] = xs[b, i] @ fit(xs[b, :i], ys[b, :i])
  return out


def test_least_squares_matches_numpy_min_norm_lstsq():
  with jax.enable_x64(True):
    xs, ys = _prompts()
    got = baselines.least_squares(jnp.asarray(xs), jnp.asarray(ys))
    ref = _np_loop(xs, ys, lambda x, y: np.linalg.lstsq(x, y, rcond=None)[0])
    assert _rel(got, ref) <= 1e-5
    # Noiseless: exact once i >= d examples, 0 error (the property the study relies on).
    assert np.max(np.abs(np.asarray(got)[:, D:] - ys[:, D:])) < 1e-8


def test_least_squares_float32():
  xs, ys = _prompts(np.float32)
  got = baselines.least_squares(jnp.asarray(xs), jnp.asarray(ys))
  ref = _np_loop(xs.astype(np.float64), ys.astype(np.float64),
                 lambda x, y: np.linalg.lstsq(x, y, rcond=None)[0])
  # float32 eps 1e-7 amplified by cond(S) ~ 1e2..1e3 near i = d.
  assert _rel(got, ref) <= 1e-3


def _roundoff_ratio(got, xs, ys, ns, fit, cond):
  """|got - float64 reference| per prompt, in units of the float32 round-off bound.

  A backward-stable solve of a consistent system has forward error
  <= c * eps * cond * |x_n| |w| with c a small constant (Golub & Van Loan, Sec. 5.3.8);
  forming X^T X instead squares cond, so its ratio grows like cond(X) (1e2..1e4 here).
  """
  eps = np.finfo(np.float32).eps
  x64, y64 = xs.astype(np.float64), ys.astype(np.float64)
  out = np.zeros((len(ns), xs.shape[0]))
  for k, n in enumerate(ns):
    for b in range(xs.shape[0]):
      w = fit(x64[b, :n], y64[b, :n])
      bound = eps * cond(x64[b, :n]) * np.linalg.norm(x64[b, n]) * np.linalg.norm(w)
      out[k, b] = abs(float(got[b, n]) - x64[b, n] @ w) / bound
  return out


def _square_prompts(batch=32, seed=3):
  d, n = 20, 23  # noiseless, d = 20: prefixes n = 20, 21, 22 are square or nearly so
  p = tasks.sample_prompts(jax.random.key(seed), batch, n, d, dtype=jnp.float32)
  return np.asarray(p.xs), np.asarray(p.ys)


def test_least_squares_float32_at_round_off_near_n_equals_d():
  # Measured ratio <= 0.34 over 64 prompts (SVD solve); the old X^T X eigen-solve gave
  # error/d 2.6e-3 at n = 20 where float64 lstsq gives 1.7e-10.
  xs, ys = _square_prompts()
  got = np.asarray(baselines.least_squares(jnp.asarray(xs), jnp.asarray(ys)))
  ratio = _roundoff_ratio(got, xs, ys, (20, 21, 22),
                          lambda x, y: np.linalg.lstsq(x, y, rcond=None)[0], np.linalg.cond)
  assert ratio.max() <= 2.0, ratio.max(axis=1)


def test_study_least_squares_curve_at_round_off_near_n_equals_d():
  # The study's error curve (evaluation.baseline_predictions) on noiseless d = 20 prompts:
  # error/d at n = 20, 21, 22 within the per-prompt round-off bound's mean square.
  from jaxlab.icl import evaluation
  xs, ys = _square_prompts()
  curve = evaluation.baseline_predictions(jnp.asarray(xs), jnp.asarray(ys), noise_std=0.0)
  err = np.mean((curve["least_squares"] - ys) ** 2, axis=0) / xs.shape[-1]
  eps = np.finfo(np.float32).eps
  for n in (20, 21, 22):
    x64, y64 = xs[:, :n].astype(np.float64), ys[:, :n].astype(np.float64)
    w = [np.linalg.lstsq(x, y, rcond=None)[0] for x, y in zip(x64, y64, strict=True)]
    bound = [2 * eps * np.linalg.cond(x) * np.linalg.norm(q) * np.linalg.norm(wb)
             for x, q, wb in zip(x64, xs[:, n], w, strict=True)]
    assert err[n] <= np.mean(np.square(bound)) / xs.shape[-1], (n, err[n])


def test_ridge_float32_at_round_off_near_n_equals_d():
  # Small lam keeps S + lam I as ill-conditioned as S; the bound uses the condition
  # number of the augmented system [X; sqrt(lam) I], which the SVD solve attains.
  lam = 1e-4
  xs, ys = _square_prompts()
  got = np.asarray(baselines.ridge(jnp.asarray(xs), jnp.asarray(ys), lam))
  d = xs.shape[-1]

  def fit(x, y):
    return np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)

  def cond(x):
    return np.linalg.cond(np.concatenate([x, np.sqrt(lam) * np.eye(d)]))
  ratio = _roundoff_ratio(got, xs, ys, (20, 21, 22), fit, cond)
  assert ratio.max() <= 2.0, ratio.max(axis=1)


@pytest.mark.parametrize("lam", [0.01, 0.25, 1.0])
def test_ridge_matches_closed_form(lam):
  with jax.enable_x64(True):
    xs, ys = _prompts(noise=0.5)
    got = baselines.ridge(jnp.asarray(xs), jnp.asarray(ys), lam)
    ref = _np_loop(xs, ys, lambda x, y: np.linalg.solve(x.T @ x + lam * np.eye(D), x.T @ y))
    assert _rel(got, ref) <= 1e-5


def _np_gd(x, y, k, lr):
  w = np.zeros(x.shape[1])
  n = x.shape[0]
  eta = 1.0 / np.linalg.eigvalsh(x.T @ x / n)[-1] if lr is None else lr
  for _ in range(k):
    w = w - eta * (x.T @ (x @ w - y)) / n
  return w


@pytest.mark.parametrize("lr", [None, 0.05])
def test_gd_matches_numpy_loop(lr):
  steps = (0, 1, 3, 10)
  with jax.enable_x64(True):
    xs, ys = _prompts(kappa=10.0)
    got = np.asarray(baselines.gd(jnp.asarray(xs), jnp.asarray(ys), steps, lr=lr))
    for j, k in enumerate(steps):
      ref = _np_loop(xs, ys, lambda x, y, k=k: _np_gd(x, y, k, lr))
      if k == 0:
        assert np.all(got[j] == 0)
      else:
        assert _rel(got[j], ref) <= 1e-5, k


def _np_newton(x, y, k, c):
  s = x.T @ x
  alpha = c / np.linalg.norm(s @ s.T, 2)
  m = alpha * s
  for _ in range(k):
    m = 2 * m - m @ s @ m
  return m @ x.T @ y


def test_newton_matches_numpy_loop():
  steps = (0, 1, 2, 5, 8)
  with jax.enable_x64(True):
    xs, ys = _prompts(kappa=10.0)
    got = np.asarray(baselines.newton(jnp.asarray(xs), jnp.asarray(ys), steps))
    for j, k in enumerate(steps):
      ref = _np_loop(xs, ys, lambda x, y, k=k: _np_newton(x, y, k, 1.0))
      assert _rel(got[j], ref) <= 1e-5, k


def test_newton_converges_to_least_squares_and_beats_gd_when_ill_conditioned():
  with jax.enable_x64(True):
    xs, ys = _prompts(kappa=100.0)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    ols = np.asarray(baselines.least_squares_weights(xs, ys))
    steps = (1, 2, 4, 8, 16, 32)
    w = np.asarray(baselines.newton_weights(xs, ys, steps))
    dist = [np.linalg.norm(w[j][:, D + 1:] - ols[:, D + 1:]) / np.linalg.norm(ols[:, D + 1:])
            for j in range(len(steps))]
    assert all(b <= a + 1e-12 for a, b in zip(dist[:-1], dist[1:], strict=True)), dist  # monotone
    assert dist[-1] < 1e-8, dist  # quadratic convergence: at machine precision by k = 32
    # GD with the same number of steps is far from OLS on kappa = 100 data (Fu et al. Sec. 4).
    g = np.asarray(baselines.gd_weights(xs, ys, (32,)))[0]
    assert np.linalg.norm(g[:, D + 1:] - ols[:, D + 1:]) / np.linalg.norm(ols[:, D + 1:]) > 1e-2


def test_newton_alpha_two_loses_the_top_direction():
  # alpha = 2 / ||S S^T|| sits on the boundary of Newton-Schulz convergence.
  with pytest.raises(ValueError, match="alpha_scale"):
    baselines.newton_weights(jnp.ones((1, 3, 2)), jnp.ones((1, 3)), (1,), alpha_scale=2.0)


def test_knn_and_averaging_match_numpy():
  xs, ys = _prompts(np.float32)
  k = 3

  def knn_ref():
    out = np.zeros(ys.shape)
    for b in range(B):
      for i in range(1, N):
        dd = np.sum((xs[b, :i] - xs[b, i]) ** 2, axis=1)
        nb = np.argsort(dd)[: min(k, i)]
        out[b, i] = ys[b, nb].mean()
    return out

  np.testing.assert_allclose(baselines.knn(jnp.asarray(xs), jnp.asarray(ys), k), knn_ref(),
                             rtol=1e-5, atol=1e-6)
  ref = _np_loop(xs, ys, lambda x, y: (x * y[:, None]).mean(0))
  np.testing.assert_allclose(baselines.averaging(jnp.asarray(xs), jnp.asarray(ys)), ref,
                             rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
  xs, ys = jnp.ones((2, 3, 4)), jnp.ones((2, 3))
  with pytest.raises(ValueError, match="ys"):
    baselines.least_squares(xs, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="xs"):
    baselines.least_squares(jnp.ones((3, 4)), ys)
  with pytest.raises(ValueError, match="lam"):
    baselines.ridge(xs, ys, 0.0)
  with pytest.raises(ValueError, match="steps"):
    baselines.gd(xs, ys, (3, 1))
  with pytest.raises(ValueError, match="k="):
    baselines.knn(xs, ys, 0)


def test_gd_steps_int_or_sequence():
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((2, 5, 3)), jnp.float32)
  ys = jnp.asarray(rng.standard_normal((2, 5)), jnp.float32)
  one = baselines.gd(xs, ys, steps=64)  # an int: the predictions after 64 steps, (B, N)
  assert one.shape == (2, 5)
  np.testing.assert_array_equal(one, baselines.gd(xs, ys, steps=(1, 64))[1])
  assert baselines.gd_weights(xs, ys, 3).shape == (2, 5, 3)
  for bad in (64.0, "64", -1, (1.5, 2), (True,)):
    with pytest.raises(ValueError, match=r"steps=.*expected .*ints >= 0"):
      baselines.gd(xs, ys, steps=bad)
