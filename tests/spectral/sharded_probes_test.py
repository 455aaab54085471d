"""Probes on params sharded over a (data, fsdp) mesh of 4 forced host devices equal the
single-device probes, and the Lanczos basis stays split over the devices.

tests/spectral/sharded_probes_worker.py runs in a subprocess with 4 forced host
devices (as tests/train/mesh_test.py does) and places the params with
`jaxlab.train.mesh.tree_shardings` on the 1x4 and 2x2 meshes; this process has
one device and computes the same probes unsharded (the reference).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "spectral"))
import sharded_probes_worker as worker  # noqa: E402

CASES = [f"{name}_{d}x{f}" for name in ("mlp", "icl") for d, f in worker.MESHES]


@pytest.fixture(scope="module")
def runs():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, os.path.join("tests", "spectral",
                                                        "sharded_probes_worker.py")],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  problems = worker.problems()
  ref = {name: worker.probe(*problem) for name, problem in problems.items()}
  ref["mlp"]["ggn"] = worker.ggn_top(problems["mlp"][1], problems["mlp"][2][0])
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-4000:]
  assert "Involuntary full rematerialization" not in err, err[-2000:]
  return ref, json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_top5_equal_unsharded(runs, case):
  ref, got = runs[0][case.split("_")[0]], runs[1][case]
  lam, lam_ref = np.asarray(got["eigenvalues"]), np.asarray(ref["eigenvalues"])
  # float32 Lanczos in another reduction order: converged Ritz values agree to a
  # few eps·‖A‖ (eps = 1.2e-7) times the growth over 60 steps.
  np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-5 * np.max(np.abs(lam_ref)))
  V, V_ref = np.asarray(got["eigenvectors"]), np.asarray(ref["eigenvectors"])
  signs = np.sign(np.sum(V * V_ref, axis=1, keepdims=True))
  # unit vectors; an eigenvector moves by rounding / gap (the top-5 gaps are >= 1e-2 ‖A‖)
  np.testing.assert_allclose(signs * V, V_ref, rtol=0, atol=1e-3)
  # returned laid out like the params (the k axis whole), not gathered on one device
  assert any("fsdp" in s for s in got["eigvec_specs"]), got["eigvec_specs"]


@pytest.mark.parametrize("case", CASES)
def test_density_equal_unsharded(runs, case):
  """SLQ over the data-set operator (two batches) from the same key."""
  ref, got = runs[0][case.split("_")[0]], runs[1][case]
  nodes, nodes_ref = np.asarray(got["nodes"]), np.asarray(ref["nodes"])
  np.testing.assert_allclose(nodes, nodes_ref, rtol=0, atol=1e-5 * np.max(np.abs(nodes_ref)))
  np.testing.assert_allclose(got["weights"], ref["weights"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_hutchinson_equal_unsharded(runs, case):
  ref, got = runs[0][case.split("_")[0]], runs[1][case]
  # the same Rademacher probes (same key), products differing by float32 rounding
  np.testing.assert_allclose(got["trace_samples"], ref["trace_samples"], rtol=1e-5,
                             atol=1e-5 * np.max(np.abs(ref["trace_samples"])))
  assert got["trace"] == pytest.approx(ref["trace"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_basis_is_split_over_the_devices(runs, case):
  got = runs[1][case]
  basis = got["basis"]
  K, rows, C = basis["shape"]
  assert basis["devices"] == 4 and K * C >= basis["n"]
  # every device holds K/4 chunks of every row: a quarter, never the whole basis
  assert basis["shard_shapes"] == [[K // 4, rows, C]] * 4
  if basis["n"] % 4 == 0:  # lanczos(return_basis=True) is split along n
    m, n = basis["returned"]["shape"]
    assert n == basis["n"] and basis["returned"]["shard_shapes"] == [[m, n // 4]]
  else:
    assert "return_basis=True with params_like placed over 4 devices" in basis["returned"]
  assert "host is True but params_like is placed over 4 devices" in basis["host"]
  # the params themselves were sharded (a device holds about 1/fsdp of them)
  fsdp = int(case.split("x")[1])
  assert got["fraction"] < 1 / fsdp + 0.05, got["fraction"]


def test_readme_example(runs):
  """The README's example (MLP, mesh 1x4, one batch) gives the unsharded top-5."""
  ref, got = runs[0]["mlp"], runs[1]["readme"]
  lam_ref = np.asarray(ref["eigenvalues"])
  np.testing.assert_allclose(got["eigenvalues"], lam_ref, rtol=0,
                             atol=1e-5 * np.max(np.abs(lam_ref)))
  assert any("fsdp" in s for s in got["eigvec_specs"]) and got["nodes_shape"] == [1, 40]


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("mlp")])
def test_ggn_top5_equal_unsharded(runs, case):
  lam_ref = np.asarray(runs[0]["mlp"]["ggn"])
  np.testing.assert_allclose(runs[1][case]["ggn"], lam_ref, rtol=0,
                             atol=1e-5 * np.max(np.abs(lam_ref)))
