"""bfloat16 against float32: train-step time of the ICL model, and probe accuracy.

    python -m benchmarks.precision            # the numbers in RESULTS.md (minutes on 2 cores)
    python -m benchmarks.precision --quick    # tiny sizes (seconds)

1. Step time: the jitted train step (`jaxlab.train.make_train_step`, Adam) of
   the icl_linreg quick model (6 layers, 4 heads, width 48, d = 5, 11 points,
   batch 64), `ICLTransformer(dtype=float32)` vs `dtype=bfloat16` (float32
   params either way), timed interleaved in one run; the ratio is what counts.
2. Probe accuracy (`hessian_vp(..., compute_dtype="bfloat16")` vs float32, the
   same Lanczos start vectors, Lanczos in float32 either way):
   - top-5 Hessian eigenvalues (`top_eigenpairs`, k = 5): relative error of
     each bfloat16 eigenvalue against the float32 one;
   - spectral density (`spectral_density`, SLQ): the first two moments of the
     quadrature (relative difference) and the L1 distance between the two
     densities broadened by a Gaussian of width 1% of the float32 spectral
     range, over the L1 norm of the float32 one;
   on (a) the MNIST-1D MLP of experiments/configs/mlp_mnist1d.py (2×256 ReLU,
   78k params) after 300 Adam steps, Hessian of the mean cross-entropy on 1,000
   training signals, and (b) the tiny ICL transformer of the icl_linreg tests
   (2 layers, 2 heads, width 16, d = 3, 6 points) after 300 Adam steps,
   Hessian of the masked squared error on 256 prompts; here also the
   studies' path, the loss of `ICLTransformer(dtype=bfloat16)` with float32
   targets (`hessian_vp(compute_dtype="bfloat16")` casts the targets ys too).
Writes benchmarks/results/precision.json (precision_<parts>.json with --only).
"""
from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from jaxlab import data, models, spectral
from jaxlab.icl import training
from jaxlab.models.transformer import ICLTransformer
from jaxlab.train import make_train_step, recipes
from jaxlab.train.step import init_state

QUICK_ICL = (6, 4, 48, 5, 11, 64)  # layers, heads, width, d, points, batch (icl_linreg:quick)
TINY_ICL = (2, 2, 16, 3, 6, 16)  # tests/experiments/icl_linreg_test.py TINY


def step_times(size, steps: int, rounds: int) -> dict:
  """Mean step time (s) per dtype, min over interleaved rounds."""
  layers, heads, width, d, n, b = size
  batches = training.PromptBatches(0, b, n, d)
  batch = batches(0)
  fns, states = {}, {}
  for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
    m = ICLTransformer(num_layers=layers, num_heads=heads, width=width, max_points=n, dtype=dt)
    params = m.init(jax.random.key(0), jnp.zeros((1, n, d)), jnp.zeros((1, n)))
    tx = optax.adam(1e-3)
    fns[name] = make_train_step(training.regression_loss(m.apply), tx)
    states[name] = init_state(params, tx, jax.random.key(1))
    states[name], met = fns[name](states[name], batch)  # compile
    jax.block_until_ready(met)
  best = {k: float("inf") for k in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t = time.perf_counter()
      for _ in range(steps):
        states[name], met = fn(states[name], batch)
      jax.block_until_ready(met)
      best[name] = min(best[name], (time.perf_counter() - t) / steps)
  return best


def _train(loss, params, batch_fn, steps, lr):
  tx = optax.adam(lr)
  step = make_train_step(loss, tx)
  state = init_state(params, tx, jax.random.key(0))
  for t in range(steps):
    state, _ = step(state, batch_fn(t))
  return state.params


def probe_accuracy(loss, params, batch, *, k, lanczos_iters, density_iters, draws,
                   model_bf16_loss=None) -> dict:
  """float32 vs `hessian_vp(compute_dtype="bfloat16")` (and, if given, vs the loss of the
  model built with a bfloat16 compute dtype, the studies' path: targets stay float32)."""
  out = {}
  eig = {}
  dens = {}
  variants = {"float32": (loss, None), "bfloat16": (loss, "bfloat16")}
  if model_bf16_loss is not None:
    variants["bfloat16_model"] = (model_bf16_loss, None)
  for name, (fn, dtype) in variants.items():
    mv = spectral.hessian_vp(fn, params, batch, compute_dtype=dtype)
    t = time.perf_counter()
    eig[name] = np.asarray(spectral.top_eigenpairs(mv, params, k=k, key=jax.random.key(3),
                                                   num_iters=lanczos_iters).eigenvalues)
    out[f"top{k}_seconds_{name}"] = time.perf_counter() - t
    dens[name] = spectral.spectral_density(mv, params, num_iters=density_iters, num_draws=draws,
                                           key=jax.random.key(4))
  out["eigenvalues_float32"] = eig["float32"].tolist()
  moments = {}
  for name, dn in dens.items():
    w, x = np.asarray(dn.weights), np.asarray(dn.nodes)
    moments[name] = (float((w * x).sum(1).mean()), float((w * x ** 2).sum(1).mean()))
  out["density_mean_float32"], out["density_second_moment_float32"] = moments["float32"]
  lo = min(float(np.min(d.nodes)) for d in dens.values())
  hi = max(float(np.max(d.nodes)) for d in dens.values())
  sigma = 0.01 * (hi - lo)
  grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 4001)
  f32 = spectral.density_on_grid(dens["float32"], grid, sigma)
  for name in variants:
    if name == "float32":
      continue
    sfx = "" if name == "bfloat16" else "_model"
    rel = np.abs(eig[name] - eig["float32"]) / np.abs(eig["float32"])
    out[f"eigenvalues_bfloat16{sfx}"] = eig[name].tolist()
    out[f"eigenvalue_rel_error{sfx}"] = rel.tolist()
    out[f"eigenvalue_rel_error_max{sfx}"] = float(rel.max())
    for i, m in enumerate(("mean", "second_moment")):
      a, b = moments["float32"][i], moments[name][i]
      out[f"density_{m}_rel_diff{sfx}"] = abs(b - a) / max(abs(a), 1e-30)
    f16 = spectral.density_on_grid(dens[name], grid, sigma)
    out[f"density_l1_rel{sfx}"] = float(np.abs(f16 - f32).sum() / np.abs(f32).sum())
  return out


