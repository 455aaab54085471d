"""The probes in a job of 2 processes (2 forced host devices each, CPU collectives over
gloo): params sharded over all 4 devices, a data-set operator whose batches each
process feeds its own rows of; top-5 and the SLQ density equal one device's."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "spectral"))
import sharded_probes_worker as worker  # noqa: E402

WORKER = os.path.join("tests", "spectral", "sharded_probes_mp_worker.py")


def _gloo():
  try:
    from jax._src.lib import _jax
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.skipif(not _gloo(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_equal_one_device(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = _port()
  procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(tmp_path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  loss, params, batches = worker.problems()["mlp"]
  mv = worker.ops.hessian_vp(loss, params, batches)
  lam = worker.eigen.top_eigenpairs(mv, params, worker.K, worker.jax.random.key(0),
                                    num_iters=worker.TOP_ITERS).eigenvalues
  dens = worker.density.spectral_density(mv, params, worker.SLQ_ITERS, 1,
                                         worker.jax.random.key(1))
  try:
    logs = [p.communicate(timeout=600)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
  for i in range(2):
    got = json.loads((tmp_path / f"process_{i}.json").read_text())
    assert got["params_span_processes"] and got["local_rows_only"], (i, got)
    # float32 Lanczos with sums over devices and processes in another order
    np.testing.assert_allclose(got["eigenvalues"], lam, rtol=0, atol=1e-5 * np.max(np.abs(lam)))
    np.testing.assert_allclose(got["nodes"], dens.nodes, rtol=0,
                               atol=1e-5 * np.max(np.abs(dens.nodes)))
    np.testing.assert_allclose(got["weights"], dens.weights, rtol=0, atol=1e-5)
