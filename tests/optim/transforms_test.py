"""Each transform against an independent numpy loop of its paper's equations.

Tolerances: float32 against float64 references, relative error <= 1e-5
(a few ulps of float32 accumulated over 25 steps).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.fft

from jaxlab.optim import dct_lowrank, diffgrad, hypergradient, mfac, normalized_gd
from jaxlab.optim.dct_lowrank import scale_by_dct_lowrank
from jaxlab.optim.mfac import scale_by_mfac

RTOL = 1e-5
STEPS = 25


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def random_grads(rng, shapes, steps=STEPS, scale=1.0):
  return [{k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
          for _ in range(steps)]


def run_jax(tx, params, grads_seq, extra_fn=None):
  """Yields (params_before, updates) per step, jitted once."""
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads, extra):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state, updates

  out = []
  for g in grads_seq:
    extra = extra_fn(params) if extra_fn else {}
    new_params, state, updates = step(params, state, g, extra)
    out.append((jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, updates)))
    params = new_params
  return out, state


def test_diffgrad_matches_numpy_loop():
  rng = np.random.default_rng(0)
  shapes = {"a": (3, 4), "b": (5,)}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = random_grads(rng, shapes)
  lr, b1, b2, eps, wd = 1e-2, 0.8, 0.95, 1e-6, 0.1
  steps, _ = run_jax(diffgrad(lr, b1, b2, eps, weight_decay=wd), params, grads)
  m = {k: np.zeros(s) for k, s in shapes.items()}
  v = {k: np.zeros(s) for k, s in shapes.items()}
  prev = {k: np.zeros(s) for k, s in shapes.items()}
  for t, (g, (p, upd)) in enumerate(zip(grads, steps, strict=True), start=1):
    for k in shapes:
      gk = g[k].astype(np.float64) + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk**2
      xi = 1.0 / (1.0 + np.exp(-np.abs(prev[k] - gk)))
      ref = -lr * np.sqrt(1 - b2**t) / (1 - b1**t) * xi * m[k] / (np.sqrt(v[k]) + eps)
      prev[k] = gk
      assert rel_err(upd[k], ref) <= RTOL, (t, k, rel_err(upd[k], ref))


def _mfac_numpy_loop(params_seq, grads_seq, lr, m, lam, mu, wd):
  d = sum(x.size for x in params_seq[0].values())
  window = np.zeros((m, d))
  v = np.zeros(d)
  refs = []
  for t, (p, g) in enumerate(zip(params_seq, grads_seq, strict=True)):
    flat_g = np.concatenate([g[k].ravel() for k in sorted(g)]).astype(np.float64)
    flat_p = np.concatenate([p[k].ravel() for k in sorted(p)]).astype(np.float64)
    window[t % m] = flat_g + wd * flat_p
    fisher = lam * np.eye(d) + window.T @ window / m  # dense windowed empirical Fisher
    u = np.linalg.solve(fisher, window[t % m])
    v = mu * v + (1 - mu) * u
    refs.append(-lr * v)
  return refs


def test_mfac_matches_dense_fisher_loop():
  rng = np.random.default_rng(1)
  shapes = {"a": (2, 3), "b": (6,)}  # d = 12 > m, window wraps 3 times in 25 steps
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = random_grads(rng, shapes, scale=0.1)
  lr, m, lam, mu, wd = 0.1, 8, 0.05, 0.5, 0.01
  steps, _ = run_jax(mfac(lr, num_grads=m, damping=lam, momentum=mu, weight_decay=wd), params, grads)
  refs = _mfac_numpy_loop([p for p, _ in steps], grads, lr, m, lam, mu, wd)
  for t, ((_, upd), ref) in enumerate(zip(steps, refs, strict=True)):
    flat = np.concatenate([upd[k].ravel() for k in sorted(upd)])
    assert rel_err(flat, ref) <= RTOL, (t, rel_err(flat, ref))


def test_mfac_woodbury_matches_dense_inverse_small_damping_float64():
  """The paper's regime (damping 1e-5, d > m) in float64 against inv(F) g."""
  rng = np.random.default_rng(2)
  d, m, lam = 40, 16, 1e-5
  gs = rng.standard_normal((20, d))
  with jax.enable_x64(True):
    tx = scale_by_mfac(num_grads=m, damping=lam)
    state = tx.init(jnp.zeros(d, jnp.float64))
    update = jax.jit(tx.update)
    for t in range(20):
      u, state = update(jnp.asarray(gs[t]), state)
    window = np.zeros((m, d))
    for t in range(20):
      window[t % m] = gs[t]
    ref = np.linalg.inv(lam * np.eye(d) + window.T @ window / m) @ gs[19]
    assert rel_err(u, ref) <= 1e-6  # cond(F) ~ 1e6 in float64: ~1e-10 expected


