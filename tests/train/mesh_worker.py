"""Runs under 4 forced host devices (see mesh_test.py); prints one JSON line of results.

Trains the MLP study and a small ICL transformer under the (data, fsdp)
meshes 4x1, 2x2 and 1x4, measures the compiled step's per-device argument
bytes, and resumes a run checkpointed under one mesh on another.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.getcwd())
from experiments import run  # noqa: E402
from jaxlab import data, models, train  # noqa: E402
from jaxlab.icl import training  # noqa: E402
from jaxlab.train import checkpoint, io, recipes, sharding  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402
from jaxlab.train.step import init_state, make_train_step  # noqa: E402

MESHES = ((4, 1), (2, 2), (1, 4))
MLP = "experiments/configs/mlp_mnist1d.py:quick"
MLP_TINY = {"train.num_steps": 12, "train.eval_every_steps": 12, "train.checkpoint_every_steps": 0,
            "train.log_every_steps": 3, "train.progress": False, "data.num_samples": 600,
            "model.hidden_sizes": (64, 32)}


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)]).tolist()


def sharded_fraction(params):
  """Per-device bytes of the params over their full bytes."""
  held = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for x in jax.tree.leaves(params))
  return held / sum(x.size for x in jax.tree.leaves(params))


def mlp_study(root):
  out = {}
  for d, f in MESHES:
    wd = os.path.join(root, f"mlp_{d}x{f}")
    summary = run.run(MLP, wd, {**MLP_TINY, "mesh.data": d, "mesh.fsdp": f})
    losses = [r["loss"] for r in io.read_jsonl(os.path.join(wd, "metrics.jsonl"))]
    out[f"{d}x{f}"] = {"loss": losses, "test_loss": summary["test_loss"]}
  return out


def icl_train():
  model = models.ICLTransformer(num_layers=2, num_heads=2, width=16, max_points=6)
  params = model.init(jax.random.key(0), jnp.zeros((1, 6, 3)), jnp.zeros((1, 6)))
  batches = training.PromptBatches(0, 16, 6, 3)
  # The key bias (qkv bias[w:2w]) gets an exactly zero gradient (softmax ignores a
  # shift shared by all of a query's scores), so its computed gradient is
  # rounding noise (~1e-11) that Adam turns into ±lr steps whose signs depend on
  # the reduction order (measured 1.3e-3 apart between meshes with Adam's
  # default eps). The loss is flat along it: it is left out of the parameter
  # comparison, and the predictions, which it cannot change, are compared.
  tx = optax.adam(3e-3)
  probe = batches(100)
  out = {}
  for d, f in MESHES:
    res = train.train(training.regression_loss(model.apply), params, tx, batches,
                      num_steps=10, key=jax.random.key(1), log_every=2, progress=False,
                      mesh=mesh_lib.make_mesh(d, f))
    p = res.state.params
    pred = model.apply(p, probe["xs"], probe["ys"])
    no_key_bias = jax.tree_util.tree_map_with_path(
        lambda path, x: x.at[16:32].set(0) if "qkv" in str(path) and x.ndim == 1 else x, p)
    out[f"{d}x{f}"] = {"loss": [r["loss"] for r in res.history], "params": flat(no_key_bias),
                       "predictions": flat(pred), "fraction": sharded_fraction(p)}
  return out


def memory():
  """The compiled step's argument bytes per device (params + Adam state + batch shard + scalars)."""
  model = models.mlp(40, (256, 256), 10)
  tx = optax.adam(1e-3)
  step = make_train_step(recipes.classification_loss(model.apply), tx, jit=False)
  batch = {"x": np.zeros((16, 40), np.float32), "y": np.zeros((16,), np.int32)}
  out = {}
  for d, f in MESHES:
    m = mesh_lib.make_mesh(d, f)
    state = mesh_lib.put_state(init_state(model.init(jax.random.key(0)), tx, jax.random.key(1)), m)
    compiled = mesh_lib.pin_step(jax.jit(step, donate_argnums=0), state, m).lower(
        state, sharding.put_batch(batch, m)).compile()
    out[f"{d}x{f}"] = {"argument_bytes": int(compiled.memory_analysis().argument_size_in_bytes),
                       "state_bytes": mesh_lib.state_bytes_per_device(state, m)}
  out["batch_bytes_per_device"] = (16 * 40 * 4 + 16 * 4) // 4
  return out


def resume_across_meshes(root):
  """10 steps under 1x4 with checkpoints, then resumed to 16 under 2x2; reference: 16 under 4x1."""
  model = models.mlp(40, (64, 32), 10)
  rng = np.random.default_rng(0)
  arrays = {"x": rng.standard_normal((256, 40)).astype(np.float32),
            "y": rng.integers(0, 10, 256).astype(np.int32)}
  batches = data.Batches(arrays, 32, seed=0)
  args = dict(num_steps=16, key=jax.random.key(1), log_every=2, progress=False)
  loss, p0, tx = recipes.classification_loss(model.apply), model.init(jax.random.key(0)), \
      optax.adam(1e-2)
  ref = train.train(loss, p0, tx, batches, mesh=mesh_lib.make_mesh(4, 1), **args)
  out = {"reference": flat(ref.state.params)}
  for d, f in ((2, 2),):
    wd = os.path.join(root, f"resume_{d}x{f}")
    train.train(loss, p0, tx, batches, workdir=wd, checkpoint_every=5,
                mesh=mesh_lib.make_mesh(1, 4), **{**args, "num_steps": 10})
    saved_step = checkpoint.Checkpointer(os.path.join(wd, "checkpoints"), 5).latest_step()
    res = train.train(loss, p0, tx, batches, workdir=wd, checkpoint_every=5,
                      mesh=mesh_lib.make_mesh(d, f), **args)
    out[f"{d}x{f}"] = {"params": flat(res.state.params), "saved_step": saved_step,
                       "rows": [r["step"] for r in res.history],
                       "fraction": sharded_fraction(res.state.params)}
  return out


if __name__ == "__main__":
  assert jax.device_count() == 4, jax.devices()
  root = sys.argv[1]
  print(json.dumps({"mlp": mlp_study(root), "icl": icl_train(), "memory": memory(),
                    "resume": resume_across_meshes(root)}))
