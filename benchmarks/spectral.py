"""jaxlab.spectral vs PyHessian (PyTorch, CPU): time to equal accuracy.

Run:  python benchmarks/spectral.py            # full (15-40 minutes on a 2-core CPU)
      python benchmarks/spectral.py --quick    # tiny model, seconds; torch optional
      python benchmarks/spectral.py --costs-only   # only HVP/grad and Lanczos overhead
      python benchmarks/spectral.py --costs-only --batches 1024   # one batch size of it
      python benchmarks/spectral.py --only cnn,first_call   # only those rows
      python benchmarks/spectral.py --only big   # the 1.1M-parameter row, three libraries

One MLP (tanh, softmax cross-entropy) trained with Adam in JAX on a 10-class
Gaussian mixture (so its Hessian has the ~C outliers of real classifiers); its
weights are copied into an identical torch.nn.Sequential, the same data go to
both. Every number is compared at equal accuracy against a reference:
  * top eigenvalue: relative error vs a long float64 Lanczos run; time to reach
    each target for our Lanczos (float32) and PyHessian's power iteration;
  * trace: RMS relative error (over seeds) vs the exact trace (unit-vector
    HVPs) as a function of time: our Hutch++ and Hutchinson vs PyHessian's
    Hutchinson, both at fixed budgets and with its own stopping rule (tol);
  * density: SLQ with the same (iterations, draws); wall time and agreement of
    the first two moments;
  * HVPs to reach a tolerance: top_eigenpairs (Lanczos) vs optax.power_iteration;
  * HVP time / gradient time (one call, and amortized in a loop of products at
    one point) and Lanczos overhead over its HVPs (100 steps, 1.1M parameters,
    batches 1024 and 4096), with the loop's own cost on a diagonal matvec;
  * first call: top_eigenpairs(k=1, num_iters=20) on a ~100k-parameter MLP (batch
    512) from a cold start, compile included, against PyHessian's power iteration to a
    relative error <= 1e-3 (its fastest run among tol 1e-3, 1e-4 with all cores' torch threads
    and with one), construction included; then our warm call and a call with a new num_iters;
    wall and process CPU time, load average before and after; --first-call-host picks
    top_eigenpairs' host argument (default auto: the NumPy host path on CPU); then cold vs
    cold (full config, 3 rounds): each probe the first in a fresh process, the model set up
    outside the clock: ours as is, with tol=1e-3, with tol and quick_compile=True, with
    those and tol_kind="eigenvalue", the same with the int seed key=0, and PyHessian at
    tol 1e-3 and 1e-4 on one torch thread (its first autograd pass included);
  * CNN: 20 Lanczos steps on SmallCNN (Conv-BatchNorm-ReLU x2, eval mode at fixed
    batch statistics) on 256 sklearn digits, per call after compile: one batch,
    [batch], 4 batches of 64, a user's own HVP as a plain ``Partial`` and
    ``batch_lr.preconditioned_hessian_vp`` (both once run inside Lanczos's jitted
    while loop, where XLA:CPU ran the convolutions' backward pass in a naive
    form, 27-29x slower; now driven from Python like the operators). Target: one
    batch <= 1.2x the list;
  * big: top-1 and top-5 eigenvalues of the 1.1M-parameter MLP (the --costs-only
    model, trained 20 steps, batch 1024): time to 1e-3 relative error for our
    top_eigenpairs, hessian-eigenthings' Lanczos and PyHessian's power iteration,
    against a 150-step float32 Lanczos (see bench_big).
Wall times are warm (compiled); run on a shared machine they are noisy, the
ratios measured in one run are what count.
Prints a table and writes JSON (default benchmarks/results/spectral.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from jaxlab.spectral import operators as ops  # noqa: E402
from jaxlab.spectral.density import spectral_density  # noqa: E402
from jaxlab.spectral.eigen import top_eigenpairs  # noqa: E402
from jaxlab.spectral.lanczos import lanczos, tridiagonal  # noqa: E402
from jaxlab.spectral.trace import trace  # noqa: E402

FULL = dict(sizes=(32, 64, 64, 10), batch=512, train_steps=100, eig_tols=(1e-2, 1e-3, 1e-4),
            trace_tols=(1e-2, 5e-3, 2e-3), hpp_budgets=(48, 96, 192, 384, 768, 1536),
            hut_budgets=(96, 384, 1536), py_budgets=(96, 384, 1536, 6144), py_tols=(1e-3, 1e-4),
            trace_seeds=3, lanczos_grid=(4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80),
            ref_iters=150, slq=(80, 2), big_sizes=(64, 1024, 1024, 10), big_batches=(1024, 4096),
            big_iters=100, first_sizes=(64, 300, 256, 10), first_batch=512, first_iters=20,
            first_tol=1e-3, cold_rounds=3,
            cnn_features=(16, 32), cnn_examples=256, cnn_batches=4, cnn_iters=20, cnn_repeats=5,
            big_train_steps=20, big_ks=(1, 5), big_tol=1e-3, big_ref=150,
            big_grid=(4, 6, 8, 10, 15, 20, 25, 30, 40, 50, 60, 80), big_py_iters=100)
QUICK = dict(sizes=(8, 16, 16, 3), batch=64, train_steps=30, eig_tols=(1e-2, 1e-3),
             trace_tols=(0.1, 0.05), hpp_budgets=(12, 24), hut_budgets=(12, 24),
             py_budgets=(12, 24), py_tols=(1e-2,), trace_seeds=2,
             lanczos_grid=(4, 8, 16), ref_iters=None, slq=(20, 16),
             big_sizes=(8, 64, 64, 3), big_batches=(64,), big_iters=20,
             first_sizes=(8, 32, 32, 3), first_batch=64, first_iters=20, first_tol=1e-3,
             cold_rounds=0,
             cnn_features=(4, 4), cnn_examples=64, cnn_batches=4, cnn_iters=8, cnn_repeats=2,
             big_train_steps=5, big_ks=(1, 5), big_tol=1e-3, big_ref=100,
             big_grid=(8, 16, 32, 64), big_py_iters=50)
ROWS = ("cnn", "first_call", "big")


# ---------------------------------------------------------------------------
# Model and data (JAX side).


def mlp_init(seed, sizes):
  rng = np.random.default_rng(seed)
  return [{"w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a), jnp.float32),
           "b": jnp.zeros((b,), jnp.float32)} for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def mlp_apply(params, x):
  h = x
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"][None, :]
    if i < len(params) - 1:
      h = jnp.tanh(h)
  return h


def loss_fn(params, batch):
  x, y = batch
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(mlp_apply(params, x), y))


def make_data(seed, sizes, n, sep=0.6):
  """Gaussian mixture, C = sizes[-1] classes in d = sizes[0] dims: class means of norm ~sep,
  isotropic noise of norm ~1. Trained on it, the MLP's Hessian has the ~C outlier
  eigenvalues of real classifiers (Papyan 2019), which is where Hutch++ pays off."""
  rng = np.random.default_rng(seed)
  d, c = sizes[0], sizes[-1]
  means = rng.standard_normal((c, d)) * sep / np.sqrt(d)
  y = rng.integers(0, c, n)
  x = (means[y] + rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y.astype(np.int32))


def train(params, batch, steps):
  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss_fn)(p, batch)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  s = opt.init(params)
  for _ in range(steps):
    params, s = step(params, s)
  return params


def timeit(fn, repeats=3, warmup=True):
  """Best-of-``repeats`` wall time of ``fn()`` (after one warm-up call), and its result."""
  out = fn() if warmup else None
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def block(x):
  return jax.block_until_ready(x)


# ---------------------------------------------------------------------------
# References (float64).


def exact_trace_and_m2(mv, params, n, chunk=64):
  """tr(H) = Σ e_iᵀ H e_i and tr(H²) = Σ ‖H e_i‖², from chunks of unit vectors.

  float32 HVPs (float64 took minutes on a loaded 2-core CPU): each column is
  exact up to rounding, so the sums carry a relative error ~1e-6, far below
  the trace targets (>= 2e-3); partial sums are accumulated in float64.
  """
  spec = ops.flat_spec(params)

  @jax.jit
  def part(mv, start):
    E = jax.nn.one_hot(start + jnp.arange(chunk), n, dtype=jnp.float32)  # rows >= n are zero
    HE = jax.vmap(lambda e: ops.ravel(mv(ops.unravel(e, spec)), spec, jnp.float32))(E)
    return jnp.sum(E * HE), jnp.sum(HE * HE)

  parts = [part(mv, s) for s in range(0, n, chunk)]
  return (float(sum(np.float64(a) for a, _ in parts)),
          float(sum(np.float64(b) for _, b in parts)))


def references(params, batch, cfg, n):
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
    b64 = (jnp.asarray(np.asarray(batch[0]), jnp.float64), batch[1])
    mv = ops.hessian_vp(loss_fn, p64, b64)
    if cfg["ref_iters"] is None:  # small model: dense Hessian
      flat, unravel = jax.flatten_util.ravel_pytree(p64)
      H = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), b64)))(flat))
      ev = np.linalg.eigvalsh(H)
      return dict(lam_max=float(ev[-1]), trace=float(np.trace(H)), trace_se=0.0,
                  m2=float(np.sum(ev**2) / n), how="dense float64 Hessian")
    res = lanczos(mv, p64, min(cfg["ref_iters"], n), jax.random.key(123), dtype=jnp.float64)
    th = np.linalg.eigvalsh(tridiagonal(res.alphas, res.betas))
  tr, tr2 = exact_trace_and_m2(ops.hessian_vp(loss_fn, params, batch), params, n)
  return dict(lam_max=float(th[-1]), trace=tr, trace_se=0.0, m2=tr2 / n,
              how=f"float64 Lanczos {cfg['ref_iters']} steps; exact trace and tr(H^2) from {n} "
                  "unit-vector HVPs (float32 columns, float64 sums)")


# ---------------------------------------------------------------------------
# PyHessian side.


def torch_side(params, batch, skip=False, check=True):
  """(torch module or None, note, hessian-builder) — None when torch is missing.

  ``check``: compare the torch loss with ours (a forward pass of each; off for a cold probe,
  where nothing of torch's autograd or our compiled code may run before the clock)."""
  if skip:
    return None, "--skip-peer: PyHessian columns skipped", None
  try:
    import torch
  except ImportError:
    return None, "torch not installed: PyHessian columns skipped", None
  note = ""
  try:
    from pyhessian import hessian as PyHessian
  except Exception as e:  # noqa: BLE001 - report any import failure loudly
    print("!" * 78 + f"\n!! pyhessian failed to import ({e!r}); PyHessian columns skipped\n"
          + "!" * 78)
    return None, f"pyhessian import failed: {e!r}", None
  try:
    torch.eig(torch.eye(2), eigenvectors=True)
    has_eig = True
  except (AttributeError, RuntimeError, TypeError):
    has_eig = False
  if not has_eig:
    # PyHessian 0.1's density() calls torch.eig(T, eigenvectors=True), removed from
    # torch 2.x. A shim with the old return format (real/imag columns) on top of
    # torch.linalg.eigh (T is symmetric) lets PyHessian's own density code run.
    def _eig(a, eigenvectors=False):
      w, v = torch.linalg.eigh(a)
      return torch.stack([w, torch.zeros_like(w)], dim=1), v

    torch.eig = _eig
    note = ("PyHessian density() uses torch.eig, removed in torch 2.x: ran it with a "
            "torch.linalg.eigh shim (same math; T is symmetric)")
    print("!" * 78 + "\n!! " + note + "\n" + "!" * 78)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  layers = []
  for i, layer in enumerate(params):
    w = np.asarray(layer["w"])
    lin = torch.nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(w.T.copy()))
      lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"]).copy()))
    layers.append(lin)
    if i < len(params) - 1:
      layers.append(torch.nn.Tanh())
  model = torch.nn.Sequential(*layers)
  x = torch.from_numpy(np.asarray(batch[0]).copy())
  y = torch.from_numpy(np.asarray(batch[1]).astype(np.int64))
  crit = torch.nn.CrossEntropyLoss()
  if check:
    with torch.no_grad():
      l_t = float(crit(model(x), y))
    l_j = float(loss_fn(params, batch))
    assert abs(l_t - l_j) < 1e-4 * max(1.0, abs(l_j)), (l_t, l_j)

  def build():
    return PyHessian(model, crit, data=(x, y), cuda=False)

  build.torch_model = (model, crit, x, y)  # for the other torch peer (hessian-eigenthings)
  return torch, note, build


