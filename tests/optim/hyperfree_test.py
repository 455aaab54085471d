"""The learning-rate-free learners in the registry: `optim.get(name)` with no per-workload
argument trains; DoG and DoWG follow their papers' step rules (a float64 numpy loop);
bad names and arguments are ValueErrors naming them."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlab.optim as jo
from jaxlab import models
from jaxlab.train import recipes

# The self-tuning entries: every learning-rate-free learner plus schedule-free AdamW
# (optax's defaults, learning rate 0.0025, are its one fixed configuration).
SELF_TUNING = (*jo.registry.LEARNING_RATE_FREE, "schedule_free_adamw")


def test_the_learning_rate_free_learners_are_registered():
  assert set(jo.registry.LEARNING_RATE_FREE) == {"prodigy", "dog", "dowg", "mechanic", "cocob",
                                                 "dadapt_adamw"}
  assert set(SELF_TUNING) <= set(jo.NAMES)


def _mlp_problem():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((128, 10)).astype(np.float32)
  y = (x[:, :3].argmax(1)).astype(np.int32)  # learnable: the largest of 3 inputs
  model = models.mlp(10, (32,), 3)
  return model, {"x": x, "y": y}


@pytest.mark.parametrize("name", SELF_TUNING)
def test_no_argument_trains_a_small_mlp(name):
  model, batch = _mlp_problem()
  loss_fn = recipes.classification_loss(model.apply)
  loss = lambda p: loss_fn(p, batch, None)[0]  # noqa: E731
  tx = jo.get(name)  # one fixed configuration: nothing about the problem is passed

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (p, tx.init(p)), None, length=300)[0]

  p0 = model.init(jax.random.key(0))
  p, state = run(p0)
  if name == "schedule_free_adamw":
    p = optax.contrib.schedule_free_eval_params(state, p)  # trained at y, evaluated at x
  l0, l1 = float(loss(p0)), float(loss(p))
  # From 1.55 at init, 300 full-batch steps end at 0 to 0.13 (measured; schedule-free
  # AdamW, at its small default rate, is the highest); a learner that barely moves stays
  # near 1.55, one that diverges is not finite.
  assert np.isfinite(l1) and l1 < 0.25 < l0, (name, l0, l1)


def _quadratic():
  c = np.linspace(1.0, 5.0, 6)
  return c, lambda x: 0.5 * np.sum(c * (x - 1.0) ** 2), lambda x: c * (x - 1.0)


def _optax_iterates(tx, x0, grad, steps):
  xs, x, s = [], jnp.asarray(x0), tx.init(jnp.asarray(x0))
  for _ in range(steps):
    u, s = tx.update(grad(x), s, x)
    x = optax.apply_updates(x, u)
    xs.append(np.asarray(x))
  return np.stack(xs)


def test_dog_follows_the_papers_step_rule():
  # Ivgi, Hinder & Carmon 2023 (arXiv:2302.12022), Sec. 2 (the DoG step):
  # eta_t = rbar_t / sqrt(sum_{i<=t} |g_i|^2), rbar_t = max(r_eps, max_{i<=t} |x_i - x_0|),
  # r_eps = 1e-6 (1 + |x_0|) (optax's "heuristic" initial distance, the authors' default).
  _, _, grad = _quadratic()
  x0 = np.linspace(-1.0, 1.0, 6)
  x, rbar, g2 = x0.copy(), 1e-6 * (1 + np.linalg.norm(x0)), 0.0
  ref = []
  for _ in range(40):
    g = grad(x)
    rbar = max(rbar, np.linalg.norm(x - x0))
    g2 += g @ g
    x = x - rbar / np.sqrt(g2 + 1e-8) * g
    ref.append(x)
  with jax.enable_x64(True):
    got = _optax_iterates(jo.get("dog"), x0, lambda x: jnp.asarray(grad(np.asarray(x))), 40)
  np.testing.assert_allclose(got, np.stack(ref), rtol=1e-10, atol=1e-12)  # float64 both


def test_dowg_follows_the_papers_step_rule():
  # Khaled, Mishchenko & Jin 2023 (arXiv:2305.16284), Algorithm 1: rbar_t = max(rbar_{t-1},
  # |x_t - x_0|), v_t = v_{t-1} + rbar_t^2 |g_t|^2, eta_t = rbar_t^2 / sqrt(v_t); rbar_0^2 =
  # 1e-4 (optax's default initial squared distance = its eps).
  _, _, grad = _quadratic()
  x0 = np.linspace(-1.0, 1.0, 6)
  x, r2, v = x0.copy(), 1e-4, 0.0
  ref = []
  for _ in range(40):
    g = grad(x)
    r2 = max(r2, np.sum((x - x0) ** 2))
    v += r2 * (g @ g)
    x = x - r2 / (np.sqrt(v) + 1e-4) * g
    ref.append(x)
  with jax.enable_x64(True):
    got = _optax_iterates(jo.get("dowg"), x0, lambda x: jnp.asarray(grad(np.asarray(x))), 40)
  np.testing.assert_allclose(got, np.stack(ref), rtol=1e-10, atol=1e-12)


def test_mechanic_wraps_the_named_base_at_rate_one():
  p = {"w": jnp.linspace(-1.0, 1.0, 5)}
  g = {"w": jnp.linspace(0.5, -0.3, 5)}
  for base, ref_base in (("adam", optax.adam(1.0)), ("sgd", optax.sgd(1.0))):
    tx, ref = jo.get("mechanic", base=base), optax.contrib.mechanize(ref_base)
    s, r = tx.init(p), ref.init(p)
    for _ in range(3):
      u, s = tx.update(g, s, p)
      v, r = ref.update(g, r, p)
      np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(v["w"]))


@pytest.mark.parametrize("call, match", [
    (lambda: jo.get("prodigyy"), r"name='prodigyy' is unknown: allowed .*prodigy, dog, dowg"),
    (lambda: jo.get("prodigy", lr=1.0), r"lr not accepted by optimizer 'prodigy': allowed "
                                        r"learning_rate, betas"),
    (lambda: jo.get("dog", learning_rate=-1.0), r"learning_rate=-1.0 is negative"),
    (lambda: jo.get("cocob", alpha=float("nan")), r"alpha=nan is not finite"),
    (lambda: jo.get("mechanic", base="adagrad"),
     r"base='adagrad' is not allowed for mechanic: allowed \['adam', 'lion', 'momentum', 'sgd'\]"),
    (lambda: jo.get("mechanic", num_betas=0), r"num_betas=0 is not allowed for mechanic"),
    (lambda: jo.get("adam"), r"optimizer 'adam' needs learning_rate="),
])
def test_bad_names_and_arguments_are_value_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
