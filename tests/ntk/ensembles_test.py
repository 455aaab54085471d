"""Vmapped GD ensembles against a per-member reference loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import ntk


def test_vmapped_ensemble_equals_sequential_gd():
  x, y = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[1, 2, 0]]
  xs = np.ones((2, 3), np.float32)
  key, lr, steps = jax.random.key(3), 0.2, 25
  res = ntk.train_ensemble(key, x, y, xs, n_members=5, width=16, steps=steps, learning_rate=lr,
                           chunk_size=2)  # chunks of 2: the last one padded
  assert res.outputs.shape == (5, 2, 3) and res.train_loss.shape == (5,)
  for m in (0, 4):
    p = ntk.init_two_layer(jax.random.fold_in(key, m), 3, 16, 3)
    loss = lambda q: 0.5 * jnp.sum((ntk.apply_two_layer(q, x) - y) ** 2)
    gd_step = jax.jit(lambda q, loss=loss: jax.tree_util.tree_map(
        lambda a, b: a - lr * b, q, jax.grad(loss)(q)))
    for _ in range(steps):
      p = gd_step(p)
    np.testing.assert_allclose(res.outputs[m], ntk.apply_two_layer(p, xs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.train_loss[m], loss(p), rtol=1e-4, atol=1e-6)
  res0 = ntk.train_ensemble(key, x, y, xs, n_members=5, width=16, steps=0, learning_rate=lr)
  assert float(jnp.mean(res.train_loss)) < 0.5 * float(jnp.mean(res0.train_loss))


def test_gd_settings_and_bad_arguments():
  theta = ntk.two_layer_ntk(np.eye(4), dtype=jnp.float64)
  lr, steps = ntk.gd_settings(theta, tolerance=1e-3)
  lam = np.linalg.eigvalsh(np.asarray(theta))
  assert abs(lr - 1 / lam[-1]) < 1e-12 and (1 - lr * lam[0]) ** steps <= 1e-3
  with pytest.raises(ValueError, match="lr_fraction"):
    ntk.gd_settings(theta, lr_fraction=2.5)
  with pytest.raises(ValueError, match="n_members"):
    ntk.train_ensemble(jax.random.key(0), np.eye(2), np.eye(2), np.eye(2), n_members=0,
                       width=4, steps=1, learning_rate=0.1)
  with pytest.raises(ValueError, match="x_test"):
    ntk.train_ensemble(jax.random.key(0), np.eye(2), np.eye(2), np.eye(3), n_members=1,
                       width=4, steps=1, learning_rate=0.1)