# ---------------------------------------------------------------------------
# Benchmarks.


def time_to(targets, runs):
  """runs: list of (time, rel_error). Min time among runs reaching each target (None if none)."""
  out = {}
  for tol in targets:
    ok = [t for t, e in runs if e <= tol]
    out[tol] = min(ok) if ok else None
  return out


def bench_eigen(params, batch, ref, cfg, n, build):
  mv = ops.hessian_vp(loss_fn, params, batch)
  lam = ref["lam_max"]
  # One long run gives every prefix T_m (Lanczos is prefix-consistent for one start).
  long = lanczos(mv, params, min(max(cfg["lanczos_grid"]), n), jax.random.key(0))
  ours_runs, ours_detail = [], []
  for m in cfg["lanczos_grid"]:
    if m > n:
      continue
    th = np.linalg.eigvalsh(tridiagonal(long.alphas[:m], long.betas[:m - 1]))[-1]
    err = abs(th - lam) / abs(lam)
    t, _ = timeit(lambda m=m: np.linalg.eigvalsh(tridiagonal(
        *lanczos(mv, params, m, jax.random.key(0))[:2]))[-1])
    ours_runs.append((t, err))
    ours_detail.append(dict(iters=m, time_s=t, rel_err=err))
  py_runs, py_detail = [], []
  if build is not None:
    import torch
    hess = build()
    for tol in (1e-2, 1e-3, 1e-4, 1e-5):
      torch.manual_seed(0)
      t0 = time.perf_counter()
      vals, _ = hess.eigenvalues(maxIter=1000, tol=tol, top_n=1)
      t = time.perf_counter() - t0
      err = abs(vals[0] - lam) / abs(lam)
      py_runs.append((t, err))
      py_detail.append(dict(tol=tol, time_s=t, rel_err=err))
  return dict(ours=time_to(cfg["eig_tols"], ours_runs), pyhessian=time_to(cfg["eig_tols"], py_runs),
              ours_runs=ours_detail, pyhessian_runs=py_detail)


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x))))


def time_to_err(targets, rows):
  """Min median time among settings whose RMS relative error (over seeds) is <= each target."""
  return time_to(targets, [(r["time_s"], r["rms_rel_err"]) for r in rows])


