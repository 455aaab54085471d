"""Studies' own jitted programs on the mesh of `jaxlab.train.mesh`, under 4 forced host devices
(tests/experiments/split_over_mesh_worker.py in a subprocess): the NTK-permutations ensemble's
members and the lr_transfer grid's learning rates are split over the devices, a tract run's
batches (and under 2x2 its state) too, and the results equal one device's."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "experiments", "split_over_mesh_worker.py")


@pytest.fixture(scope="module")
def four_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, WORKER], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4
  return out


def test_ensemble_members_split_over_four_devices_equal_one_device(four_devices):
  e = four_devices["ensemble"]
  # Split for real: each device holds 2 consecutive members of 8 (replicated: all 8 on each).
  assert [row[1:] for row in e["layout"]] == [[0, 2], [2, 2], [4, 2], [6, 2]]
  # float32: every member runs the same program on either layout (~1e-7 relative).
  np.testing.assert_allclose(e["out4"], e["out1"], rtol=1e-5, atol=1e-6)
  # 6 members padded to 8: the first 6 members, unchanged.
  np.testing.assert_allclose(e["chunked4"], np.asarray(e["out1"])[:6], rtol=1e-5, atol=1e-6)
  assert "'mesh.fsdp': got 2; allowed: 1" in e["fsdp_error"]


def test_lr_grid_split_over_four_devices_equals_one_device(four_devices):
  g = four_devices["lr_grid"]
  # 3 rates padded to 4, one per device.
  assert [[row[1:] for row in lay] for lay in g["layout"]] == [[[0, 1], [1, 1], [2, 1], [3, 1]]]
  assert len(g["final4"]) == 3
  np.testing.assert_allclose(g["final4"], g["final1"], rtol=1e-5)
  assert g["first"][0] == pytest.approx(g["first"][1], rel=1e-6)


def test_tract_run_on_two_meshes_equals_one_device(four_devices):
  t = four_devices["tract"]
  for name in ("4x1", "2x2"):
    # float32: the gradient's sum over the batch is split over devices (~1e-7 relative);
    # 10 Adam steps keep it near that (accuracies on 32 test points: exact).
    np.testing.assert_allclose(t[name]["loss"], t["1"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(t[name]["acc"], t["1"]["acc"])
    assert t[name]["all_reduces"] > 0  # the gradient is summed across the batch's devices
  assert t["1"]["all_reduces"] == t["1"]["all_gathers"] == 0
  # Sharded state under 2x2: XLA gathers the parameters where they are used.
  assert t["2x2"]["all_gathers"] > t["4x1"]["all_gathers"], t


@pytest.mark.parametrize("study", ["optimizer_benchmark", "lr_transfer", "ntk_permutations",
                                   "tract", "hyperfree"])
@pytest.mark.parametrize("overrides, match", [
    ({"mesh.fsdp": 3}, r"'mesh.fsdp': 3; allowed: a divisor of the device count"),
    ({"mesh.data": 2}, r"'mesh.data': 2 with mesh.fsdp=1; allowed: mesh.data × mesh.fsdp"),
])
def test_bad_mesh_keys_refused_before_compile(compiles, study, overrides, match):
  from experiments import run

  with pytest.raises(ValueError, match=match):
    run.prepare(f"experiments/configs/{study}.py:quick", overrides)
  assert compiles == []
