"""NTK throughput: jaxlab's empirical and analytic kernels against a peer, same inputs, one run.

    python -m benchmarks.ntk [--quick] [--out PATH]

The peer is neural-tangents (`peers` extra) when it imports beside our JAX.
neural-tangents 0.6.5 does not: its `neural_tangents.experimental` imports
`jax.experimental.jax2tf`, which needs TensorFlow (and with TensorFlow present
fails on JAX internals removed since). The benchmark records that import error
and compares instead against:
  * empirical NTK: a plain `jax.jacobian` contraction over the flattened
    parameter vector (`ravel_pytree`), J1 J2^T — the textbook method;
  * analytic kernel: a plain numpy evaluation of the same arc-cosine formulas.
Values must agree to 1e-5 (relative to the kernel's scale); the JSON records
times, pairs/s and the max deviation. Results: benchmarks/results/ntk.json.

The "auto" rows time `empirical_ntk`'s two methods and method="auto" on the
(N, N) traced kernel of `models.mlp` (NTK parametrization, two hidden layers)
and of `models.SmallCNN` (eval mode, with its batch_stats as state), each
method with a fresh apply_fn so that its first call pays its compiles:
`auto_first_call_overhead_s` is auto's first call minus the first call of the
method it picked (the probe's compiles and timings). Measured on a shared
2-core CPU (full sizes, N = 64): MLP 285k params, jacobian 4.33 s, ntvp 1.94 s,
auto 1.14 s (picks ntvp; overhead 2.7 s once); SmallCNN 5k params, jacobian
0.198 s, ntvp 2.53 s, auto 0.205 s (picks jacobian; overhead 7.3 s once). On
the two-layer nets with 10 outputs (full kernel) ntvp is 3.5-4x faster than
jacobian; with one output they are within 25%.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from benchmarks import common
from jaxlab import models, ntk


def peer_status() -> tuple[object | None, str]:
  try:
    import neural_tangents as nt  # noqa: F401
  except Exception as e:  # any import failure means: no peer
    return None, f"neural_tangents import failed: {type(e).__name__}: {e}"
  return nt, f"neural_tangents {getattr(nt, '__version__', '?')}"


def _dense_jacobian_ntk(apply_fn, params, x1, x2):
  flat, unravel = ravel_pytree(params)
  f1 = lambda v: apply_fn(unravel(v), x1)
  f2 = lambda v: apply_fn(unravel(v), x2)
  j1, j2 = jax.jacobian(f1)(flat), jax.jacobian(f2)(flat)  # (N, O, P)
  return jnp.einsum("iop,jqp->ijoq", j1, j2)


def _numpy_kernels(x1, x2, sw=1.0, sb=1.0, sa=1.0):
  d = x1.shape[1]
  s12 = sw**2 * x1 @ x2.T / d + sb**2
  s11 = sw**2 * np.sum(x1 * x1, 1) / d + sb**2
  s22 = sw**2 * np.sum(x2 * x2, 1) / d + sb**2
  norm = np.sqrt(np.outer(s11, s22))
  cos = np.clip(s12 / norm, -1, 1)
  th = np.arccos(cos)
  k = sa**2 / (2 * np.pi) * norm * (np.sin(th) + (np.pi - th) * cos)
  return k, k + s12 * sa**2 * (np.pi - th) / (2 * np.pi)


def bench_empirical(n, d, width, n_out, repeats, nt=None):
  key = jax.random.key(0)
  params = ntk.init_two_layer(key, d, width, n_out)
  x1 = jax.random.normal(jax.random.fold_in(key, 1), (n, d))
  x2 = jax.random.normal(jax.random.fold_in(key, 2), (n, d))
  apply = ntk.apply_two_layer
  dense = jax.jit(_dense_jacobian_ntk, static_argnums=0)
  ref = dense(apply, params, x1, x2).block_until_ready()
  row = dict(kind="empirical", n=n, d=d, width=width, outputs=n_out,
             params=int(sum(p.size for p in jax.tree_util.tree_leaves(params))))
  row["t_plain_jacobian"] = common.median_time(
      lambda: dense(apply, params, x1, x2).block_until_ready(), repeats)
  scale = float(jnp.abs(ref).max())
  for method in ("jacobian", "ntvp"):
    got = ntk.empirical_ntk(apply, params, x1, x2, method=method, trace_axes=()).block_until_ready()
    row[f"t_{method}"] = common.median_time(
        lambda m=method: ntk.empirical_ntk(apply, params, x1, x2, method=m,
                                           trace_axes=()).block_until_ready(),
        repeats)
    row[f"maxdev_{method}"] = float(jnp.abs(got - ref).max()) / scale
  row["jacobian_fits_1gib"] = ntk.choose_method(n, n, n_out, row["params"]) == "jacobian"
  row["speedup_jacobian_vs_plain"] = row["t_plain_jacobian"] / row["t_jacobian"]
  return row


def _auto_model(kind, quick):
  """(make_apply, params, state, x): make_apply() returns a new function object each call, so
  that the jit caches and "auto"'s cache miss (a first call pays every compile)."""
  key = jax.random.key(0)
  if kind == "mlp":
    d, width = (16, 128) if quick else (32, 512)
    model = models.mlp(d, (width, width), 10, parametrization="ntk", weight_std=1.4, bias_std=0.1)
    x = jax.random.normal(jax.random.fold_in(key, 1), (16 if quick else 64, d))
    return (lambda: (lambda p, x: model.apply(p, x))), model.init(key), None, x
  cnn = models.SmallCNN(features=(8, 16) if quick else (16, 32), num_classes=10)
  x = jax.random.normal(jax.random.fold_in(key, 1), (16 if quick else 64, 8, 8, 1))
  params, state = models.linen_init(cnn, key, x[:1])

  def make_apply():
    return lambda p, x, *, state: cnn.apply({"params": p, **state}, x, train=False)

  return make_apply, params, state, x