def bench_trace(params, batch, ref, cfg, build):
  """Time to a relative error vs the exact trace, RMS over ``trace_seeds`` independent runs.

  One run's error is luck; the RMS over seeds is the accuracy a user can expect.
  Ours: trace() at each budget, median wall time (warm; the first call of a new
  Hutch++ sketch size compiles its QR). PyHessian: (a) fixed budgets (tol=0 runs
  exactly maxIter samples): error from prefixes of ``trace_seeds`` runs of the
  longest budget, time of a separate run per budget; (b) its own stopping rule
  (relative change of the running mean < tol). Its time-to-accuracy is the
  better of (a) and (b) at each target.
  """
  mv = ops.hessian_vp(loss_fn, params, batch)
  tr = ref["trace"]
  rel = lambda e: abs(e - tr) / abs(tr)
  seeds = range(cfg["trace_seeds"])

  def ours(method, budgets):
    trace(mv, params, budgets[0], jax.random.key(99), method=method)  # compile
    rows = []
    for m in budgets:
      ts, errs, ses = [], [], []
      for s in seeds:
        t0 = time.perf_counter()
        est = trace(mv, params, m, jax.random.key(1000 + s), method=method)
        ts.append(time.perf_counter() - t0)
        errs.append(rel(est.estimate))
        ses.append(est.stderr / abs(tr))
      rows.append(dict(matvecs=m, time_s=float(np.median(ts)), rms_rel_err=_rms(errs),
                       max_rel_err=max(errs), mean_rel_stderr=float(np.mean(ses))))
    return rows

  out = dict(ours_runs=ours("hutch++", cfg["hpp_budgets"]),
             ours_hutchinson_runs=ours("hutchinson", cfg["hut_budgets"]),
             pyhessian_runs=[], pyhessian_tol_runs=[])
  if build is not None:
    import torch
    hess = build()
    budgets = cfg["py_budgets"]
    M = budgets[-1]
    longs, t_long = [], []
    for s in seeds:
      torch.manual_seed(100 + s)
      t0 = time.perf_counter()
      longs.append(np.asarray(hess.trace(maxIter=M, tol=0.0), np.float64))
      t_long.append(time.perf_counter() - t0)
    for m in budgets:
      if m == M:
        t = float(np.median(t_long))
      else:
        torch.manual_seed(1)
        t0 = time.perf_counter()
        hess.trace(maxIter=m, tol=0.0)
        t = time.perf_counter() - t0
      errs = [rel(v[:m].mean()) for v in longs]
      out["pyhessian_runs"].append(dict(matvecs=m, time_s=t, rms_rel_err=_rms(errs),
                                        max_rel_err=max(errs)))
    for tol in cfg["py_tols"]:
      ts, errs, its = [], [], []
      for s in seeds:
        torch.manual_seed(200 + s)
        t0 = time.perf_counter()
        vhv = np.asarray(hess.trace(maxIter=M, tol=tol), np.float64)
        ts.append(time.perf_counter() - t0)
        errs.append(rel(vhv.mean()))
        its.append(vhv.size)
      out["pyhessian_tol_runs"].append(dict(tol=tol, time_s=float(np.median(ts)),
                                            matvecs=[int(i) for i in its], rms_rel_err=_rms(errs),
                                            max_rel_err=max(errs)))
    out["pyhessian_ms_per_matvec"] = 1e3 * float(np.median(t_long)) / M
  big = out["ours_hutchinson_runs"][-1]
  out["ours_ms_per_matvec"] = 1e3 * big["time_s"] / big["matvecs"]
  tols = cfg["trace_tols"]
  out["ours"] = time_to_err(tols, out["ours_runs"])
  out["ours_hutchinson"] = time_to_err(tols, out["ours_hutchinson_runs"])
  fixed = time_to_err(tols, out["pyhessian_runs"])
  own = time_to_err(tols, out["pyhessian_tol_runs"])
  out["pyhessian"] = {t: (None if fixed[t] is None and own[t] is None else
                          min(x for x in (fixed[t], own[t]) if x is not None)) for t in tols}
  return out


def bench_density(params, batch, ref, cfg, n, build):
  m, draws = cfg["slq"]
  m = min(m, n)
  mv = ops.hessian_vp(loss_fn, params, batch)
  spectral_density(mv, params, m, 1, jax.random.key(0))  # compile
  t, dens = timeit(lambda: spectral_density(mv, params, m, draws, jax.random.key(2)), 1,
                   warmup=False)
  mom = lambda nodes, w: [float(np.mean(np.sum(w * nodes**k, axis=-1))) for k in (1, 2)]
  out = dict(iters=m, draws=draws, ours_time_s=t, ours_moments=mom(dens.nodes, dens.weights),
             ours_top_node=float(dens.nodes.max()), exact_m1=ref["trace"] / n, exact_m2=ref["m2"])
  if build is not None:
    import torch
    hess = build()
    torch.manual_seed(2)
    t0 = time.perf_counter()
    nodes, weights = hess.density(iter=m, n_v=draws)
    out["pyhessian_time_s"] = time.perf_counter() - t0
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    out["pyhessian_moments"] = mom(nodes, weights)
    out["pyhessian_top_node"] = float(nodes.max())
  return out


def bench_power_iteration(params, batch, ref, cfg, n):
  """HVPs to reach each relative tolerance: Lanczos vs optax.power_iteration (same operator)."""
  mv = ops.hessian_vp(loss_fn, params, batch)
  lam = ref["lam_max"]
  m_max = min(200, n)
  v0 = jax.tree.map(lambda a: jax.random.normal(jax.random.key(0), a.shape, a.dtype), params)
  # Same start vector for both: Lanczos's top Ritz value after m matvecs is the
  # best Rayleigh quotient over the Krylov space that contains the power iterate.
  long = lanczos(mv, params, m_max, jax.random.key(0), v0=v0)
  lan_err = [abs(np.linalg.eigvalsh(tridiagonal(long.alphas[:m], long.betas[:m - 1]))[-1] - lam)
             / abs(lam) for m in range(1, m_max + 1)]

  # The operator (a Partial holding params and batch) is an argument, not a
  # closed-over constant, so XLA does not constant-fold the data into the program.
  power_jit = jax.jit(lambda op, v, k: optax.power_iteration(op, v0=v, num_iters=k,
                                                             error_tolerance=0.0)[0])
  power = lambda k: power_jit(mv, v0, k)

  errs = {}
  def perr(k):
    if k not in errs:
      errs[k] = abs(float(power(k)) - lam) / abs(lam)
    return errs[k]

  out = {}
  for tol in cfg["eig_tols"]:
    lan = next((m for m, e in enumerate(lan_err, 1) if e <= tol), None)
    k, found = 1, None
    while k <= 512:  # capped: reported as '—' when not reached
      if perr(k) <= tol:
        lo, hi = k // 2, k  # bisect (power iteration error is not monotone; good enough)
        while hi - lo > 1:
          mid = (lo + hi) // 2
          lo, hi = (lo, mid) if perr(mid) <= tol else (mid, hi)
        found = hi
        break
      k *= 2
    # optax.power_iteration with num_iters=k spends k + 1 matvecs (one on v0).
    out[tol] = dict(lanczos_hvps=lan, power_iteration_hvps=None if found is None else found + 1)
  return out