def _dct_numpy_adam(a, mom, vel, t, b1, b2, eps):
  mom = b1 * mom + (1 - b1) * a
  vel = b2 * vel + (1 - b2) * a**2
  return mom, vel, (mom / (1 - b1**t)) / (np.sqrt(vel / (1 - b2**t)) + eps)


def test_dct_basis_is_the_authors_dct3_matrix_by_default():
  # Independent references: the authors' dct3_matrix written out (Q[i, j] = sqrt(2/n)
  # cos(pi i (2j + 1) / (2n)), row 0 times sqrt(1/2)) and scipy's orthonormal DCTs.
  from jaxlab.optim.dct_lowrank import dct_basis
  n = 7
  i, j = np.arange(n)[:, None], np.arange(n)[None, :]
  authors = np.sqrt(2.0 / n) * np.cos(np.pi * i * (2 * j + 1) / (2 * n))
  authors[0] *= np.sqrt(0.5)
  np.testing.assert_allclose(dct_basis(n, "float64"), authors, atol=1e-14)
  g = np.random.default_rng(0).standard_normal((5, n))
  # Default (their sim_type='matmul'): rows of G go through the DCT-III.
  np.testing.assert_allclose(g @ dct_basis(n, "float64"),
                             scipy.fft.dct(g, type=3, norm="ortho", axis=1), atol=1e-13)
  # basis="dct2" (their sim_type='makhoul'): the transpose, rows through the DCT-II.
  np.testing.assert_allclose(g @ dct_basis(n, "float64", "dct2"),
                             scipy.fft.dct(g, type=2, norm="ortho", axis=1), atol=1e-13)
  with pytest.raises(ValueError, match="basis="):
    dct_lowrank(1e-3, basis="dct4")


@pytest.mark.parametrize("basis", [None, "dct2"])
def test_dct_lowrank_matches_numpy_loop(basis):
  rng = np.random.default_rng(3)
  shapes = {"tall": (12, 6), "wide": (5, 10), "bias": (7,)}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = random_grads(rng, shapes)
  lr, r, every, b1, b2, eps, wd = 1e-2, 3, 4, 0.9, 0.99, 1e-8, 0.1
  kind = {None: 3, "dct2": 2}[basis]  # None: the default, the authors' DCT-III matrix
  tx = dct_lowrank(lr, rank=r, update_every=every, b1=b1, b2=b2, eps=eps, weight_decay=wd,
                   **({} if basis is None else {"basis": basis}))
  steps, _ = run_jax(tx, params, grads)
  low_shape = {"tall": (12, r), "wide": (r, 10), "bias": (7,)}
  mom = {k: np.zeros(s) for k, s in low_shape.items()}
  vel = {k: np.zeros(s) for k, s in low_shape.items()}
  idx = {}
  for t, (g, (p, upd)) in enumerate(zip(grads, steps, strict=True), start=1):
    for k in shapes:
      gk = g[k].astype(np.float64)
      if k == "bias":
        mom[k], vel[k], u = _dct_numpy_adam(gk, mom[k], vel[k], t, b1, b2, eps)
        full = u
      else:
        axis = 1 if k == "tall" else 0  # the transform along the smaller dimension
        s = scipy.fft.dct(gk, type=kind, norm="ortho", axis=axis)
        if (t - 1) % every == 0:
          idx[k] = np.argsort(-np.abs(s).sum(axis=1 - axis))[:r]
        a = s[:, idx[k]] if k == "tall" else s[idx[k], :]
        mom[k], vel[k], u = _dct_numpy_adam(a, mom[k], vel[k], t, b1, b2, eps)
        coeffs = np.zeros_like(gk)
        if k == "tall":
          coeffs[:, idx[k]] = u
        else:
          coeffs[idx[k], :] = u
        full = scipy.fft.idct(coeffs, type=kind, norm="ortho", axis=axis)
      ref = -lr * (full + wd * p[k])
      assert rel_err(upd[k], ref) <= RTOL, (t, k, rel_err(upd[k], ref))


