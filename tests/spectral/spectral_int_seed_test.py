"""An int seed as the key: the start vector of jax.random.key(s), bit for bit, on both paths;
the same for spectral_density's draws and trace's probes."""

import re

import jax
import numpy as np
import pytest

from jaxlab.spectral import batch_lr, eigen, lanczos_host
from jaxlab.spectral.density import spectral_density
from jaxlab.spectral.lanczos import lanczos
from jaxlab.spectral.trace import trace

SEEDS = (0, 7, 2 ** 31, 2 ** 32 - 1)


def _diag():
  lam = np.concatenate([[10.0, 8.0], np.linspace(0.0, 1.0, 98)]).astype(np.float32)
  d = jax.numpy.asarray(lam)
  return (lambda v: d * v), jax.numpy.zeros(lam.size, np.float32)


def test_int_seed_words_are_the_default_keys():
  for s in SEEDS:
    np.testing.assert_array_equal(lanczos_host.key_words(s),
                                  np.asarray(jax.random.key_data(jax.random.key(s))))
  key = jax.random.key(3)
  assert lanczos_host.key_words(key) is key


@pytest.mark.parametrize("host", [True, False])
def test_int_seed_gives_the_same_run_as_its_key(host):
  mv, x = _diag()
  for s in (0, 2 ** 32 - 1):
    a = lanczos(mv, x, 12, s, host=host)
    b = lanczos(mv, x, 12, jax.random.key(s), host=host)
    np.testing.assert_array_equal(a.alphas, b.alphas)
    np.testing.assert_array_equal(a.betas, b.betas)
  p = eigen.top_eigenpairs(mv, x, 1, 5, num_iters=12, host=host)
  q = eigen.top_eigenpairs(mv, x, 1, jax.random.key(5), num_iters=12, host=host)
  np.testing.assert_array_equal(p.eigenvalues, q.eigenvalues)


@pytest.mark.parametrize("host", [True, False])
def test_density_int_seed_gives_the_same_draws_as_its_key(host):
  mv, x = _diag()
  for s in (0, 2 ** 32 - 1):
    a = spectral_density(mv, x, 8, 2, s, host=host)
    b = spectral_density(mv, x, 8, 2, jax.random.key(s), host=host)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.weights, b.weights)


class _HostLoop:
  """The diagonal operator driven from Python, as trace drives hessian_vp's operators."""

  host_loop = True

  def __init__(self, mv):
    self.mv = mv

  def __call__(self, v):
    return self.mv(v)


def test_trace_int_seed_gives_the_same_probes_as_its_key():
  """Hutch++ draws every probe kind: the key split, the sketch, the deflated Hutchinson rows.
  On the host-loop path (hessian_vp's operators); a plain matvec's vmapped blocks draw with
  the same _probes, and adding them here doubled the test's time (~1.6 s of compiles)."""
  mv, x = _diag()
  s = 2 ** 32 - 1
  a = trace(_HostLoop(mv), x, 9, s)
  b = trace(_HostLoop(mv), x, 9, jax.random.key(s))
  np.testing.assert_array_equal(a.samples, b.samples)
  assert a.estimate == b.estimate and a.stderr == b.stderr


def test_top_eigenvalue_takes_an_int_seed():
  mv, x = _diag()
  assert batch_lr.top_eigenvalue(mv, x, 10, 3) == batch_lr.top_eigenvalue(
      mv, x, 10, jax.random.key(3))


def test_bad_key_raises_before_compiling(compiles):
  mv, x = _diag()
  bad = (-1, 2 ** 32, True, np.bool_(False), 1.5, np.float32(2.0), None, "0",
         jax.numpy.asarray(3), np.zeros(2, np.float32))
  calls = {
      "top_eigenpairs": lambda k: eigen.top_eigenpairs(mv, x, 1, k, num_iters=5),
      "lanczos": lambda k: lanczos(mv, x, 5, k),
      "spectral_density": lambda k: spectral_density(mv, x, 5, 1, k),
      "trace": lambda k: trace(mv, x, 6, k),
  }
  del compiles[:]
  for call in calls.values():
    for k in bad:
      with pytest.raises(ValueError, match=re.escape(f"key is {k!r}; allowed: a PRNG key")):
        call(k)
  assert compiles == [], compiles
