"""Runs under 4 forced host devices (see split_over_mesh_test.py); prints one JSON line.

Studies' own jitted programs on the mesh of `jaxlab.train.mesh`, each against the same
computation on one device of this process: the NTK-permutations ensemble (members split
over the devices), the lr_transfer learning-rate grid (rates split over the devices) and
a tract run (its batches split, and under 2x2 its state sharded, by sharding constraints).
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.getcwd())
import ml_collections  # noqa: E402

from experiments import lr_transfer, ntk_permutations, run, tract  # noqa: E402
from jaxlab import models, ntk  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

MESH4 = mesh_lib.make_mesh(4, 1)
MESH1 = mesh_lib.make_mesh(1, 1, devices=jax.devices()[:1])


def layout(x):
  """(first member, members) held by each device, in device order."""
  return sorted((s.device.id, s.index[0].start or 0, s.data.shape[0])
                for s in x.addressable_shards)


def ensemble():
  x, y = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[1, 2, 0]]
  args = (x, y, np.ones((2, 3), np.float32))
  kw = dict(width=16, steps=10, learning_rate=0.2)
  r4 = ntk.train_ensemble(jax.random.key(3), *args, n_members=8, mesh=MESH4, **kw)
  r1 = ntk.train_ensemble(jax.random.key(3), *args, n_members=8, mesh=MESH1, **kw)
  # 6 members padded to 8 for the 4 devices (the default mesh: every device; the program of
  # r4 again). Several chunks on one device: tests/ntk/ensembles_test.py.
  c4 = ntk.train_ensemble(jax.random.key(3), *args, n_members=6, **kw)
  config = run.load_config("experiments/configs/ntk_permutations.py:quick")
  config.mesh.data, config.mesh.fsdp = 2, 2
  try:
    ntk_permutations.validate(config)
    error = ""
  except ValueError as e:
    error = str(e)
  return {"layout": layout(r4.outputs), "out4": mesh_lib.to_host(r4.outputs).tolist(),
          "out1": mesh_lib.to_host(r1.outputs).tolist(),
          "chunked4": mesh_lib.to_host(c4.outputs).tolist(), "fsdp_error": error}


def lr_grid():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 40)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=64))
  model = models.mlp(40, (16, 16), 10, parametrization="mup")
  params = model.init(jax.random.key(0))
  base = optax.scale_by_adam()
  scales = lr_transfer.lr_multipliers(params, "mup", "adam", 16, 8)
  loss = lr_transfer.make_loss(model.apply, "cross_entropy", 10)
  trainer = lr_transfer.make_trainer(loss, base, scales, x, y)
  idx = jnp.asarray(np.stack([rng.permutation(64)[:16] for _ in range(8)]))
  lrs = np.asarray([2.0 ** -8, 2.0 ** -6, 2.0 ** -4], np.float32)  # padded to 4 rates
  placed = []
  put = mesh_lib.put_split

  def spy(tree, mesh):
    out = put(tree, mesh)
    placed.append(layout(out))
    return out

  mesh_lib.put_split = spy
  f4, first4 = lr_transfer.lr_grid_losses(trainer, loss, params, base, lrs, idx, x, y, MESH4)
  mesh_lib.put_split = put
  f1, first1 = lr_transfer.lr_grid_losses(trainer, loss, params, base, lrs, idx, x, y, MESH1)
  return {"layout": placed, "final4": f4.tolist(), "final1": f1.tolist(),
          "first": [first4, first1]}


def tract_run():
  config = ml_collections.ConfigDict(dict(batch_size=16, eval_every_steps=5, num_steps=10,
                                          mlp=dict(hidden_sizes=(32,))))
  rng = np.random.default_rng(1)
  x_tr, x_te = (rng.normal(size=(n, 40)).astype(np.float32) for n in (64, 32))
  y_tr, y_te = rng.integers(0, 10, size=64), rng.integers(0, 10, size=32)
  init, loss, logits = tract.build_model("mlp_mnist1d", config, 0.1, 40)
  out = {}
  for name, mesh in (("1", MESH1), ("4x1", MESH4), ("2x2", mesh_lib.make_mesh(2, 2))):
    trainer = tract.make_trainer(init, loss, logits, optax.adam(3e-3), config, mesh)
    compiled = trainer.lower(x_tr, y_tr, x_te, y_te, 0).compile()
    text = compiled.as_text()
    acc, train_loss = compiled(x_tr, y_tr, x_te, y_te, 0)
    out[name] = {"acc": np.asarray(acc).tolist(), "loss": np.asarray(train_loss).tolist(),
                 "all_gathers": text.count(" all-gather("),
                 "all_reduces": text.count(" all-reduce(")}
  return out


if __name__ == "__main__":
  print(json.dumps({"devices": jax.device_count(), "ensemble": ensemble(), "lr_grid": lr_grid(),
                    "tract": tract_run()}))
