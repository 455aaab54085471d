"""Step time of jaxlab.optim's transforms relative to optax.adam, and DCT low-rank vs GaLore.

Command:  python benchmarks/optim_step.py            (~10M-parameter pytree; writes
          benchmarks/results/optim_step.json)
          python benchmarks/optim_step.py --quick    (tiny pytree, seconds; used by the tests)

What it measures, in one process: the jitted optimizer step
(params, state, grads) -> (params, state), donated, on the same pytree of
2-D weights and 1-D biases for every transform; median over repeats of the
mean time of `--iters` steps; each ratio is against optax.adam timed in the
same run. For the low-rank methods the projection refresh (DCT: one matmul +
sort; GaLore: an SVD) runs every `update_every` steps; the amortized step is
(t_refresh + (k - 1) t_plain) / k, each timed separately. Targets (issue 3):
diffgrad <= 1.3x, dct_lowrank (amortized) <= 1.5x, mfac (m = 32) <= 10x.
Then DCT low-rank vs optax.contrib.galore at equal rank: step time with the
refresh, optimizer-state bytes, and final training loss of an MNIST-1D MLP.
Then TrAct's overhead (`--tract-only` runs just this): a whole jitted train step
(forward, backward, optax.adam update) with the first layer a
jaxlab.models.TrActDense / TrActConv vs the plain nn.Dense / nn.Conv, same
model, batch and optimizer, interleaved in the same run; ratio TrAct / plain.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlab.optim as jo
from jaxlab.optim.dct_lowrank import ScaleByDCTLowRankState

_LOWRANK_STATES = (ScaleByDCTLowRankState, optax.contrib.GaLoreState)


def make_params(quick: bool, key):
  """~10M parameters (nine 1024x1024 layers + a 512x1024 input layer) or a tiny tree."""
  shapes = [(48, 32), (32, 32), (32, 16)] if quick else [(512, 1024)] + [(1024, 1024)] * 9
  keys = jax.random.split(key, len(shapes))
  return {f"layer{i}": {"w": jax.random.normal(k, s) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
          for i, (k, s) in enumerate(zip(keys, shapes, strict=True))}


def num_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _with_count(state, count):
  """Sets the low-rank transform's step counter (0 forces a projection refresh)."""
  def fix(s):
    if isinstance(s, _LOWRANK_STATES):
      return s._replace(count=jnp.asarray(count, jnp.int32))
    return s
  return jax.tree.map(fix, state, is_leaf=lambda s: isinstance(s, _LOWRANK_STATES))


