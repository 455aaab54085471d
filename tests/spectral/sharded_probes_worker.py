"""The probes on params sharded over a mesh; prints one JSON line of results.

Run under 4 forced host devices by sharded_probes_test.py (a subprocess), which
computes the same probes on one device in its own process and compares. Also
imported by the test for the problems and the probe runs (one definition).
"""
import importlib
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "spectral"))
import spectral_models as sm  # noqa: E402

from jaxlab import models  # noqa: E402
from jaxlab.icl import training  # noqa: E402
from jaxlab.spectral import operators as ops  # noqa: E402
from jaxlab.train import mesh as mesh_lib  # noqa: E402

# jaxlab.spectral re-exports the functions under the module names
lz = importlib.import_module("jaxlab.spectral.lanczos")
eigen = importlib.import_module("jaxlab.spectral.eigen")
density = importlib.import_module("jaxlab.spectral.density")
trace = importlib.import_module("jaxlab.spectral.trace")

MESHES = ((1, 4), (2, 2))
# 40 and 60 steps share one basis size (64 rows), so one compiled step serves both
K, TOP_ITERS, SLQ_ITERS, SLQ_DRAWS, PROBES = 5, 60, 40, 1, 6


def problems():
  """name -> (loss, params, [batch, ...]): a small MLP (n = 636, divisible by 4) and a
  one-layer ICL transformer (n not divisible by 4)."""
  params = sm.mlp_init(0, sizes=(6, 24, 16, 4))
  x, y = sm.mlp_data(1, n=64, d=6, c=4)
  mlp = (sm.mlp_loss, params, [(x[:32], y[:32]), (x[32:], y[32:])])
  model = models.ICLTransformer(num_layers=1, num_heads=2, width=16, max_points=6)
  icl = (training.regression_loss(model.apply), icl_params(model), [prompts(2), prompts(3)])
  return {"mlp": mlp, "icl": icl}


def icl_params(model):
  """Random parameters of the model's shapes from NumPy (jax.eval_shape: nothing compiles;
  an eager flax init took 5 s of CPU): kernels N(0, 1/fan_in), LayerNorm scales near 1."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6, 3)), jnp.zeros((1, 6)))
  rng = np.random.default_rng(0)

  def one(path, leaf):
    z = rng.standard_normal(leaf.shape).astype(np.float32)
    name = str(path[-1])
    if "kernel" in name:
      return z / np.sqrt(leaf.shape[0])
    return 1 + 0.1 * z if "scale" in name else 0.1 * z
  return jax.tree_util.tree_map_with_path(one, shapes)


def prompts(seed, b=16, n=6, d=3):
  """A batch of linear-regression prompts (as jaxlab.icl.training.PromptBatches, from NumPy)."""
  rng = np.random.default_rng(seed)
  xs = rng.standard_normal((b, n, d)).astype(np.float32)
  ys = np.einsum("bnd,bd->bn", xs, rng.standard_normal((b, d))).astype(np.float32)
  return {"xs": xs, "ys": ys, "mask": np.ones((b, n), np.float32),
          "dims": np.full((b,), d, np.float32)}


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def probe(loss, params, batches):
  """Top-5 (one batch), SLQ density (the two batches: the data-set operator) and
  Hutchinson (one batch), each from a fixed key."""
  one = ops.hessian_vp(loss, params, batches[0])
  pairs = eigen.top_eigenpairs(one, params, K, jax.random.key(0), num_iters=TOP_ITERS)
  vecs = np.stack([flat(jax.tree.map(lambda a, i=i: a[i], pairs.eigenvectors)) for i in range(K)])
  dens = density.spectral_density(ops.hessian_vp(loss, params, batches), params, SLQ_ITERS,
                                  SLQ_DRAWS, jax.random.key(1))
  tr = trace.trace(one, params, PROBES, jax.random.key(2), method="hutchinson")
  return {"eigenvalues": pairs.eigenvalues.tolist(), "eigenvectors": vecs.tolist(),
          "residuals": pairs.residuals.tolist(), "nodes": dens.nodes.tolist(),
          "weights": dens.weights.tolist(), "trace": tr.estimate,
          "trace_samples": np.asarray(tr.samples).tolist(),
          "eigvec_specs": sorted({str(getattr(a.sharding, "spec", None)) for a in
                                  jax.tree.leaves(pairs.eigenvectors)})}


def ggn_top(params, batch):
  """Top-5 of the MLP's GGN (softmax cross-entropy outputs), the Lanczos run of `probe`."""
  mv = ops.ggn_vp(sm.mlp_apply, sm.xent, params, batch)
  return eigen.top_eigenpairs(mv, params, K, jax.random.key(0), num_iters=TOP_ITERS
                              ).eigenvalues.tolist()


