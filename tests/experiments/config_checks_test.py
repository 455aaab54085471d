"""Every bad input is refused by experiments.run.prepare before anything compiles or is written."""
import os
import re

import jax
import ml_collections
import pytest

import experiments.mlp_mnist1d
from experiments import run
from jaxlab import data
from jaxlab.train import checks

MLP = "experiments/configs/mlp_mnist1d.py:quick"
BENCH = "experiments/configs/optimizer_benchmark.py:quick"
NTK = "experiments/configs/ntk_permutations.py:quick"


def _main_fails(tmp_path, config, args, match):
  workdir = tmp_path / "wd"
  with pytest.raises(ValueError, match=match):
    run.main([f"--config={config}", f"--workdir={workdir}", *args])
  assert not workdir.exists() or not os.listdir(workdir)


@pytest.mark.parametrize("config, arg, match", [
    (MLP, "optimizer.learning_rate=1e999", r"'optimizer.learning_rate': inf.*not finite"),
    (MLP, "optimizer.learning_rate=nan", r"'optimizer.learning_rate': nan.*not finite"),
    (MLP, "optimizer.learning_rate=-inf", r"'optimizer.learning_rate': -inf.*not finite"),
    (BENCH, "lr_factors=(1.0, 1e999)", r"'lr_factors': \(1.0, inf\) has the element inf"),
    (MLP, "model.hidden_sizes=(64.5,64)",
     r"'model.hidden_sizes': element 0 of \(64.5, 64\) is 64.5 \(float\); allowed: a tuple of int"),
    (MLP, "model.hidden_sizes=(64)", r"'model.hidden_sizes': got 64 \(int\), expected tuple.*\(x,\)"),
    (BENCH, "lr_factors=(1.0,'x')", r"'lr_factors': element 1 of \(1.0, 'x'\) is 'x' \(str\)"),
    (NTK, "ensemble_sizes=(1.5,)", r"'ensemble_sizes': element 0 of \(1.5,\) is 1.5 \(float\)"),
    (MLP, "study=nap_stationary",
     r"'study': 'nap_stationary' cannot replace 'mlp_mnist1d'.*"
     r"--config=experiments/configs/nap_stationary.py"),
    (MLP, "seed=-1", r"'seed': -1 is not a valid seed; allowed: an int in \[0, 2\*\*31 - 1\]"),
    (MLP, f"seed={2**70}", rf"'seed': {2**70} is not a valid seed"),
    (MLP, f"seed={2**31}", rf"'seed': {2**31} is not a valid seed"),
    (MLP, "data.data_seed=-1", r"'data.data_seed': -1 is not a valid seed"),
    # Found by running each study's main on edge values: these failed after config.json.
    (MLP, "data.num_samples=5", r"'data.num_samples': 5; allowed: at least 10"),
    (MLP, "data.num_samples=100", r"'train.batch_size': 128; allowed: at most the 80 training"),
    (BENCH, "data.num_samples=100", r"'batch_size': 128; allowed: at most the 80 training"),
    ("experiments/configs/edge_of_stability.py:quick", "data.num_samples=13;data.num_train=10",
     r"'data.num_train': 10; allowed: at most 8"),
    ("experiments/configs/hessian_outliers.py:quick", "mixture.num_train=3;train.batch_size=2",
     r"'mixture.num_train': 3; allowed: at least max\(mixture.num_classes\) = 10"),
    ("experiments/configs/icl_linreg.py:quick", "arms.noisy=100",
     r"'optimizer.warmup_steps': 200; allowed: fewer than arms.noisy \(100\)"),
    (MLP, "optimizer.warmup_steps=1500", r"'optimizer.warmup_steps': 1500; allowed: fewer than"),
])
def test_bad_override_refused_before_compile_or_write(tmp_path, compiles, config, arg, match):
  _main_fails(tmp_path, config, [f"--config.{a}" for a in arg.split(";")], match)
  assert compiles == []


def test_largest_valid_seed_and_int_for_float_elements():
  config, _ = run.prepare(MLP, {"seed": 2**31 - 1, "data.data_seed": 0})
  assert config.seed == 2**31 - 1
  config, _ = run.prepare(BENCH, ["lr_factors=(1, 3)"])
  assert config.lr_factors == (1.0, 3.0) and all(type(f) is float for f in config.lr_factors)
  assert run._check_elements("k", (1, "a", 2.5), ()) == (1, "a", 2.5)  # empty default: anything


def test_seed_tuples_and_suffixes():
  for key, value in (("seeds", (0, -1)), ("init_seed", 2**40), ("data_seeds", (3, 2**31))):
    config = ml_collections.ConfigDict({"sub": {key: value}})
    with pytest.raises(ValueError, match=rf"'sub.{key}': .*not a valid seed"):
      checks.config_leaves(config)
  checks.config_leaves(ml_collections.ConfigDict({"seeds": (0, 2**31 - 1), "seedling": -1}))


