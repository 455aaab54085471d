"""TrAct study: tiny end to end with resume, config errors before compile, the scoring."""
import ml_collections
import numpy as np
import pytest

from experiments import run
from experiments import tract as study

CFG = "experiments/configs/tract.py"


def test_tiny_end_to_end_and_resume(tmp_path, compiles):
  summary = run.run(CFG + ":tiny", str(tmp_path))
  assert set(summary["groups"]) == {"cnn_digits/momentum/contrast=1",
                                    "cnn_digits/momentum/contrast=0.1"}
  for g in summary["groups"].values():
    assert 0 < g["target_accuracy"] <= 1
    assert len(g["steps_to_target"]["plain"]) == len(g["steps_to_target"]["tract"]) == 2
    assert len(g["speedup_per_seed"]) == 2 and g["speedup_geomean"] > 0
  for name in ("steps_to_target", "accuracy_curves"):
    assert (tmp_path / "plots" / f"{name}.png").exists()
  assert sorted(p.name for p in (tmp_path / "arms").iterdir()) == [
      "cnn_digits_momentum_plain.json", "cnn_digits_momentum_tract.json"]
  # A second run on the same workdir reads the arm records: nothing is trained again.
  del compiles[:]
  again = run.run(CFG + ":tiny", str(tmp_path))
  assert compiles == []
  assert again["groups"] == summary["groups"]


@pytest.mark.parametrize("override, match", [
    ({"lam": 0.0}, r"config key 'lam'.*=0.0; allowed: a finite number > 0"),
    ({"contrasts": (1.0, 0.0)}, r"'contrasts': \(1.0, 0.0\); allowed: numbers in \(0, 1\]"),
    ({"workloads": ("cnn_digits", "resnet")}, r"'workloads'.*allowed: distinct names"),
    ({"eval_every_steps": 7}, r"'eval_every_steps': 7 does not divide num_steps=40"),
    ({"learning_rates.cnn_digits.momentum": -1.0}, r"'learning_rates.cnn_digits.momentum': -1.0"),
    ({"target_fraction": 1.5}, r"'target_fraction': 1.5; allowed: \(0, 1\]"),
    ({"final_window": 9}, r"'final_window': 9; allowed: at most the number of evaluations, 4"),
])
def test_bad_config_before_compile(tmp_path, compiles, override, match):
  with pytest.raises(ValueError, match=match):
    run.run(CFG + ":tiny", str(tmp_path), override)
  assert compiles == []


def test_reduce_contrast_keeps_each_mean_and_scales_the_rest():
  x = np.random.default_rng(0).normal(size=(5, 4, 4, 1)).astype(np.float32)
  y = study.reduce_contrast(x, 0.2)
  m = x.reshape(5, -1).mean(1)
  np.testing.assert_allclose(y.reshape(5, -1).mean(1), m, atol=1e-6)
  np.testing.assert_allclose(y - m[:, None, None, None], 0.2 * (x - m[:, None, None, None]),
                             atol=1e-6)


def test_speedup_is_plain_steps_over_tract_steps_with_censoring():
  config = ml_collections.ConfigDict(dict(
      workloads=("w",), optimizers=("o",), contrasts=(1.0,), num_steps=40, eval_every_steps=10,
      final_window=2, smooth_window=1, target_fraction=1.0, num_seeds=2, seed=0, lam=0.1))
  steps = [10, 20, 30, 40]
  arms = {
      # plain: final accuracy (mean of the last two evaluations, both seeds) = 0.8.
      "w/o/contrast=1/plain": {"steps": steps, "wall_time_s": 0.0,
                               "test_accuracy": [[0.2, 0.5, 0.8, 0.8], [0.1, 0.3, 0.6, 1.0]]},
      "w/o/contrast=1/tract": {"steps": steps, "wall_time_s": 0.0,
                               "test_accuracy": [[0.8, 0.9, 0.9, 0.9], [0.1, 0.2, 0.3, 0.4]]},
  }
  g = study.summarize(arms, config)["groups"]["w/o/contrast=1"]
  assert g["target_accuracy"] == pytest.approx(0.8)
  assert g["steps_to_target"] == {"plain": [30, 40], "tract": [10, None]}
  # seed 0: 30 / 10 = 3; seed 1: TrAct never reaches it, counted as 50 steps: 40 / 50.
  np.testing.assert_allclose(g["speedup_per_seed"], [3.0, 0.8])
  assert g["not_reached"] == {"plain": 0, "tract": 1}
  assert g["speedup_geomean"] == pytest.approx(np.sqrt(2.4))


def test_steps_to_target_smooths_over_the_window():
  steps, acc = [10, 20, 30, 40], [0.2, 0.9, 0.5, 1.0]
  assert study.steps_to_target(steps, acc, 0.8) == 20  # the lucky evaluation
  assert study.steps_to_target(steps, acc, 0.72, window=2) == 40  # (0.5 + 1.0) / 2
  assert study.steps_to_target(steps, acc, 0.8, window=2) is None


@pytest.mark.repro
def test_tract_quick_repro(tmp_path, repro_seed):
  """TrAct's speed-up on low-contrast inputs (Petersen et al. 2024), MLP on MNIST-1D, SGD
  momentum and Adam. Pass rate: run as this pytest on --repro-seed 0-4, all pass (5/5):
  0, 1, 2 at 469 / 927 / 769 s wall at load ~20; 3, 4 at 144 / 126 s wall (205 / 201 s CPU)
  on the idle machine."""
  summary = run.run(CFG + ":quick", str(tmp_path), {"seed": repro_seed})
  g = summary["groups"]
  for opt in ("momentum", "adam"):
    low, full = g[f"mlp_mnist1d/{opt}/contrast=0.1"], g[f"mlp_mnist1d/{opt}/contrast=1"]
    # The paper's claim where it reproduces here: on low-contrast inputs TrAct
    # reaches the plain arm's accuracy in fewer steps (measured ×1.5-2.1, every
    # seed ≥ ×1.33 at seeds 0-4), and the gain is larger than at full contrast
    # (measured ×0.8-1.05 there: no speed-up).
    assert low["speedup_geomean"] >= 1.25, (opt, low["speedup_per_seed"])
    assert low["speedup_min"] > 1.1, (opt, low["speedup_per_seed"])
    assert low["speedup_geomean"] > full["speedup_geomean"] + 0.3, (opt, low, full)