def basis_layout(loss, params, batches):
  """How the Lanczos basis of a sharded run is laid out: per-device shard shapes.

  The runs repeat the probes' (same steps, start vectors and operators), so they
  reuse every compiled piece.
  """
  layout = ops.layout_of(params)
  spec = ops.flat_spec(params)
  V, _, _ = lz.run_lanczos(ops.hessian_vp(loss, params, batches), spec, jax.random.key(1),
                           SLQ_ITERS, True, np.float32, dist="rademacher", layout=layout)
  shards = [s.data.shape for s in V.addressable_shards]
  out = {"shape": list(V.shape), "shard_shapes": [list(s) for s in shards],
         "devices": len({s.device for s in V.addressable_shards}), "n": spec.size}
  one = ops.hessian_vp(loss, params, batches[0])
  if spec.size % layout.mesh.size == 0:
    res = lz.lanczos(one, params, TOP_ITERS, jax.random.key(0), return_basis=True)
    out["returned"] = {"shape": list(res.basis.shape),
                       "shard_shapes": sorted({tuple(s.data.shape)
                                               for s in res.basis.addressable_shards})}
  else:  # refused before anything runs: (m, n) cannot be split evenly along n
    out["returned"] = _error(lambda: lz.lanczos(one, params, 10, jax.random.key(0),
                                                return_basis=True))
  # the NumPy host path would gather the basis: refused for placed params
  out["host"] = _error(lambda: eigen.top_eigenpairs(one, params, K, jax.random.key(0), host=True))
  return out


def _error(fn):
  try:
    fn()
  except ValueError as e:
    return str(e)
  return None


def readme_example(loss, params, batch):
  """The README's "Probing a sharded model" example, run as printed (mesh 1x4)."""
  text = open("README.md").read().split("### Probing a sharded model")[1].split("\n## ")[0]
  code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
  scope = {"loss_fn": loss, "params": params, "batch": batch}
  exec(compile(code, "README.md", "exec"), scope)
  return {"eigenvalues": scope["pairs"].eigenvalues.tolist(),
          "eigvec_specs": sorted({str(a.sharding.spec) for a in
                                  jax.tree.leaves(scope["pairs"].eigenvectors)}),
          "nodes_shape": list(scope["density"].nodes.shape)}


def main():
  assert jax.device_count() == 4, jax.devices()
  out = {}
  for name, (loss, params, batches) in problems().items():
    for d, f in MESHES:
      mesh = mesh_lib.make_mesh(d, f)
      p = jax.device_put(params, mesh_lib.tree_shardings(params, mesh))
      bs = batches
      if (d, f) == (2, 2):  # batches the caller already sharded over the `data` axis
        rows = NamedSharding(mesh, PartitionSpec("data"))
        bs = [jax.device_put(b, rows) for b in batches]
      res = probe(loss, p, bs)
      res["basis"] = basis_layout(loss, p, bs)
      if name == "mlp":
        res["ggn"] = ggn_top(p, bs[0])
      res["fraction"] = sum(int(np.prod(a.sharding.shard_shape(a.shape)))
                            for a in jax.tree.leaves(p)) / ops.flat_spec(p).size
      out[f"{name}_{d}x{f}"] = res
  loss, params, batches = problems()["mlp"]
  out["readme"] = readme_example(loss, params, batches[0])
  print(json.dumps(out))


if __name__ == "__main__":
  main()