def test_dct_lowrank_state_stores_indices_not_matrices():
  n, m, r = 64, 32, 4
  params = {"w": jnp.zeros((n, m)), "b": jnp.zeros((m,))}
  state = scale_by_dct_lowrank(rank=r).init(params)
  assert state.indices["w"].shape == (r,) and state.indices["w"].dtype == jnp.int32
  assert state.indices["b"].shape == (0,)
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  # count + adam count + (mu, nu) on (n, r) and on the bias + r int32 indices.
  expected = 4 + 4 + 2 * 4 * (n * r + m) + 4 * r
  assert nbytes == expected, (nbytes, expected)
  # On a square matrix both keep (m x r) moments; galore also keeps the m x r projector.
  sq = {"w": jnp.zeros((m, m))}
  size = lambda st: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(st))
  ours, galore = scale_by_dct_lowrank(rank=r).init(sq), optax.contrib.scale_by_galore(rank=r).init(sq)
  assert size(galore) - size(ours) == 4 * (m * r - r)


def _logistic_data(rng, n=40, d=5):
  w_star = rng.standard_normal(d)
  a = rng.standard_normal((n, d))
  y = np.sign(a @ w_star)
  return a.astype(np.float32), y.astype(np.float32)


def test_normalized_gd_matches_numpy_loop():
  rng = np.random.default_rng(4)
  a, y = _logistic_data(rng)
  gamma = 10.0
  loss = lambda th: jnp.mean(jax.nn.softplus(-y * (a @ th["w"])))
  tx = normalized_gd(gamma)
  params = {"w": jnp.zeros(a.shape[1], jnp.float32)}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    margins = y * (a @ params["w"])
    u, state = tx.update(jax.grad(loss)(params), state, params, margins=margins)
    return optax.apply_updates(params, u), state, u

  for t in range(STEPS):
    th = np.asarray(params["w"], np.float64)
    marg = y * (a @ th)
    sig = 1.0 / (1.0 + np.exp(marg))  # (1 + exp(m_i))^-1
    grad = -(sig * y) @ a / len(y)
    beta = 1.0 / sig.mean()
    ref = -gamma * beta * grad
    params, state, u = step(params, state)
    assert rel_err(u["w"], ref) <= RTOL, (t, rel_err(u["w"], ref))
  assert np.all(np.sign(a @ np.asarray(params["w"])) == y)  # separable data: solved


