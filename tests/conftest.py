"""Shared pytest setup: strict rank promotion, a fixture counting XLA compiles, and the
`--repro-seed` option whose value every `repro` test takes all its randomness from."""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
import pytest  # noqa: E402


@pytest.fixture
def compiles():
  """A list that receives one entry per XLA backend compile from now on."""
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