def bench_costs(cfg, seed=0):
  """On a >= 1M-parameter MLP: HVP time / gradient time, and Lanczos time over its HVPs.

  Two HVP costs: one call of the operator (``jax.jvp`` of ``jax.grad``, primal
  included), and the amortized product inside a jitted loop of ``m`` products
  at the same point (``linearized``: tangent work only), which is what Lanczos
  pays. ``lanczos_overhead = t(Lanczos, m steps) / (m · t(HVP in a loop)) − 1``
  with full reorthogonalization (the default), float32, for each batch size in
  ``big_batches`` (the HVP's cost grows with the batch, the loop's does not).
  The loop's own cost is also timed with a diagonal matvec (≈ free) in place of
  the HVP: the reorthogonalization and vector work. The gradient's and the
  HVP's achieved FLOP/s are XLA's cost analysis of each compiled call over its
  measured time, with the MFU against the device's float32 peak on a GPU/TPU
  (`benchmarks.common.flop_columns`; "n/a (no accelerator peak)" on a CPU).
  """
  sizes = cfg["big_sizes"]
  params = mlp_init(seed, sizes)
  n = sum(a.size for a in jax.tree_util.tree_leaves(params))
  m = cfg["big_iters"]
  grad = jax.jit(jax.grad(loss_fn))
  v = jax.tree.map(jnp.ones_like, params)

  @jax.jit
  def hvp_loop(mv, u):
    lin = ops.linearized(mv)

    def body(i, w):
      w = lin(w)
      return optax.tree.scale(1.0 / optax.tree.norm(w), w)

    return jax.lax.fori_loop(0, m, body, u)

  diag = Partial(lambda d, u: jax.tree.map(jnp.multiply, d, u),
                 jax.tree.map(lambda a: jnp.linspace(0.0, 1.0, a.size).reshape(a.shape), params))
  t_loop, _ = timeit(lambda: lanczos(diag, params, m, jax.random.key(0)), 1)
  rows = []
  for b in cfg["big_batches"]:
    batch = make_data(seed + 1, sizes, b)
    mv = ops.hessian_vp(loss_fn, params, batch)
    block(grad(params, batch)), block(mv(v)), block(hvp_loop(mv, v))
    t_grad, t_hvp, t_in_loop = np.inf, np.inf, np.inf
    for _ in range(5):  # interleaved: load changes hit all alike
      t0 = time.perf_counter()
      block(grad(params, batch))
      t1 = time.perf_counter()
      block(mv(v))
      t2 = time.perf_counter()
      block(hvp_loop(mv, v))
      t3 = time.perf_counter()
      t_grad, t_hvp, t_in_loop = min(t_grad, t1 - t0), min(t_hvp, t2 - t1), min(t_in_loop, (t3 - t2) / m)
    t_lan, _ = timeit(lambda mv=mv: lanczos(mv, params, m, jax.random.key(0)), 2)
    grad_flops = common.compiled_flops(grad, params, batch)
    hvp_flops = common.compiled_flops(jax.jit(lambda mv, u: mv(u)), mv, v)
    rows.append(dict(batch=b, grad_s=t_grad, hvp_s=t_hvp, hvp_in_loop_s=t_in_loop,
                     hvp_over_grad=t_hvp / t_grad, hvp_in_loop_over_grad=t_in_loop / t_grad,
                     lanczos_s=t_lan, lanczos_overhead=t_lan / (m * t_in_loop) - 1.0,
                     loop_over_hvp=t_loop / (m * t_in_loop), grad_flops=grad_flops,
                     hvp_flops=hvp_flops, **common.flop_columns(grad_flops, t_grad, prefix="grad_"),
                     **common.flop_columns(hvp_flops, t_hvp, prefix="hvp_")))
  return dict(num_params=int(n), lanczos_iters=m, loop_s_per_step=t_loop / m, rows=rows)


def bench_first_call(cfg, skip_peer, host=None):
  """A cold top_eigenpairs(k=1), compile included, vs PyHessian's power iteration to tol 1e-3.

  Run first in the process, so nothing of ours is compiled yet. The MLP is
  trained briefly (its own train step compiles before the clock starts). The
  reference is a 150-step float32 Lanczos (n ~ 100k: the top Ritz value is
  converged far below 1e-3). PyHessian's time includes building its hessian
  object; its tol stops when the relative change of the estimate is < tol, which
  is not its error, so tol 1e-3 and 1e-4 are run, with torch on all cores and on
  one thread, and the fastest run whose error is <= 1e-3 is reported (only the
  first includes torch's warm-up, so this is PyHessian's best case). ``host`` is top_eigenpairs' argument (None: its automatic
  rule, the NumPy host path for these CPU params; False: the jitted device path).
  Each time comes with the process CPU time over the same interval
  (``time.process_time``: every thread of the process, torch's included), less
  sensitive than wall time to other jobs on a shared machine; the load average
  (1, 5, 15 min) is recorded before and after.
  """
  load_before = os.getloadavg()
  sizes = cfg["first_sizes"]
  params = train(mlp_init(3, sizes), make_data(4, sizes, cfg["first_batch"]), 20)
  batch = make_data(5, sizes, cfg["first_batch"])
  n = sum(a.size for a in jax.tree_util.tree_leaves(params))
  key = jax.random.key(0)
  block(params)

  def ours(num_iters=None):
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = top_eigenpairs(ops.hessian_vp(loss_fn, params, batch), params, k=1, key=key,
                           num_iters=num_iters, host=host)
    return time.perf_counter() - t0, time.process_time() - c0, float(pairs.eigenvalues[0])

  m = cfg["first_iters"]  # Lanczos reaches 1e-3 in far fewer products than power iteration
  t_first, c_first, lam_first = ours(m)
  t_warm, c_warm, _ = ours(m)
  # the default num_iters (60 for k=1): a new compile on the device path
  t_new_iters, c_new_iters, lam_default = ours()
  ref = lanczos(ops.hessian_vp(loss_fn, params, batch), params, min(150, n), jax.random.key(9))
  lam = float(np.linalg.eigvalsh(tridiagonal(ref.alphas, ref.betas))[-1])
  out = dict(num_params=int(n), batch=cfg["first_batch"], num_iters=m, host=host,
             ours_first_s=t_first, ours_first_cpu_s=c_first, ours_warm_s=t_warm,
             ours_warm_cpu_s=c_warm, ours_new_num_iters_s=t_new_iters,
             ours_new_num_iters_cpu_s=c_new_iters,
             ours_rel_err=abs(lam_first - lam) / abs(lam),
             ours_default_iters_rel_err=abs(lam_default - lam) / abs(lam), reference_lam=lam)
  _, note, build = torch_side(params, batch, skip_peer)
  if build is not None:
    import torch
    runs = []
    # torch with every core (torch_side's setting), then with one thread: on a shared
    # machine its thread team can spin against other jobs (measured at load ~20: 5 s CPU
    # with 2 threads against 0.15 s with one for the same run), so its best is reported
    for threads in dict.fromkeys((torch.get_num_threads(), 1)):
      torch.set_num_threads(threads)
      for tol in (1e-3, 1e-4):  # its tol bounds the change per iteration, not the error
        torch.manual_seed(0)
        t0, c0 = time.perf_counter(), time.process_time()
        vals, _ = build().eigenvalues(maxIter=1000, tol=tol, top_n=1)
        runs.append(dict(tol=tol, threads=threads, time_s=time.perf_counter() - t0,
                         cpu_s=time.process_time() - c0,
                         rel_err=abs(float(vals[0]) - lam) / abs(lam)))
    torch.set_num_threads(runs[0]["threads"])
    out["pyhessian_runs"] = runs
    ok = [r for r in runs if r["rel_err"] <= 1e-3]
    best = min(ok, key=lambda r: r["time_s"]) if ok else runs[-1]
    out["pyhessian_s"], out["pyhessian_rel_err"] = best["time_s"], best["rel_err"]
    out["pyhessian_cpu_s"], out["pyhessian_tol"] = best["cpu_s"], best["tol"]
    out["pyhessian_threads"] = best["threads"]
  else:
    out["pyhessian_note"] = note
  out["load_before"], out["load_after"] = list(load_before), list(os.getloadavg())
  if cfg["cold_rounds"]:
    out["cold"] = cold_vs_cold(cfg, params, batch, lam, skip_peer or build is None)
  return out


COLD_PROBES = ("jaxlab", "jaxlab_tol", "jaxlab_tol_quick", "jaxlab_eig_quick",
               "jaxlab_eig_quick_seed", "pyhessian_tol1e-3", "pyhessian_tol1e-4",
               "pyhessian_tol1e-4_all_threads")