def test_config_file_without_get_config(tmp_path):
  path = tmp_path / "no_get_config.py"
  path.write_text("def config():\n  return None\n")
  _main_fails(tmp_path, str(path), [],
              rf"config file '{re.escape(str(path))}' defines no get_config")


def test_missing_key_read_by_validate_is_named(tmp_path):
  # A hand-made nap_stationary config without `arms` or `schedule`: validate reads them.
  path = tmp_path / "partial.py"
  path.write_text(
      "from experiments.configs import common\n\n\n"
      "def get_config(arg=None):\n"
      "  c = common.base_config('nap_stationary')\n"
      "  c.data = dict(num_samples=5000, data_seed=42)\n"
      "  c.model = dict(hidden_sizes=(256, 256))\n"
      "  c.optimizer = dict(name='adam', learning_rate=1e-2)\n"
      "  return c\n")
  _main_fails(tmp_path, str(path), [],
              r"config key 'arms': missing; study 'nap_stationary' reads it.*"
              r"'schedule.power'.*--config=experiments/configs/nap_stationary.py")
  # A failed lookup that is not a missing config key is not disguised as one.
  assert run._missing_key_error(run.load_config(MLP), KeyError("'adamm'")) is None
  spec = ml_collections.ConfigDict({"seed": 0})
  with pytest.raises(ValueError, match="config key 'study': missing"):
    run.prepare(spec)


def test_memory_estimate_refuses_before_any_model_is_built(tmp_path, compiles, monkeypatch):
  def no_main(config, workdir):
    raise AssertionError("main ran: the check came too late")

  monkeypatch.setattr(experiments.mlp_mnist1d, "main", no_main)
  monkeypatch.setattr(checks, "available_memory", lambda: (16 * 2**30, "test memory"))
  # 40·1e5 + 1e5 + 1e5·1e5 + 1e5 + 1e5·10 + 10 = 10,005,200,010 float32 parameters, × 4 × 4 B.
  _main_fails(tmp_path, MLP, ["--config.model.hidden_sizes=(100000,100000)"],
              r"config key 'model.hidden_sizes': model.hidden_sizes=\(100000, 100000\) needs about "
              r"149.1 GiB for 10,005,200,010 parameters \(× 4.*more than the 16.0 GiB of test "
              r"memory")
  assert compiles == []
  # The real memory of this machine, whatever it is, is far below this (1e12 parameters).
  monkeypatch.undo()
  _main_fails(tmp_path, MLP, ["--config.model.hidden_sizes=(1000000,1000000)"],
              r"'model.hidden_sizes'.*needs about 1490\d\.\d GiB")
  assert compiles == []


@pytest.mark.parametrize("config, overrides, match", [
    ("experiments/configs/lr_transfer.py:quick", {"widths": (32, 65536)},
     r"keys 'widths', 'model.depth', 'lr_grid.log2_learning_rates': widths=\(32, 65536\)"),
    ("experiments/configs/hessian_outliers.py:quick", {"widths": (32, 200000)},
     r"config key 'widths': widths=\(32, 200000\) needs"),
    ("experiments/configs/icl_linreg.py:quick", {"model.width": 48000},
     r"'model.num_layers', 'model.width', 'task.n_points'"),
    (NTK, {"widths": (64, 2**24)}, r"'widths', 'finite_ks', 'member_chunk'"),
])
def test_memory_estimate_names_the_study_keys(compiles, monkeypatch, config, overrides, match):
  monkeypatch.setattr(checks, "available_memory", lambda: (2**30, "test memory"))
  with pytest.raises(ValueError, match=match):
    run.prepare(config, overrides)
  assert compiles == []


def test_available_memory_reads_the_accelerator_limit(monkeypatch):
  class Device:
    platform = "gpu"

    def memory_stats(self):
      return {"bytes_limit": 3 * 2**30, "bytes_in_use": 0}

  monkeypatch.setattr(checks.jax, "devices", lambda: [Device()])
  assert checks.available_memory() == (3 * 2**30, "gpu memory (device 0 bytes_limit)")
  monkeypatch.undo()
  have, where = checks.available_memory()
  assert have > 0 and "memory" in where


def test_mnist1d_dims_match_the_data():
  ds = data.mnist1d(100)
  assert (ds.input_dim, ds.num_classes) == checks.MNIST1D_DIMS


@pytest.mark.parametrize("study", run.studies())
def test_every_config_prepares_without_compile_and_has_param_shapes(compiles, study):
  for arg in (":quick", ""):
    config, module = run.prepare(f"experiments/configs/{study}.py{arg}")
    assert config.is_locked and module.__name__ == f"experiments.{study}"
    shapes = module.param_shapes(config)
    assert shapes and all(checks.tree_bytes(s) > 0 for s in shapes.values())
  assert compiles == []


def test_param_shapes_match_the_built_model():
  config, module = run.prepare(MLP, {"model.hidden_sizes": (7, 5)})
  (shapes,) = module.param_shapes(config).values()
  ds = data.mnist1d(100)
  from jaxlab import models
  real = models.mlp(ds.input_dim, (7, 5), ds.num_classes).init(jax.random.key(0))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), real) == \
      jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
