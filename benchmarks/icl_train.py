"""Training throughput of the icl_linreg model: prompts/s of the jitted train step.

    python -m benchmarks.icl_train            # quick and full (Garg et al.) model sizes
    python -m benchmarks.icl_train --quick    # tiny sizes and few steps (seconds; tests)

For each size the step is `jaxlab.train.make_train_step` (value_and_grad of the
masked squared error over all prefixes, Adam update, norms), jitted once with
the state donated, fed batches from `jaxlab.icl.training.PromptBatches`
(sampled ahead of timing). We report the median over repeats of the mean step
time, prompts/s = batch / step time, the step's FLOPs from XLA's cost analysis
(`compiled.cost_analysis()`), achieved FLOP/s = those FLOPs / the step time,
and on a GPU or TPU the model FLOPs utilization (MFU) against the device's
dense float32 peak (`benchmarks.common.PEAK_FLOPS`: float32 matmuls run as
TF32 on NVIDIA GPUs by default, so the TF32 peak is the reference); on a CPU
"MFU: n/a (no accelerator peak)". Results: a table on stdout and
benchmarks/results/icl_train.json.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from jaxlab.icl import training
from jaxlab.models.transformer import ICLTransformer
from jaxlab.train import make_train_step
from jaxlab.train.step import init_state

SIZES = {
    # name: (layers, heads, width, d, points, batch)
    "quick": (6, 4, 48, 5, 11, 64),  # experiments/configs/icl_linreg.py:quick
    "full": (12, 8, 256, 20, 41, 64),
}
TINY = {"quick": (2, 2, 32, 5, 11, 16), "full": (2, 4, 64, 20, 41, 16)}


def bench(name: str, size: tuple, steps: int, repeats: int) -> dict:
  layers, heads, width, d, n, batch = size
  model = ICLTransformer(num_layers=layers, num_heads=heads, width=width, max_points=n)
  params = model.init(jax.random.key(0), jnp.zeros((1, n, d)), jnp.zeros((1, n)))
  tx = optax.adam(1e-4)
  step = make_train_step(training.regression_loss(model.apply), tx)
  batches = training.PromptBatches(0, batch, n, d)
  data = [batches(t) for t in range(steps)]
  state = init_state(params, tx, jax.random.key(1))
  flops = common.compiled_flops(step, state, data[0])
  state, m = step(state, data[0])  # compile + warm up
  jax.block_until_ready(m)

  def run():
    nonlocal state
    for b in data:
      state, m = step(state, b)
    jax.block_until_ready(m)

  t = common.median_time(run, repeats) / steps
  nparams = sum(x.size for x in jax.tree.leaves(params))
  row = {"size": name, "layers": layers, "heads": heads, "width": width, "dim": d,
         "points": n, "batch": batch, "params": int(nparams), "step_ms": 1e3 * t,
         "prompts_per_s": batch / t}
  row["gflop_per_step"] = flops / 1e9 if flops else None
  row.update(common.flop_columns(flops, t, "float32"))
  return row


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps")
  parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
  args = parser.parse_args(argv)
  sizes = TINY if args.quick else SIZES
  steps, repeats = (5, 2) if args.quick else (50, 5)
  # The full model's step is ~300 GFLOP: seconds on a CPU, so fewer timed steps there.
  on_cpu = jax.devices()[0].platform == "cpu"
  rows = [bench(name, size, *((4, 3) if on_cpu and name == "full" and not args.quick
                             else (steps, repeats)))
          for name, size in sizes.items()]
  cols = ["size", "layers", "heads", "width", "dim", "points", "batch", "params", "step_ms",
          "prompts_per_s", "gflop_per_step", "flop_per_s", "mfu"]
  print(common.table([{**r, "mfu": common.mfu_text(r["mfu"])} for r in rows], cols))
  for r in rows:
    rate = "n/a" if r["flop_per_s"] is None else f"{r['flop_per_s'] / 1e9:.4g} GFLOP/s"
    print(f"{r['size']}: achieved {rate}, MFU: {common.mfu_text(r['mfu'])}")
  path = common.write_results("icl_train", {"quick": args.quick, "rows": rows}, args.out)
  print(f"wrote {path}")
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