def cold_vs_cold(cfg, params, batch, lam, skip_peer):
  """Each probe as the first one of a fresh process, ``cold_rounds`` rounds, probes interleaved.

  In the process, the model is set up outside the clock (params and batch loaded from a file
  and placed; for PyHessian the torch module built, no forward pass), then one probe is
  timed, wall and process CPU: ours ``top_eigenpairs(k=1, num_iters=first_iters)`` as is,
  with ``tol=first_tol``, with ``tol`` and ``quick_compile=True``, with those and
  ``tol_kind="eigenvalue"`` (``_eig_quick``), and the same with the int seed ``key=0``
  instead of ``jax.random.key(0)`` (``_eig_quick_seed``: the same start vector, without
  the key's seeding compile); XLA's first compile in the process, and the key's creation,
  included; PyHessian's ``eigenvalues(tol)`` at tol 1e-3 and 1e-4 on one torch thread
  (torch's first autograd pass included), and at tol 1e-4 with torch's threads on every core
  (``_all_threads``: faster than one thread on an idle machine, slower on a loaded one).
  """
  import subprocess
  import tempfile

  probes = [p for p in COLD_PROBES if not (skip_peer and p.startswith("pyhessian"))]
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "first_call.npz")
    arrays = {f"{k}{i}": np.asarray(layer[k]) for i, layer in enumerate(params) for k in "wb"}
    np.savez(path, x=np.asarray(batch[0]), y=np.asarray(batch[1]), num_iters=cfg["first_iters"],
             tol=cfg["first_tol"], layers=len(params), **arrays)
    for r in range(cfg["cold_rounds"]):
      for which in probes:
        load = os.getloadavg()
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--cold-probe", which,
                               "--cold-data", path], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
          raise RuntimeError(f"cold probe {which} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(round=r, load_before=list(load), rel_err=abs(row["lam"] - lam) / abs(lam))
        runs.append(row)
  summary = {}
  for which in probes:
    rs = [x for x in runs if x["which"] == which]
    summary[which] = dict(time_s=[x["time_s"] for x in rs], cpu_s=[x["cpu_s"] for x in rs],
                          rel_err=max(x["rel_err"] for x in rs),
                          num_iters=[x.get("num_iters") for x in rs])
  return dict(runs=runs, summary=summary)


def cold_probe(which, path):
  """One probe of :func:`cold_vs_cold`, run as the first in this process; returns its row."""
  if which not in COLD_PROBES:
    raise ValueError(f"--cold-probe is {which!r}; allowed: {', '.join(COLD_PROBES)}")
  d = np.load(path)
  params = [{"w": jnp.asarray(d[f"w{i}"]), "b": jnp.asarray(d[f"b{i}"])}
            for i in range(int(d["layers"]))]
  batch = (jnp.asarray(d["x"]), jnp.asarray(d["y"]))
  block((params, batch))
  m, tol = int(d["num_iters"]), float(d["tol"])
  row = dict(which=which)
  if which.startswith("jaxlab"):
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = top_eigenpairs(ops.hessian_vp(loss_fn, params, batch), params, k=1,
                           key=0 if which.endswith("_seed") else jax.random.key(0),
                           num_iters=m, tol=None if which == "jaxlab" else tol,
                           quick_compile=which.endswith(("_quick", "_quick_seed")),
                           tol_kind="eigenvalue" if "_eig" in which else "residual")
    lam = float(pairs.eigenvalues[0])
    row.update(num_iters=pairs.num_iters)
  else:
    torch, _, build = torch_side(params, batch, check=False)  # torch on every core
    if not which.endswith("_all_threads"):
      torch.set_num_threads(1)
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    tol = float(which.split("tol")[1].split("_")[0])
    vals, _ = build().eigenvalues(maxIter=1000, tol=tol, top_n=1)
    lam = float(vals[0])
  row.update(time_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, lam=lam)
  return row


def _rel_errs(vals, ref, k):
  """Max relative error of the top-k values (descending) against the reference's top-k."""
  vals = np.sort(np.asarray(vals, np.float64))[::-1][:k]
  if vals.size < k:
    return np.inf
  return float(np.max(np.abs(vals - ref[:k]) / np.abs(ref[:k])))


def bench_big(cfg, skip_peer):
  """Top-1 and top-5 Hessian eigenvalues of the ~1.1M-parameter MLP: time to rel err <= big_tol.

  The --costs-only model (``big_sizes``, batch ``big_batches[0]``), trained
  ``big_train_steps`` Adam steps so the Hessian has its ~C outliers; weights
  copied into torch. Reference: a ``big_ref``-step float32 Lanczos from another
  start (full reorthogonalization; its top Ritz values move by far less than
  1e-3 between ``big_ref`` * 2/3 and ``big_ref`` steps, printed). Each side's
  error is the max over the top k of |θ_i − λ_i| / |λ_i|.

  * ours: ``top_eigenpairs(k, num_iters=m)``, m the smallest of ``big_grid``
    whose prefix of one long Lanczos run (same key) reaches the target; timed
    cold (compile included) and warm; the error reported is that of the timed call.
  * hessian-eigenthings: its ``lanczos(k, max_iter=m, reorthogonalize=True,
    which="LA")``, m chosen the same way from a long ``lanczos_tridiagonal``
    run with its own start vector (same seed).
  * PyHessian: ``eigenvalues(top_n=k)`` (deflated power iteration, at most
    ``big_py_iters`` products per eigenvalue); its tol bounds the change per
    iteration, not the error, so tol 1e-3 runs first and 1e-4 only if 1e-3
    missed the target.
  """
  sizes, b, tol = cfg["big_sizes"], cfg["big_batches"][0], cfg["big_tol"]
  params = train(mlp_init(0, sizes), make_data(1, sizes, b), cfg["big_train_steps"])
  batch = make_data(1, sizes, b)
  n = sum(a.size for a in jax.tree_util.tree_leaves(params))
  block(params)
  mv = ops.hessian_vp(loss_fn, params, batch)
  kmax = max(cfg["big_ks"])
  out = dict(num_params=int(n), batch=b, tol=tol, ks=list(cfg["big_ks"]))

  t0 = time.perf_counter()  # ours, first call: nothing for this model is compiled yet
  first = top_eigenpairs(mv, params, k=1, key=jax.random.key(0), num_iters=cfg["big_grid"][0])
  out["ours_first_call_s"], out["ours_first_call_iters"] = (time.perf_counter() - t0,
                                                            cfg["big_grid"][0])
  t0 = time.perf_counter()
  r = lanczos(mv, params, min(cfg["big_ref"], n), jax.random.key(123))
  T = tridiagonal(r.alphas, r.betas)
  ref = np.sort(np.linalg.eigvalsh(T))[::-1][:kmax]
  m2 = (2 * len(r.alphas)) // 3
  ref_m2 = np.sort(np.linalg.eigvalsh(tridiagonal(r.alphas[:m2], r.betas[:m2 - 1])))[::-1][:kmax]
  out["reference"] = dict(eigenvalues=ref.tolist(), iters=len(r.alphas),
                          time_s=time.perf_counter() - t0,
                          change_from_iters=m2,
                          max_rel_change=float(np.max(np.abs(ref_m2 - ref) / np.abs(ref))))
  out["first_call_rel_err"] = _rel_errs(first.eigenvalues, ref, 1)
  grid = [m for m in cfg["big_grid"] if m <= n]

  def pick(prefix_vals, k):
    return next((m for m in grid if _rel_errs(prefix_vals(m), ref, k) <= tol), None)

  long = lanczos(mv, params, max(grid), jax.random.key(0))
  ours_vals = lambda m: np.linalg.eigvalsh(tridiagonal(long.alphas[:m], long.betas[:m - 1]))
  out["ours"] = {}
  for k in cfg["big_ks"]:
    m = pick(ours_vals, k)
    row = dict(iters=m, prefix_errs={mm: _rel_errs(ours_vals(mm), ref, k) for mm in grid})
    if m is not None:
      call = lambda m=m, k=k: top_eigenpairs(mv, params, k=k, key=jax.random.key(0), num_iters=m)
      t0 = time.perf_counter()
      call()
      row["cold_s"] = time.perf_counter() - t0  # a new (k, m): compiles
      t, pairs = timeit(call, 1, warmup=False)
      row.update(time_s=t, rel_err=_rel_errs(pairs.eigenvalues, ref, k))
    out["ours"][k] = row

  _, note, build = torch_side(params, batch, skip_peer)
  if build is None:
    out["peer_note"] = note
    return out
  import torch

  # hessian-eigenthings (torch): Lanczos with a Python loop over its basis.
  try:
    import hessian_eigenthings as he
  except ImportError as e:
    out["eigenthings_note"] = f"hessian-eigenthings not installed ({e!r}): skipped"
  else:
    model, crit, x, y = build.torch_model
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(crit))
    gen = torch.Generator(device="cpu").manual_seed(0)
    v0 = torch.randn(op.size, dtype=op.dtype, generator=gen)  # what lanczos(seed=0) draws
    td = he.lanczos_tridiagonal(op, v0, max(grid), reorthogonalize=True)
    a, bb = td.alphas.double().numpy(), td.betas.double().numpy()
    he_vals = lambda m: np.linalg.eigvalsh(tridiagonal(a[:m], bb[:m - 1]))
    out["eigenthings"], out["eigenthings_version"] = {}, he.__version__
    for k in cfg["big_ks"]:
      m = pick(he_vals, k)
      row = dict(iters=m, prefix_errs={mm: _rel_errs(he_vals(mm), ref, k) for mm in grid})
      if m is not None:
        t0 = time.perf_counter()
        res = he.lanczos(op, k=k, max_iter=m, reorthogonalize=True, which="LA", seed=0)
        row.update(time_s=time.perf_counter() - t0,
                   rel_err=_rel_errs(res.eigenvalues.double().numpy(), ref, k))
      out["eigenthings"][k] = row

  out["pyhessian"] = {}
  for k in cfg["big_ks"]:
    runs = []
    for py_tol in (1e-3, 1e-4):
      torch.manual_seed(0)
      t0 = time.perf_counter()
      vals, _ = build().eigenvalues(maxIter=cfg["big_py_iters"], tol=py_tol, top_n=k)
      runs.append(dict(tol=py_tol, time_s=time.perf_counter() - t0,
                       rel_err=_rel_errs(vals, ref, k)))
      if runs[-1]["rel_err"] <= tol:
        break
    ok = [r for r in runs if r["rel_err"] <= tol]
    out["pyhessian"][k] = dict(runs=runs, time_s=min(r["time_s"] for r in ok) if ok else None)
  return out