def bench_auto(kind, quick, repeats):
  """jacobian vs ntvp vs auto on the (N, N) traced kernel of an MLP or SmallCNN."""
  make_apply, params, state, x = _auto_model(kind, quick)
  row = dict(kind="auto", model=kind, n=int(x.shape[0]), params=ntk.empirical._num_params(params))
  first, ref = {}, None
  for method in ("jacobian", "ntvp", "auto"):
    apply = make_apply()
    t = time.perf_counter()
    got = ntk.empirical_ntk(apply, params, x, state=state, method=method).block_until_ready()
    first[method] = time.perf_counter() - t  # compile(s), and for auto the probe timings
    row[f"t_{method}"] = common.median_time(
        lambda a=apply, m=method: ntk.empirical_ntk(a, params, x, state=state,
                                                    method=m).block_until_ready(), repeats)
    ref = got if ref is None else ref
    row[f"maxdev_{method}"] = float(jnp.abs(got - ref).max() / jnp.abs(ref).max())
    if method == "auto":
      key = next(k for k in ntk.auto_choices() if k[0] is apply)
      row["auto_picks"], probe = ntk.auto_choices()[key]
      row["probe_jacobian_s"], row["probe_ntvp_s"] = probe["jacobian"], probe["ntvp"]
  row["faster"] = "jacobian" if row["t_jacobian"] <= row["t_ntvp"] else "ntvp"
  row["ntvp_speedup"] = row["t_jacobian"] / row["t_ntvp"]
  row["auto_first_call_s"] = first["auto"]
  row["auto_first_call_overhead_s"] = first["auto"] - first[row["auto_picks"]]
  return row


def bench_analytic(n, d, repeats, nt=None):
  rng = np.random.default_rng(0)
  x1, x2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
  ref_k, ref_t = _numpy_kernels(x1, x2)
  got = ntk.two_layer_kernels(x1, x2, dtype=jnp.float64)
  x1f, x2f = x1.astype(np.float32), x2.astype(np.float32)
  got32 = ntk.two_layer_kernels(x1f, x2f)
  t_ours = common.median_time(lambda: ntk.two_layer_kernels(x1f, x2f).ntk.block_until_ready(),
                              repeats)
  t_np = common.median_time(lambda: _numpy_kernels(x1, x2), repeats)
  scale = float(np.abs(ref_t).max())
  return dict(kind="analytic", n=n, d=d, pairs=n * n,
              t_jaxlab_f32=t_ours, t_numpy_f64=t_np,
              pairs_per_s_jaxlab=n * n / t_ours, pairs_per_s_numpy=n * n / t_np,
              speedup_vs_numpy=t_np / t_ours,
              maxdev_f64=float(max(np.abs(np.asarray(got.ntk) - ref_t).max(),
                                   np.abs(np.asarray(got.nngp) - ref_k).max())) / scale,
              maxdev_f32=float(np.abs(np.asarray(got32.ntk) - ref_t).max()) / scale)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
  parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ntk.json)")
  args = parser.parse_args(argv)
  nt, status = peer_status()
  repeats = 3 if args.quick else 7
  if args.quick:
    emp = [(16, 8, 256, 1), (16, 8, 256, 4)]
    ana = [(256, 16)]
  else:
    emp = [(64, 16, 1024, 1), (64, 16, 1024, 10), (128, 32, 2048, 1), (64, 32, 2048, 10)]
    ana = [(1024, 32), (2048, 32)]
  rows = [bench_empirical(*c, repeats=repeats, nt=nt) for c in emp]
  rows += [bench_analytic(*c, repeats=repeats, nt=nt) for c in ana]
  rows += [bench_auto(kind, args.quick, repeats) for kind in ("mlp", "cnn")]
  tol = 1e-5
  worst = max(max(r.get("maxdev_jacobian", 0), r.get("maxdev_ntvp", 0), r.get("maxdev_auto", 0),
                  r.get("maxdev_f64", 0)) for r in rows)
  print(f"peer: {status}; comparing against a plain jax.jacobian contraction / numpy formulas")
  print(common.table([r for r in rows if r["kind"] == "empirical"],
                     ["n", "width", "outputs", "params", "t_plain_jacobian", "t_jacobian",
                      "t_ntvp", "maxdev_jacobian", "maxdev_ntvp"]))
  print(common.table([r for r in rows if r["kind"] == "analytic"],
                     ["n", "d", "pairs", "t_jaxlab_f32", "t_numpy_f64", "speedup_vs_numpy",
                      "maxdev_f64", "maxdev_f32"]))
  print(common.table([r for r in rows if r["kind"] == "auto"],
                     ["model", "n", "params", "t_jacobian", "t_ntvp", "t_auto", "auto_picks",
                      "faster", "ntvp_speedup", "auto_first_call_overhead_s", "maxdev_ntvp"]))
  payload = dict(peer=status, peer_available=nt is not None, quick=args.quick, rows=rows,
                 tolerance=tol, max_relative_deviation=worst, agree=bool(worst <= tol))
  path = common.write_results("ntk", payload, args.out)
  print(f"max relative deviation {worst:.2e} (tolerance {tol:g}) -> {path}")
  if worst > tol:
    sys.exit(1)
  return payload


if __name__ == "__main__":
  main()
