"""An int seed as the key: the start vector of jax.random.key(s), bit for bit, on both paths."""

import jax
import numpy as np
import pytest

from jaxlab.spectral import eigen, lanczos_host
from jaxlab.spectral.lanczos import lanczos

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


def test_bad_int_seed_raises():
  mv, x = _diag()
  for s in (-1, 2 ** 32):
    with pytest.raises(ValueError, match=f"key is {s}; allowed: a PRNG key"):
      eigen.top_eigenpairs(mv, x, 1, s, num_iters=5)