def print_big(g):
  tol = g["tol"]
  print(f"\nbig row: top-k Hessian eigenvalues of a {g['num_params']}-parameter MLP (batch "
        f"{g['batch']}), time to max rel err <= {tol:g} over the top k; reference "
        f"{g['reference']['iters']}-step float32 Lanczos ({g['reference']['time_s']:.0f} s; top "
        f"{len(g['reference']['eigenvalues'])} moved {g['reference']['max_rel_change']:.1e} from "
        f"step {g['reference']['change_from_iters']}): "
        + ", ".join(f"{v:.6g}" for v in g["reference"]["eigenvalues"]))
  print("| k | jaxlab top_eigenpairs s (steps; first call of this k, steps) | "
        "hessian-eigenthings lanczos s (steps) | "
        "PyHessian eigenvalues s (tol) |")
  print("|---|---|---|---|")
  for k in g["ks"]:
    o = g["ours"][k]
    ours = "— (not reached)" if o["iters"] is None else (
        f"{o['time_s']:.2f} ({o['iters']}; first {o['cold_s']:.2f}), err {o['rel_err']:.1e}")
    e = g.get("eigenthings", {}).get(k)
    he = g.get("eigenthings_note", g.get("peer_note", "—")) if e is None else (
        "— (not reached)" if e["iters"] is None else
        f"{e['time_s']:.2f} ({e['iters']}), err {e['rel_err']:.1e}")
    p = g.get("pyhessian", {}).get(k)
    py = g.get("peer_note", "—") if p is None else (
        ("—" if p["time_s"] is None else f"{p['time_s']:.2f}") + " [" + "; ".join(
            f"tol {r['tol']:g}: {r['time_s']:.1f} s, err {r['rel_err']:.1e}"
            for r in p["runs"]) + "]")
    print(f"| {k} | {ours} | {he} | {py} |")
  print(f"ours first call (k=1, {g['ours_first_call_iters']} steps, compile included): "
        f"{g['ours_first_call_s']:.2f} s, err {g['first_call_rel_err']:.1e}")


def _fused_hvp(loss, params, batch, v):
  return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v,))[1]


def bench_cnn(cfg):
  """Per-call time (after compile) of Lanczos on SmallCNN: one batch vs a list of batches.

  SmallCNN in eval mode at its initial batch statistics (the contract loss at
  fixed state). ``plain Partial`` passes the user's own forward-over-reverse
  HVP as a ``Partial``, and ``preconditioned`` the Adam-preconditioned operator
  of :mod:`jaxlab.spectral.batch_lr` (D = 2 everywhere): both once ran inside
  Lanczos's jitted while loop (27-29x slower on this model); all rows are now
  driven from Python, one compiled product per step.
  """
  from sklearn.datasets import load_digits

  from jaxlab.models import cnn
  from jaxlab.spectral import batch_lr

  d = load_digits()
  n = cfg["cnn_examples"]
  x = jnp.asarray((d.images[:n, :, :, None] / 16.0).astype(np.float32))
  y = jnp.asarray(d.target[:n].astype(np.int32))
  model = cnn.SmallCNN(features=tuple(cfg["cnn_features"]))
  params, state = cnn.linen_init(model, jax.random.key(0), x[:2])
  loss = cnn.linen_classifier_loss(model)
  batch = {"x": x, "y": y}
  k = cfg["cnn_batches"]
  cut = np.linspace(0, n, k + 1).astype(int)
  parts = [{"x": x[a:b], "y": y[a:b]} for a, b in zip(cut[:-1], cut[1:], strict=True)]
  m = cfg["cnn_iters"]
  n_params = sum(a.size for a in jax.tree_util.tree_leaves(params))
  forms = {"one batch": lambda: ops.hessian_vp(loss, params, batch, state=state),
           "[batch]": lambda: ops.hessian_vp(loss, params, [batch], state=state),
           f"{k} batches": lambda: ops.hessian_vp(loss, params, parts, state=state),
           "plain Partial": lambda: Partial(
               _fused_hvp, ops.probe_loss(loss, state=state), params, batch),
           "preconditioned": lambda: batch_lr.preconditioned_hessian_vp(
               ops.probe_loss(loss, state=state), params, batch,
               jax.tree.map(lambda a: jnp.full_like(a, 2.0), params))}
  rows = {}
  runs = {name: (lambda make=make: block(lanczos(make(), params, m, jax.random.key(0)).alphas))
          for name, make in forms.items()}
  for name, run in runs.items():
    t0 = time.perf_counter()
    run()
    rows[name] = dict(first_s=time.perf_counter() - t0, warm_s=np.inf)
  for _ in range(cfg["cnn_repeats"]):  # round robin: load changes hit every form alike
    for name, run in runs.items():
      t0 = time.perf_counter()
      run()
      rows[name]["warm_s"] = min(rows[name]["warm_s"], time.perf_counter() - t0)
  single, listed = rows["one batch"]["warm_s"], rows["[batch]"]["warm_s"]
  return dict(num_params=int(n_params), examples=n, lanczos_iters=m, rows=rows,
              single_over_list=single / listed,
              single_over_k_batches=single / rows[f"{k} batches"]["warm_s"],
              partial_over_single=rows["plain Partial"]["warm_s"] / single,
              preconditioned_over_single=rows["preconditioned"]["warm_s"] / single)


