"""One of 2 processes (2 forced host devices each) probing params sharded over all 4.

    python tests/spectral/sharded_probes_mp_worker.py PORT PROCESS_ID OUT_DIR

Run by sharded_probes_multiprocess_test.py. Every process passes the same global
batches; the data-set operator places each one so that a process feeds only the
rows its devices hold. Writes OUT_DIR/process_I.json.
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "spectral"))
from jaxlab.train import multihost  # noqa: E402

port, index, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
multihost.initialize(f"127.0.0.1:{port}", 2, index, heartbeat_timeout_seconds=30)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import sharded_probes_worker as worker  # noqa: E402

from jaxlab.spectral import operators as ops  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402
from jaxlab.train import sharding  # noqa: E402


def local_rows_only(batch, mesh):
  """The placed batch is one global array per leaf, and this process's shards are
  exactly its rows of the global batch (`sharding.host_batch`)."""
  placed = ops.place_batch(batch, mesh)
  mine = sharding.host_batch(jax.tree.map(np.asarray, batch), mesh)
  for x, rows in zip(jax.tree.leaves(placed), jax.tree.leaves(mine), strict=True):
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    local = np.concatenate([np.asarray(s.data) for s in shards])
    if x.is_fully_addressable or local.shape != rows.shape or not np.array_equal(local, rows):
      return False
  return True


def main():
  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  loss, params, batches = worker.problems()["mlp"]
  params = jax.tree.map(np.asarray, params)
  batches = [jax.tree.map(np.asarray, b) for b in batches]
  mesh = mesh_lib.make_mesh(1, 4)
  p = jax.tree.map(mesh_lib._put, params, mesh_lib.tree_shardings(params, mesh))
  mv = ops.hessian_vp(loss, p, batches)
  pairs = worker.eigen.top_eigenpairs(mv, p, worker.K, jax.random.key(0),
                                      num_iters=worker.TOP_ITERS)
  dens = worker.density.spectral_density(mv, p, worker.SLQ_ITERS, 1, jax.random.key(1))
  result = {"eigenvalues": pairs.eigenvalues.tolist(), "nodes": dens.nodes.tolist(),
            "weights": dens.weights.tolist(), "local_rows_only": local_rows_only(batches[0], mesh),
            "params_span_processes": not jax.tree.leaves(p)[0].is_fully_addressable}
  with open(os.path.join(out, f"process_{index}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
