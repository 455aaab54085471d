"""jaxlab.train.host_memory: glibc's malloc keeps freed memory, so a CPU training loop stops
faulting its buffers in again, and computes the same numbers bit for bit."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc settings are glibc's")

# 100 Adam steps of a 0.5M-parameter MLP on the CPU: every step frees and allocates the params,
# both moments and the gradients (2 MiB each), the pattern of any training loop.
_LOOP = """
import hashlib, json, os, resource, sys
from jaxlab.train import host_memory
applied = host_memory.retain_freed_memory() if os.environ.get("APPLY") == "1" else None
import jax, jax.numpy as jnp, numpy as np, optax
k = jax.random.key(0)
params = {"w1": jax.random.normal(k, (256, 1024)) * 0.05,
          "w2": jax.random.normal(jax.random.fold_in(k, 1), (1024, 256)) * 0.05}
tx = optax.adam(1e-3)
def loss(p, x):
  return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - x) ** 2)
@jax.jit
def step(p, s, x):
  u, s = tx.update(jax.grad(loss)(p, x), s, p)
  return optax.apply_updates(p, u), s
s, x = tx.init(params), jax.random.normal(jax.random.fold_in(k, 2), (512, 256))
params, s = jax.block_until_ready(step(params, s, x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
  params, s = step(params, s, x)
jax.block_until_ready(params)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
digest = hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in jax.tree.leaves(params)))
print(json.dumps({"applied": applied, "faults": faults, "digest": digest.hexdigest()}))
"""


def _python(code, **env):
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "JAXLAB_MALLOC_DEFAULTS")}
  done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_training_loop_faults_far_less_and_computes_the_same():
  default = _python(_LOOP, APPLY="0")
  kept = _python(_LOOP, APPLY="1")
  assert kept["applied"] is True
  # measured on a 2-core CPU: 119,865 faults by default, 9,663 with the settings
  assert kept["faults"] < 0.3 * default["faults"], (kept, default)
  assert kept["digest"] == default["digest"]  # where buffers live, never what is computed


_STATE = """
import json, os
from jaxlab.train import host_memory
out = {}
if os.environ.get("START_BACKEND") == "1":
  import jax.numpy as jnp
  jnp.ones(2).block_until_ready()
out["first"] = host_memory.retain_freed_memory()
out["again"] = host_memory.retain_freed_memory()
print(json.dumps(out))
"""


def test_applies_once_before_the_backend_and_defers_to_the_user():
  assert _python(_STATE) == {"first": True, "again": True}
  # after JAX's backend started the settings no longer help (measured), so none are made
  assert _python(_STATE, START_BACKEND="1") == {"first": False, "again": False}
  # the user's own malloc settings, or an explicit opt-out, win
  for env in ({"MALLOC_TOP_PAD_": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"},
              {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
              {"JAXLAB_MALLOC_DEFAULTS": "1"}):
    assert _python(_STATE, **env) == {"first": False, "again": False}, env
  # huge pages (make run / make repro set them) are not one of those settings
  assert _python(_STATE, GLIBC_TUNABLES="glibc.malloc.hugetlb=1") == {"first": True,
                                                                       "again": True}
