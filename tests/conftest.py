"""Shared pytest setup: strict rank promotion, a fixture counting XLA compiles, and the
`--repro-seed` option whose value every `repro` test takes all its randomness from."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# One persistent XLA compilation cache per test session, shared by the xdist workers and every
# subprocess they start (through the environment): the suite compiles the same small programs in
# many processes (each kill-and-resume run, each study run), and a cache hit returns the same
# executable, so results are unchanged. The first process (the xdist controller, or a plain
# pytest) makes the folder and removes it at exit; a folder set by the user is left alone.
# `max_size` turns on jax's file lock around every read and write of an entry, so two processes
# never see each other's half-written entry. Tests that SIGKILL a process at random instants
# point it at JAXLAB_TEST_KILL_CACHE_DIR instead (tests/train/faults_common.py): a kill during a
# write can leave a truncated entry, which jax only warns about and recompiles, but that warning
# must not reach the stderr another test reads.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "JAXLAB_TEST_NO_XLA_CACHE" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="jaxlab-test-xla-cache-")
  atexit.register(shutil.rmtree, _cache, True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=os.path.join(_cache, "shared"),
                    JAXLAB_TEST_KILL_CACHE_DIR=os.path.join(_cache, "kills"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                    JAX_COMPILATION_CACHE_MAX_SIZE=str(4 << 30))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
if "JAXLAB_TEST_KILL_CACHE_DIR" in os.environ:  # in case jax was imported before this file
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", 4 << 30)
import pytest  # noqa: E402


@pytest.fixture
def compiles():
  """A list that receives one entry per XLA backend compile from now on (a program served by
  the session's persistent compilation cache counts too: jax times both as one event)."""
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: events.append(name)
      if name == "/jax/core/compile/backend_compile_duration" else None)
  return events


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