def mlp_case(quick: bool) -> dict:
  ds = data.mnist1d(5000, 42)
  hidden = (32, 32) if quick else (256, 256)
  model = models.mlp(ds.input_dim, hidden, ds.num_classes)
  loss = recipes.classification_loss(model.apply)
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, 128, seed=0)
  params = _train(loss, model.init(jax.random.key(0)), batches, 50 if quick else 300, 1e-3)
  n = 256 if quick else 1000
  batch = {"x": ds.x_train[:n], "y": ds.y_train[:n]}
  res = probe_accuracy(loss, params, batch, k=5, lanczos_iters=30 if quick else 80,
                       density_iters=20 if quick else 60, draws=2)
  res["params"] = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  return res


def icl_case(quick: bool) -> dict:
  layers, heads, width, d, n, b = TINY_ICL
  m = ICLTransformer(num_layers=layers, num_heads=heads, width=width, max_points=n)
  m16 = ICLTransformer(num_layers=layers, num_heads=heads, width=width, max_points=n,
                       dtype=jnp.bfloat16)
  loss = training.regression_loss(m.apply)
  params = m.init(jax.random.key(0), jnp.zeros((1, n, d)), jnp.zeros((1, n)))
  params = _train(loss, params, training.PromptBatches(0, 64, n, d), 50 if quick else 300, 2e-3)
  batch = training.PromptBatches(1, 64 if quick else 256, n, d)(0)
  res = probe_accuracy(loss, params, batch, k=5, lanczos_iters=30 if quick else 80,
                       density_iters=20 if quick else 60, draws=2,
                       model_bf16_loss=training.regression_loss(m16.apply))
  res["params"] = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  return res


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--only", default="step,mnist1d_mlp,icl_tiny",
                  help="comma list of parts: step, mnist1d_mlp, icl_tiny")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  parts = set(args.only.split(","))
  if not parts <= {"step", "mnist1d_mlp", "icl_tiny"}:
    raise ValueError(f"--only={args.only!r}; allowed: a comma list of step, mnist1d_mlp, icl_tiny")
  result, rows = {}, []
  if "step" in parts:
    size = TINY_ICL if args.quick else QUICK_ICL
    times = step_times(size, steps=5 if args.quick else 20, rounds=2 if args.quick else 3)
    result.update({"icl_step_seconds": times,
                   "icl_step_ratio_bf16_over_f32": times["bfloat16"] / times["float32"],
                   "icl_size": dict(zip(("layers", "heads", "width", "d", "points", "batch"),
                                        size, strict=True))})
    rows.append({"case": "icl step (ms)", "float32": 1e3 * times["float32"],
                 "bfloat16": 1e3 * times["bfloat16"],
                 "ratio/maxerr": result["icl_step_ratio_bf16_over_f32"]})
  for case, fn in (("mnist1d_mlp", mlp_case), ("icl_tiny", icl_case)):
    if case not in parts:
      continue
    result[case] = r = fn(args.quick)
    rows.append({"case": f"{case} top-5", "float32": str(np.round(r["eigenvalues_float32"], 4)),
                 "bfloat16": str(np.round(r["eigenvalues_bfloat16"], 4)),
                 "ratio/maxerr": r["eigenvalue_rel_error_max"]})
    rows.append({"case": f"{case} density", "float32": r["density_second_moment_float32"],
                 "bfloat16": f"L1 {r['density_l1_rel']:.3g}, m1 {r['density_mean_rel_diff']:.2g},"
                             f" m2 {r['density_second_moment_rel_diff']:.2g}",
                 "ratio/maxerr": ""})
    if "eigenvalues_bfloat16_model" in r:
      rows.append({"case": f"{case} top-5, bf16 model", "float32": "",
                   "bfloat16": str(np.round(r["eigenvalues_bfloat16_model"], 4)),
                   "ratio/maxerr": r["eigenvalue_rel_error_max_model"]})
      rows.append({"case": f"{case} density, bf16 model", "float32": "",
                   "bfloat16": f"L1 {r['density_l1_rel_model']:.3g}, "
                               f"m1 {r['density_mean_rel_diff_model']:.2g}, "
                               f"m2 {r['density_second_moment_rel_diff_model']:.2g}",
                   "ratio/maxerr": ""})
  print(common.table(rows, ["case", "float32", "bfloat16", "ratio/maxerr"]))
  name = "precision" + ("_quick" if args.quick else "") + (
      "" if len(parts) == 3 else "_" + "_".join(sorted(parts)))
  print("wrote", common.write_results(name, result, args.out))
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