def print_first_call(f):
  py = f.get("pyhessian_s")
  print(f"\nfirst call, top eigenvalue of a {f['num_params']}-parameter MLP (batch {f['batch']}), "
        f"compile included (load average {fmt_load(f['load_before'])} before, "
        f"{fmt_load(f['load_after'])} after):")
  print(f"| | jaxlab top_eigenpairs(k=1, num_iters={f['num_iters']}, host={f['host']}) | "
        f"PyHessian eigenvalues(tol={f.get('pyhessian_tol', 1e-3):g}, "
        f"{f.get('pyhessian_threads')} torch threads), the fastest run reaching rel err <= 1e-3 |")
  print("|---|---|---|")
  print(f"| first call s (ours cold, compile included) | {f['ours_first_s']:.2f} | "
        f"{fmt(py, '.2f')} |")
  print(f"| first call, process CPU s | {f['ours_first_cpu_s']:.2f} | "
        f"{fmt(f.get('pyhessian_cpu_s'), '.2f')} |")
  print(f"| rel err vs 150-step Lanczos | {f['ours_rel_err']:.1e} | "
        f"{fmt(f.get('pyhessian_rel_err'), '.1e')} |")
  print(f"| warm call s (CPU s) | {f['ours_warm_s']:.2f} ({f['ours_warm_cpu_s']:.2f}) | — |")
  print(f"| default num_iters (60; a new compile on the device path): s, rel err | "
        f"{f['ours_new_num_iters_s']:.2f}, "
        f"{f['ours_default_iters_rel_err']:.1e} | — |")
  for r in f.get("pyhessian_runs", []):
    print(f"  PyHessian tol {r['tol']:g}, {r['threads']} threads: {r['time_s']:.2f} s "
          f"({r['cpu_s']:.2f} s CPU), rel err {r['rel_err']:.1e}")
  if f.get("pyhessian_runs"):
    print("  (the first PyHessian run includes torch's own warm-up)")
  if "pyhessian_note" in f:
    print(f"  ({f['pyhessian_note']})")
  if "cold" in f:
    print("\ncold vs cold: each probe the first in a fresh process (model set up outside the "
          "clock); wall s / CPU s per round:")
    print("| probe | " + " | ".join(f"round {r + 1}" for r in range(len(
        next(iter(f["cold"]["summary"].values()))["time_s"]))) + " | max rel err |")
    print("|---|" + "---|" * (1 + len(next(iter(f["cold"]["summary"].values()))["time_s"])))
    for which, x in f["cold"]["summary"].items():
      cells = " | ".join(f"{t:.2f} / {c:.2f}" for t, c in zip(x["time_s"], x["cpu_s"],
                                                               strict=True))
      print(f"| {which} | {cells} | {x['rel_err']:.1e} |")


def fmt_load(la):
  return " / ".join(f"{x:.1f}" for x in la)


def print_cnn(c):
  print(f"\nCNN: {c['lanczos_iters']} Lanczos steps on SmallCNN ({c['num_params']} parameters), "
        f"{c['examples']} digits, eval mode; per call after compile:")
  print("| operator | first call s | per call s |")
  print("|---|---|---|")
  for name, r in c["rows"].items():
    print(f"| {name} | {r['first_s']:.2f} | {r['warm_s']:.3f} |")
  print(f"one batch / [batch] = {c['single_over_list']:.2f}x (target <= 1.2x); one batch / "
        f"list of batches = {c['single_over_k_batches']:.2f}x; plain Partial / one batch = "
        f"{c['partial_over_single']:.2f}x; preconditioned / one batch = "
        f"{c['preconditioned_over_single']:.2f}x")


# ---------------------------------------------------------------------------


def print_costs(c):
  print(f"\ncosts on a {c['num_params']}-parameter MLP; {c['lanczos_iters']} Lanczos steps, full "
        f"reorthogonalization; the loop alone (diagonal matvec) {c['loop_s_per_step'] * 1e3:.1f} ms/step")
  print("| batch | gradient ms | HVP ms (one call / in a loop) | HVP/grad (one call / in a loop) "
        "| Lanczos s | overhead over its HVPs |")
  print("|---|---|---|---|---|---|")
  for r in c["rows"]:
    print(f"| {r['batch']} | {r['grad_s'] * 1e3:.1f} | {r['hvp_s'] * 1e3:.1f} / "
          f"{r['hvp_in_loop_s'] * 1e3:.1f} | {r['hvp_over_grad']:.2f}x / {r['hvp_in_loop_over_grad']:.2f}x "
          f"(target <= 2) | {r['lanczos_s']:.2f} | {100 * r['lanczos_overhead']:.1f}% (target <= 10%) |")
  print("\n| batch | gradient GFLOP / GFLOP/s / MFU | HVP GFLOP / GFLOP/s / MFU |")
  print("|---|---|---|")
  gf = lambda x: "n/a" if x is None else f"{x / 1e9:.3g}"
  for r in c["rows"]:
    print(f"| {r['batch']} | {gf(r['grad_flops'])} / {gf(r['grad_flop_per_s'])} / "
          f"{common.mfu_text(r['grad_mfu'])} | {gf(r['hvp_flops'])} / "
          f"{gf(r['hvp_flop_per_s'])} / {common.mfu_text(r['hvp_mfu'])} |")
  mfus = [r[k] for r in c["rows"] for k in ("grad_mfu", "hvp_mfu")]
  if not any(isinstance(x, float) for x in mfus):
    print(f"MFU: {mfus[0]}")


