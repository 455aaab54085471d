"""Train-step throughput: our loop vs a bare `jax.jit(step)` loop, on 1 and 4 devices.

    python -m benchmarks.train_step            # MLP 40→512→512→10, batch 512
    python -m benchmarks.train_step --quick    # tiny sizes, seconds (used by tests)

Each device count runs in its own process (`--xla_force_host_platform_device_count`
fakes N CPU devices). In each process the bare loop and `jaxlab.train.train`
run the same model, optimizer and batches, interleaved several times. A call
of n steps takes T(n) = c + n s + noise, with c ≥ 0 the fixed per-call cost and
noise ≥ 0 (a shared CPU only ever adds time), so, as `timeit` recommends, each
side uses its fastest repeat of each length: s = (min T(3S) − min T(S)) / 2S,
which cancels c. That difference can still come out ≤ 0 when noise swamps the
2S extra steps (seen on a loaded machine); the row then says
``resolved: false`` and reports the bound s ≤ min T(3S) / 3S, which holds
because c ≥ 0 (its rate is a lower bound). Either way s is capped by that
bound, so no rate is negative or infinite. The median of the per-repeat paired
ratios is reported beside it, over the repeats where both differences are
positive (None if none is). Overhead of our loop: target ≤ 5%. Results: a
table on stdout and benchmarks/results/train_step.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import common

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _timings(hidden: int, batch: int, steps: int, repeats: int) -> dict:
  """{side: [(T(S), T(3S)) per repeat]} in seconds, bare loop and ours interleaved."""
  import jax
  import jax.numpy as jnp
  import optax

  from jaxlab import data, models, train
  from jaxlab.train import recipes, sharding

  ds = data.gaussian_mixture(10, 40, num_train=8 * batch, seed=0)
  model = models.mlp(40, (hidden, hidden), 10)
  params = model.init(jax.random.key(0))
  tx = optax.adam(1e-3)
  loss_fn = recipes.classification_loss(model.apply)
  batches = data.Batches({"x": ds.x_train, "y": ds.y_train}, batch, seed=0)
  mesh = sharding.data_mesh()

  raw = train.make_train_step(loss_fn, tx, jit=False)
  bare_step = jax.jit(raw, donate_argnums=0)

  def bare(n):
    state = train.init_state(jax.tree.map(jnp.copy, params), tx, jax.random.key(1))
    state = jax.device_put(state, sharding.replicated(mesh))
    serialize = sharding.needs_serial_steps(mesh)  # as the loop does, for a fair peer
    for t in range(n):
      state, m = bare_step(state, sharding.put_batch(batches(t), mesh))
      if serialize:
        jax.block_until_ready(m)
    jax.block_until_ready(state)

  def ours(n):
    result = train.train(loss_fn, params, tx, batches, num_steps=n, key=jax.random.key(1),
                         log_every=100, progress=True, mesh=mesh)
    jax.block_until_ready(result.state)

  def timed(fn, n):
    t = time.perf_counter()
    fn(n)
    return time.perf_counter() - t

  # After the warm-up calls neither side compiles again (the loop caches its
  # step per (loss_fn, tx)); the time of 3S steps minus the time of S steps is
  # 2S steps of pure training for both, whatever the fixed per-call costs.
  bare(2)
  ours(2)
  times = {"bare": [], "ours": []}
  for _ in range(repeats):
    for name, fn in (("bare", bare), ("ours", ours)):
      times[name].append((timed(fn, steps), timed(fn, 3 * steps)))
  return times


def per_step_seconds(times, steps: int) -> tuple[float, bool]:
  """(seconds per step, resolved) from [(T(S), T(3S)), ...]; always > 0 and finite.

  resolved: min T(3S) − min T(S) > 0, the differenced estimate (capped by the
  bound min T(3S) / 3S). Otherwise noise swamped the difference and the bound
  itself is returned: fixed per-call costs included, so the rate is a lower bound.
  """
  t1 = min(t for t, _ in times)
  t3 = min(t for _, t in times)
  bound = t3 / (3 * steps)
  diff = (t3 - t1) / (2 * steps)
  return (min(diff, bound), True) if diff > 0 else (bound, False)


def _host_us_per_step(steps: int, repeats: int) -> float:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from jaxlab import train
  from jaxlab.train import loop, sharding

  params = {"w": jnp.zeros((4,))}
  tx = optax.sgd(0.1)
  metrics = {k: jnp.float32(1.0) for k in ("loss", "accuracy", "grad_norm", "param_norm",
                                           "update_norm")}
  metrics["finite"] = jnp.bool_(True)
  null_step = lambda state, batch: (state, metrics)
  batch = {"x": np.zeros((8 * jax.device_count(), 4), np.float32)}
  batch_fn = lambda t: batch

  mesh = sharding.data_mesh()
  serialize = sharding.needs_serial_steps(mesh)

  def bare(n):  # what the bare peer loop does around its step
    state = train.init_state(params, tx, jax.random.key(0))
    t0 = time.perf_counter()
    for t in range(n):
      state, m = null_step(state, sharding.put_batch(batch_fn(t), mesh))
      if serialize:
        jax.block_until_ready(m)
    return (time.perf_counter() - t0) / n

  real = loop._train_step
  loop._train_step = lambda *args: null_step
  try:
    def ours(n):
      t0 = time.perf_counter()
      # The step is patched to null_step: the loss is never called.
      train.train(lambda p, b: 0.0, params, tx, batch_fn, num_steps=n, key=jax.random.key(0),
                  log_every=100, progress=True)
      return (time.perf_counter() - t0) / n
    diffs = [ours(steps) - bare(steps) for _ in range(repeats)]
  finally:
    loop._train_step = real
  return float(np.median(diffs)) * 1e6


def worker(devices: int, hidden: int, batch: int, steps: int, repeats: int) -> dict:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  import jax
  import numpy as np

  times = _timings(hidden, batch, steps, repeats)
  (tb, resolved_b), (to, resolved_o) = (per_step_seconds(times[k], steps) for k in ("bare", "ours"))
  diffs = {k: np.asarray([t3 - t1 for t1, t3 in times[k]]) for k in times}
  usable = (diffs["bare"] > 0) & (diffs["ours"] > 0)
  paired = diffs["ours"][usable] / diffs["bare"][usable]
  # The loop's own host work per step, measured where compute cannot drown it:
  # both loops drive a step that returns at once (same state, the real step's
  # metrics as ready device arrays), so their difference is exactly what our
  # loop's Python adds to each step. As a fraction of the bare step time it
  # bounds the overhead (it is only paid in full if the host is the bottleneck).
  host_us = _host_us_per_step(50_000 // max(devices, 1), repeats)
  return {"devices": jax.device_count(), "hidden": hidden, "batch": batch, "steps": 2 * steps,
          "repeats": repeats, "bare_steps_per_s": 1.0 / tb, "ours_steps_per_s": 1.0 / to,
          "resolved": bool(resolved_b and resolved_o), "overhead": to / tb - 1.0,
          "paired_repeats": int(paired.size),
          "paired_median_overhead": float(np.median(paired)) - 1.0 if paired.size else None,
          "paired_spread": (float(np.percentile(paired, 75) - np.percentile(paired, 25))
                            if paired.size else None),
          "loop_host_us_per_step": host_us, "host_overhead": host_us * 1e-6 / tb}


def _run_worker(devices: int, hidden: int, batch: int, steps: int, repeats: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "benchmarks.train_step", "--worker", str(devices),
         "--sizes", f"{hidden},{batch},{steps},{repeats}"]
  proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True)
  if proc.returncode:
    tail = [ln for ln in proc.stderr.splitlines() if "Termination timeout" in ln]
    return {"devices": devices, "hidden": hidden, "batch": batch, "steps": steps,
            "error": (tail[0][:160] if tail else proc.stderr[-300:]).strip()}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--sizes", default="", help=argparse.SUPPRESS)
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
  a = p.parse_args(argv)
  if a.worker:
    print(json.dumps(worker(a.worker, *map(int, a.sizes.split(",")))))
    return None
  sizes = [(64, 64, 60, 2)] if a.quick else [(256, 256, 200, 15), (128, 128, 300, 15)]
  rows = []
  for devices in (1, 4):
    for size in sizes:
      rows.append(_run_worker(devices, *size))
  print(common.table(rows, ["devices", "hidden", "batch", "steps", "repeats", "bare_steps_per_s",
                            "ours_steps_per_s", "resolved", "overhead", "paired_median_overhead",
                            "paired_spread", "loop_host_us_per_step", "host_overhead", "error"]))
  ok = [r for r in rows if "overhead" in r]
  if ok:
    print(f"loop overhead vs bare jax.jit loop, direct timing: worst "
          f"{max(r['overhead'] for r in ok):+.1%}; from the loop's measured host work per step: "
          f"worst {max(r['host_overhead'] for r in ok):+.1%} (target ≤ +5%)")
  if any(r.get("resolved") is False for r in rows):
    print("note: rows with resolved=False: timing noise swamped the 3S − S difference; their rates "
          "are lower bounds (fixed per-call costs included) and their overhead is not meaningful.")
  if any("error" in r for r in rows):
    print("note: XLA's in-process CPU collectives can deadlock when more host devices are "
          "forced than the machine has cores (seen here: 4 devices on 2 cores at width 512); "
          "such rows carry the error instead of timings.")
  path = common.write_results("train_step", {"quick": a.quick, "rows": rows,
                                             "target_overhead": 0.05}, a.out)
  print(f"wrote {os.path.relpath(path, HERE)}")
  return rows


if __name__ == "__main__":
  main()
