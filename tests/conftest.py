"""Shared pytest setup: strict rank promotion, a fixture counting XLA compiles, and the
`--repro-seed` option whose value every `repro` test takes all its randomness from."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Subprocesses started by the tests (study runs, kill-and-resume runs, notebooks' kernels)
# share a persistent XLA compilation cache: they compile the same small programs again and
# again, and a cache hit returns the same executable, so results are unchanged. The test
# processes themselves do not use it (their own in-memory caches already serve repeated
# programs). One folder per xdist worker: the subprocesses of one worker run one after another,
# so no two processes write or read one folder at once (jax writes an entry in place, and a
# half-written entry read by another process is a warning on that process's stderr, which some
# tests read). Tests that SIGKILL a process at random instants point it at
# JAXLAB_TEST_KILL_CACHE_DIR instead (tests/train/faults_common.py): a kill during a write can
# leave a truncated entry. The first process (the xdist controller, or a plain pytest) makes the
# folder and removes it at exit; a cache folder set by the user is used as is.
_CHILD_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAXLAB_TEST_KILL_CACHE_DIR",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
if "JAXLAB_TEST_XLA_CACHE_ROOT" in os.environ:  # an xdist worker: the controller made the folder
  _OWN_CACHE = True
  for _var in _CHILD_VARS:  # the controller's own settings for its children, not for this one
    os.environ.pop(_var, None)
else:
  _OWN_CACHE = ("JAX_COMPILATION_CACHE_DIR" not in os.environ
                and "JAXLAB_TEST_NO_XLA_CACHE" not in os.environ)
  if _OWN_CACHE:
    os.environ["JAXLAB_TEST_XLA_CACHE_ROOT"] = tempfile.mkdtemp(prefix="jaxlab-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAXLAB_TEST_XLA_CACHE_ROOT"], True)

import jax  # noqa: E402

from jaxlab.train import host_memory  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# as the launcher does: freed host memory stays in the process (fewer page faults, same results)
host_memory.retain_freed_memory()
import pytest  # noqa: E402


@pytest.fixture
def compiles():
  """A list that receives one entry per XLA backend compile from now on."""
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: events.append(name)
      if name == "/jax/core/compile/backend_compile_duration" else None)
  return events


def pytest_configure(config):
  """Points the subprocesses of this test process at its folder of the shared cache (above)."""
  if not _OWN_CACHE:
    return
  root = os.environ["JAXLAB_TEST_XLA_CACHE_ROOT"]
  worker = getattr(config, "workerinput", {}).get("workerid", "main")
  # Set after jax's import, so this process keeps the cache off; its children read them.
  os.environ.update(JAX_COMPILATION_CACHE_DIR=os.path.join(root, worker),
                    JAXLAB_TEST_KILL_CACHE_DIR=os.path.join(root, f"{worker}-kills"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_addoption(parser):
  parser.addoption(
      "--repro-seed", type=int, default=0, metavar="N",
      help="root seed of every `repro` science test (init, data, sampling); default 0. "
      "`make repro` should pass for any N.")


@pytest.fixture
def repro_seed(request):
  """The `--repro-seed` value (an int >= 0): the only source of randomness of a repro test."""
  seed = request.config.getoption("--repro-seed")
  if seed < 0:
    raise ValueError(f"--repro-seed must be an int >= 0, got {seed}")
  return seed