class _Timed:
  """A compiled, donated optimizer step with its own params and state."""

  def __init__(self, tx, params, grads, extra=None, count=None):
    extra = extra or {}

    def step_fn(p, s, g):
      if count is not None:
        s = _with_count(s, count)
      u, s = tx.update(g, s, p, **extra)
      return optax.apply_updates(p, u), s

    self.step = jax.jit(step_fn, donate_argnums=(0, 1))
    self.grads = grads
    self.p = jax.tree.map(jnp.copy, params)
    self.s = tx.init(self.p)
    self.p, self.s = self.step(self.p, self.s, grads)  # compile + first (refresh) step
    jax.block_until_ready((self.p, self.s))
    self.state_bytes = state_bytes(self.s)
    self.times = []

  def run(self, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
      self.p, self.s = self.step(self.p, self.s, self.grads)
    jax.block_until_ready((self.p, self.s))
    self.times.append((time.perf_counter() - t0) / iters)

  @property
  def seconds(self):
    return statistics.median(self.times)


def time_all(timed: dict, iters: int, repeats: int) -> None:
  """Interleaves the transforms round by round, so load drift hits every ratio alike."""
  for _ in range(repeats):
    for t in timed.values():
      t.run(iters)


def mlp_final_loss(tx, steps, quick, seed=0):
  """Training loss after `steps` of an MNIST-1D MLP (40 -> 256 -> 256 -> 10, ReLU)."""
  from jaxlab.data.datasets import mnist1d

  data = mnist1d(num_samples=1000 if quick else 5000)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  sizes = [x.shape[1], 64 if quick else 256, 64 if quick else 256, 10]
  keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
  params = [{"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)}
            for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]

  def loss_fn(ps, xb, yb):
    h = xb
    for layer in ps[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ ps[-1]["w"] + ps[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  batch = 128

  @jax.jit
  def train(params):
    def body(carry, t):
      ps, s = carry
      idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(seed + 1), t), (batch,), 0, x.shape[0])
      g = jax.grad(loss_fn)(ps, x[idx], y[idx])
      u, s = tx.update(g, s, ps)
      return (optax.apply_updates(ps, u), s), None

    (ps, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
    return loss_fn(ps, x, y)

  return float(train(params))


def _tract_models(quick: bool) -> dict:
  """name -> (module builder taking tract_lam, input batch shape): the TrAct overhead rows."""
  import flax.linen as nn

  from jaxlab import models

  class Stem(nn.Module):  # a CIFAR-style first conv (3x3x3 -> 64) and a linear readout
    tract_lam: float | None = None

    @nn.compact
    def __call__(self, x):
      conv = (nn.Conv(64, (3, 3)) if self.tract_lam is None
              else models.TrActConv(64, (3, 3), lam=self.tract_lam))
      return nn.Dense(10)(nn.relu(conv(x)).mean(axis=(1, 2)))

  class MLP(nn.Module):
    tract_lam: float | None = None

    @nn.compact
    def __call__(self, x):
      return models.MLP((256, 256), 10, tract_lam=self.tract_lam)(x)[0]

  class CNN(nn.Module):
    tract_lam: float | None = None

    @nn.compact
    def __call__(self, x):
      return models.SmallCNN(batch_norm=False, dropout_rate=0.0, tract_lam=self.tract_lam)(x)

  b = 16 if quick else 128
  return {"mlp 40-256-256-10 (d=40)": (MLP, (b, 40)),
          "SmallCNN digits 8x8x1 (d=9)": (CNN, (b, 8, 8, 1)),
          "conv stem 32x32x3 -> 64 (d=27)": (Stem, (b, 8 if quick else 32, 8 if quick else 32, 3))}


def tract_overhead(quick: bool, iters: int, repeats: int) -> dict:
  """Train-step time with a TrAct first layer vs the plain one (optax.adam, same run)."""
  rows, steps, states = {}, {}, {}
  for name, (cls, shape) in _tract_models(quick).items():
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    y = jnp.arange(shape[0]) % 10
    for method, lam in (("plain", None), ("tract", 0.1)):
      module, tx = cls(tract_lam=lam), optax.adam(1e-3)
      params = module.init(jax.random.PRNGKey(1), x)["params"]

      def step(p, s, xb, yb, module=module, tx=tx):
        def loss(q):
          logits = module.apply({"params": q}, xb)
          return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

      steps[name, method] = functools.partial(jax.jit(step, donate_argnums=(0, 1)), xb=x, yb=y)
      states[name, method] = steps[name, method](params, tx.init(params))  # compile
      jax.block_until_ready(states[name, method])
  times = {k: [] for k in steps}
  for _ in range(repeats):  # interleaved, so load drift hits both methods alike
    for k, fn in steps.items():
      p, s = states[k]
      t0 = time.perf_counter()
      for _ in range(iters):
        p, s = fn(p, s)
      jax.block_until_ready((p, s))
      times[k].append((time.perf_counter() - t0) / iters)
      states[k] = (p, s)
  for name, (_, shape) in _tract_models(quick).items():
    plain, tr = (statistics.median(times[name, m]) for m in ("plain", "tract"))
    rows[name] = {"batch": shape[0], "plain_step_s": plain, "tract_step_s": tr,
                  "tract_vs_plain": tr / plain}
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny pytree, few iterations (seconds)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "optim_step.json"))
  parser.add_argument("--iters", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--rank", type=int, default=None)
  parser.add_argument("--update-every", type=int, default=200)
  parser.add_argument("--mlp-steps", type=int, default=None)
  parser.add_argument("--tract-only", action="store_true",
                      help="only the TrAct first-layer overhead rows")
  args = parser.parse_args(argv)
  quick = args.quick
  iters = args.iters or (2 if quick else 5)
  repeats = args.repeats or (2 if quick else 5)
  rank = args.rank or (8 if quick else 32)
  k = args.update_every
  mlp_steps = args.mlp_steps or (30 if quick else 1000)
  tract_iters = args.iters or (2 if quick else 20)
  if args.tract_only:
    return _report_tract(tract_overhead(quick, tract_iters, repeats), args.out, quick)

  params = make_params(quick, jax.random.PRNGKey(0))
  grads = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  margins = {"margins": jnp.linspace(-1.0, 3.0, 1024)}
  lr = 1e-3
  transforms = {
      "adam": (optax.adam(lr), {}),
      "diffgrad": (jo.diffgrad(lr), {}),
      "mfac (m=32)": (jo.mfac(lr, num_grads=32, damping=1e-5), {}),
      "hypergradient (adam)": (jo.hypergradient(lr), {}),
      "normalized_gd": (jo.normalized_gd(lr), margins),
  }
  lowrank = {
      f"dct_lowrank (r={rank})": jo.dct_lowrank(lr, rank=rank, update_every=k),
      f"galore (r={rank})": optax.contrib.galore(lr, rank=rank, update_proj_gap=k),
  }
  timed = {name: _Timed(tx, params, grads, extra) for name, (tx, extra) in transforms.items()}
  for name, tx in lowrank.items():
    timed[name] = _Timed(tx, params, grads, count=1)  # never refreshes
    timed[name + " refresh"] = _Timed(tx, params, grads, count=0)  # refreshes every step
  time_all(timed, iters, repeats)
  rows = {name: {"step_s": timed[name].seconds, "state_bytes": timed[name].state_bytes}
          for name in transforms}
  for name in lowrank:
    t_plain, t_refresh = timed[name].seconds, timed[name + " refresh"].seconds
    rows[name] = {"step_s": (t_refresh + (k - 1) * t_plain) / k, "plain_step_s": t_plain,
                  "refresh_step_s": t_refresh, "update_every": k,
                  "state_bytes": timed[name].state_bytes}
  del timed
  adam_t = rows["adam"]["step_s"]
  for row in rows.values():
    row["vs_adam"] = row["step_s"] / adam_t
  targets = {"diffgrad": 1.3, f"dct_lowrank (r={rank})": 1.5, "mfac (m=32)": 10.0}
  for name, target in targets.items():
    rows[name]["target_vs_adam"] = target
    rows[name]["meets_target"] = bool(rows[name]["vs_adam"] <= target)

  mlp = {}
  for name, tx in {f"dct_lowrank (r={rank})": jo.dct_lowrank(1e-3, rank=rank, update_every=k),
                   f"galore (r={rank})": optax.contrib.galore(1e-3, rank=rank, update_proj_gap=k),
                   "adam": optax.adam(1e-3)}.items():
    mlp[name] = mlp_final_loss(tx, mlp_steps, quick)

  result = {
      "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
      "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
      "optax": optax.__version__, "quick": quick, "num_params": num_params(params),
      "iters": iters, "repeats": repeats, "rank": rank, "update_every": k,
      "transforms": rows, "mlp_mnist1d": {"steps": mlp_steps, "batch": 128, "final_train_loss": mlp},
  }
  print(f"{num_params(params):,} parameters on {result['device']} ({result['platform']}), "
        f"median of {repeats} x {iters} steps")
  print(f"{'transform':26s} {'ms/step':>9s} {'vs adam':>8s} {'target':>7s} {'state MB':>9s}")
  for name, row in rows.items():
    tgt = f"<={row['target_vs_adam']}" if "target_vs_adam" in row else ""
    print(f"{name:26s} {1e3 * row['step_s']:9.3f} {row['vs_adam']:8.2f} {tgt:>7s} "
          f"{row['state_bytes'] / 2**20:9.2f}")
  for name in lowrank:
    r = rows[name]
    print(f"  {name}: plain {1e3 * r['plain_step_s']:.3f} ms, refresh {1e3 * r['refresh_step_s']:.3f} ms "
          f"every {k} steps")
  print(f"MNIST-1D MLP, {mlp_steps} steps, final train loss: "
        + ", ".join(f"{n} {v:.4f}" for n, v in mlp.items()))
  result["tract"] = tract_overhead(quick, tract_iters, repeats)
  _print_tract(result["tract"])
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return result


def _print_tract(rows: dict) -> None:
  print(f"TrAct first layer vs plain, whole train step with optax.adam:\n"
        f"{'model':32s} {'batch':>5s} {'plain ms':>9s} {'TrAct ms':>9s} {'ratio':>6s}")
  for name, r in rows.items():
    print(f"{name:32s} {r['batch']:5d} {1e3 * r['plain_step_s']:9.3f} "
          f"{1e3 * r['tract_step_s']:9.3f} {r['tract_vs_plain']:6.2f}")


def _report_tract(rows: dict, out: str, quick: bool) -> dict:
  """--tract-only: prints the rows and writes them beside `out` (optim_step_tract.json)."""
  _print_tract(rows)
  result = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "quick": quick, "tract": rows}
  path = os.path.splitext(out)[0] + "_tract.json"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