@pytest.mark.parametrize("sizes", [(10, 10, 10, 10), (12, 8, 14, 6)])
def test_normalized_gd_every_k_matches_the_large_batch_rule(sizes):
  # k micro-batches (equal or not) with every_k = k give the update of one step on all
  # n examples: beta over all n margins, the gradient of the mean loss over all n.
  rng = np.random.default_rng(6)
  a, y = _logistic_data(rng, n=sum(sizes))
  gamma, k = 10.0, len(sizes)
  bounds = np.cumsum((0,) + sizes)
  tx = normalized_gd(gamma, every_k=k)
  th = jnp.zeros(a.shape[1], jnp.float32)
  state = tx.init(th)

  def micro(th, state, aj, yj):
    g = jax.grad(lambda t: jnp.mean(jax.nn.softplus(-yj * (aj @ t))))(th)
    return tx.update(g, state, th, margins=yj * (aj @ th))

  micro = jax.jit(micro)
  for t in range(8):
    th64 = np.asarray(th, np.float64)
    sig = 1.0 / (1.0 + np.exp(y * (a @ th64)))  # Tyurin Sec. 6 on the whole batch
    ref = -gamma * (1.0 / sig.mean()) * (-(sig * y) @ a / len(y))
    for j in range(k):
      sl = slice(bounds[j], bounds[j + 1])
      u, state = micro(th, state, a[sl], y[sl])
      if j < k - 1:
        assert float(jnp.abs(u).max()) == 0.0
    assert rel_err(u, ref) <= RTOL, (t, rel_err(u, ref))
    assert abs(float(state[0].last_scale) * sig.mean() - 1.0) <= RTOL
    th = optax.apply_updates(th, u)


def test_normalized_gd_without_margins_raises():
  tx = normalized_gd(1.0)
  p = jnp.zeros(3)
  with pytest.raises(ValueError, match="margins"):
    tx.update(p, tx.init(p), p)


@pytest.mark.parametrize("inner_name", ["sgd", "adam"])
def test_hypergradient_matches_numpy_loop(inner_name):
  rng = np.random.default_rng(5)
  shapes = {"a": (3, 3), "b": (4,)}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = random_grads(rng, shapes)
  alpha0, beta, b1, b2, eps = 1e-2, 1e-3, 0.9, 0.999, 1e-8
  # float32 holds 0.999 as 0.99900001; 1 - b2**t amplifies that 1e-8 to 1e-5 at t = 1, so
  # the reference uses the hyperparameters as float32 stores them.
  b1, b2 = float(np.float32(b1)), float(np.float32(b2))
  inner = optax.identity() if inner_name == "sgd" else optax.scale_by_adam(b1, b2, eps)
  steps, state = run_jax(hypergradient(alpha0, hypergrad_lr=beta, inner=inner), params, grads)
  flat = lambda tree: np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in sorted(tree)])
  alpha, prev_d = alpha0, np.zeros(sum(int(np.prod(s)) for s in shapes.values()))
  mom, vel = np.zeros_like(prev_d), np.zeros_like(prev_d)
  for t, (g, (_, upd)) in enumerate(zip(grads, steps, strict=True), start=1):
    gf = flat(g)
    alpha = alpha + beta * gf @ prev_d  # Baydin et al.: alpha_t = alpha_{t-1} - beta * h_t
    if inner_name == "sgd":
      d = gf
    else:
      mom = b1 * mom + (1 - b1) * gf
      vel = b2 * vel + (1 - b2) * gf**2
      d = (mom / (1 - b1**t)) / (np.sqrt(vel / (1 - b2**t)) + eps)
    ref = -alpha * d
    prev_d = d
    assert rel_err(flat(upd), ref) <= RTOL, (t, rel_err(flat(upd), ref))
  assert abs(float(state[0].lr_offset) - (alpha - alpha0)) <= 1e-5 * max(abs(alpha), 1e-3)


@pytest.mark.parametrize("factory", [diffgrad, mfac, dct_lowrank, normalized_gd, hypergradient])
def test_negative_learning_rate_raises(factory):
  with pytest.raises(ValueError, match="learning_rate"):
    factory(-1.0)


def test_learning_rate_schedule_is_used():
  sched = optax.linear_schedule(1.0, 0.0, 10)
  p = {"w": jnp.ones(3)}
  for tx in [diffgrad(sched), mfac(sched, num_grads=2, damping=1.0), dct_lowrank(sched, rank=1)]:
    state = tx.init(p)
    for _ in range(10):
      _, state = tx.update(p, state, p)
    u, _ = tx.update(p, state, p)
    assert float(jnp.abs(u["w"]).max()) == 0.0  # schedule reached 0 at step 10