def clean(o):
  """JSON-ready: string keys, Python scalars."""
  if isinstance(o, dict):
    return {str(k): clean(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [clean(v) for v in o]
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  return o


def fmt(x, spec=".3g"):
  return "—" if x is None else format(x, spec)


def ratio(a, b):
  return None if (a is None or b is None or b == 0) else a / b


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny model; seconds; torch optional")
  ap.add_argument("--skip-peer", action="store_true", help="do not run PyHessian")
  ap.add_argument("--costs-only", action="store_true",
                  help="only the HVP/gradient and Lanczos-overhead measurements (writes "
                       "spectral_costs[_quick].json)")
  ap.add_argument("--batches", default=None,
                  help="with --costs-only: comma list of batch sizes (default: the config's "
                       "big_batches)")
  ap.add_argument("--only", default=None,
                  help=f"comma list of rows to run alone ({', '.join(ROWS)}); writes "
                       "spectral_rows[_quick].json")
  ap.add_argument("--first-call-host", default="auto", choices=("auto", "host", "device"),
                  help="top_eigenpairs' host argument in the first_call row: auto (None, its "
                       "rule), host (True) or device (False)")
  ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/spectral"
                  "[_quick].json)")
  ap.add_argument("--cold-probe", default=None, help=argparse.SUPPRESS)  # cold_vs_cold's child
  ap.add_argument("--cold-data", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.cold_probe is not None:
    row = cold_probe(args.cold_probe, args.cold_data)
    print(json.dumps(row))
    return row
  cfg = QUICK if args.quick else FULL
  first_host = {"auto": None, "host": True, "device": False}[args.first_call_host]
  if args.batches is not None:
    try:
      batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
      batches = ()
    if not batches or min(batches) < 1 or not args.costs_only:
      ap.error(f"--batches {args.batches!r}; allowed: a comma list of ints >= 1, with --costs-only")
    cfg = dict(cfg, big_batches=batches)
  out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      "spectral_quick.json" if args.quick else "spectral.json")

  only = None if args.only is None else [r for r in args.only.split(",") if r]
  if only is not None and (not only or any(r not in ROWS for r in only)):
    ap.error(f"--only {args.only!r}; allowed: a comma list of {', '.join(ROWS)}")
  if only is not None:
    res = {}
    if "first_call" in only:
      res["first_call"] = bench_first_call(cfg, args.skip_peer, first_host)
      print_first_call(res["first_call"])
    if "cnn" in only:
      res["cnn"] = bench_cnn(cfg)
      print_cnn(res["cnn"])
    if "big" in only:
      res["big"] = bench_big(cfg, args.skip_peer)
      print_big(res["big"])
    path = args.out or out_path.replace("spectral", "spectral_rows")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(clean(dict(config=cfg, platform=platform.platform(), jax=jax.__version__, **res)),
                f, indent=1)
    print(f"\nwrote {path}")
    return res

  if args.costs_only:
    costs = bench_costs(cfg)
    print_costs(costs)
    path = args.out or out_path.replace("spectral", "spectral_costs")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(dict(config=cfg, platform=platform.platform(), jax=jax.__version__,
                     costs=costs), f, indent=1)
    print(f"\nwrote {path}")
    return dict(costs=costs)

  # first: nothing of ours compiled yet
  first_call = bench_first_call(cfg, args.skip_peer, first_host)
  sizes = cfg["sizes"]
  params = mlp_init(0, sizes)
  batch = make_data(1, sizes, cfg["batch"])
  params = train(params, batch, cfg["train_steps"])
  n = sum(a.size for a in jax.tree_util.tree_leaves(params))
  print(f"MLP {sizes} tanh, {n} parameters, batch {cfg['batch']}, loss "
        f"{float(loss_fn(params, batch)):.4f}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPU threads")
  t0 = time.perf_counter()
  ref = references(params, batch, cfg, n)
  print(f"reference ({ref['how']}, {time.perf_counter() - t0:.1f}s): lambda_max "
        f"{ref['lam_max']:.8g}, trace {ref['trace']:.6g} ± {ref['trace_se']:.2g}")
  torch_mod, note, build = torch_side(params, batch, args.skip_peer)
  if torch_mod is not None:
    import pyhessian  # noqa: F401
    print(f"peer: PyHessian (torch {torch_mod.__version__}, CPU)")
  else:
    print(f"peer: none ({note})")

  res = dict(config={k: v for k, v in cfg.items()}, num_params=int(n), reference=ref,
             peer_note=note, platform=platform.platform(), jax=jax.__version__)
  res["eigen"] = bench_eigen(params, batch, ref, cfg, n, build)
  res["trace"] = bench_trace(params, batch, ref, cfg, build)
  res["density"] = bench_density(params, batch, ref, cfg, n, build)
  res["power_iteration"] = bench_power_iteration(params, batch, ref, cfg, n)
  res["costs"] = bench_costs(cfg)
  res["first_call"] = first_call
  res["cnn"] = bench_cnn(cfg)
  res["big"] = bench_big(cfg, args.skip_peer)

  rows = []
  for tol in cfg["eig_tols"]:
    a, b = res["eigen"]["pyhessian"][tol], res["eigen"]["ours"][tol]
    rows.append((f"top eigenvalue, rel err <= {tol:g}", b, a, ratio(a, b)))
  for tol in cfg["trace_tols"]:
    a, b = res["trace"]["pyhessian"][tol], res["trace"]["ours"][tol]
    rows.append((f"trace (Hutch++), RMS rel err <= {tol:g}", b, a, ratio(a, b)))
  for tol in cfg["trace_tols"]:
    a, b = res["trace"]["pyhessian"][tol], res["trace"]["ours_hutchinson"][tol]
    rows.append((f"trace (our Hutchinson), RMS rel err <= {tol:g}", b, a, ratio(a, b)))
  d = res["density"]
  rows.append((f"density SLQ {d['iters']} iters x {d['draws']} draws", d["ours_time_s"],
               d.get("pyhessian_time_s"), ratio(d.get("pyhessian_time_s"), d["ours_time_s"])))
  print("\n| probe (time to accuracy) | jaxlab s | PyHessian s | speed-up |")
  print("|---|---|---|---|")
  for name, ours, py, r in rows:
    print(f"| {name} | {fmt(ours)} | {fmt(py)} | {fmt(r, '.1f') + 'x' if r else '—'} |")
  print("\nagreement:")
  e = res["eigen"]
  if e["pyhessian_runs"]:
    best = min(e["pyhessian_runs"], key=lambda r: r["rel_err"])
    print(f"  top eigenvalue: PyHessian best rel err {best['rel_err']:.2g} (tol {best['tol']:g}, "
          f"{best['time_s']:.2f}s); jaxlab best {min(r['rel_err'] for r in e['ours_runs']):.2g}")
  t = res["trace"]
  print(f"  trace vs exact {ref['trace']:.6g}, RMS relative error over {cfg['trace_seeds']} seeds "
        f"(matvecs: RMS err, median time):")
  show = lambda rs: ", ".join(f"{r['matvecs']}: {r['rms_rel_err']:.2g} {r['time_s']:.2f}s" for r in rs)
  print(f"    jaxlab Hutch++      {show(t['ours_runs'])}")
  print(f"    jaxlab Hutchinson   {show(t['ours_hutchinson_runs'])}  "
        f"({t['ours_ms_per_matvec']:.2f} ms/matvec)")
  if t["pyhessian_runs"]:
    print(f"    PyHessian tol=0     {show(t['pyhessian_runs'])}  "
          f"({t['pyhessian_ms_per_matvec']:.2f} ms/matvec)")
    print("    PyHessian own tol   " + ", ".join(
        f"tol {r['tol']:g}: {r['matvecs']} matvecs, {r['rms_rel_err']:.2g} {r['time_s']:.2f}s"
        for r in t["pyhessian_tol_runs"]))
  print(f"  density moments (m1, m2): jaxlab {[round(x, 5) for x in d['ours_moments']]}, "
        f"PyHessian {[round(x, 5) for x in d.get('pyhessian_moments', [])]}, exact m1 "
        f"{d['exact_m1']:.5g}" + (f", m2 {d['exact_m2']:.5g}" if d["exact_m2"] else ""))
  print("\nHVPs to reach a relative tolerance on lambda_max (same operator, float32):")
  print("| tol | Lanczos (top_eigenpairs) | optax.power_iteration |")
  print("|---|---|---|")
  for tol, v in res["power_iteration"].items():
    print(f"| {tol:g} | {fmt(v['lanczos_hvps'])} | {fmt(v['power_iteration_hvps'])} |")
  print_costs(res["costs"])
  print_first_call(res["first_call"])
  print_cnn(res["cnn"])
  print_big(res["big"])
  res["table"] = [dict(probe=nm, jaxlab_s=o, pyhessian_s=p, speedup=r) for nm, o, p, r in rows]
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)

  with open(out_path, "w") as f:
    json.dump(clean(res), f, indent=1)
  print(f"\nwrote {out_path}")
  return res


if __name__ == "__main__":
  main()
