"""NaP studies end to end (tiny), bad config before compile, and the quick-scale science (repro)."""
import os

import numpy as np
import pytest

from experiments import run
from jaxlab.train import io

PLAST = "experiments/configs/nap_plasticity.py"
STAT = "experiments/configs/nap_stationary.py"
TINY_PLAST = {"data.num_train": 200, "tasks.num_tasks": 2, "tasks.steps_per_task": 20,
              "model.hidden_sizes": (16, 16), "train.batch_size": 32, "train.log_every_steps": 10,
              "train.eval_every_steps": 10, "train.checkpoint_every_steps": 0,
              "arms": ("plain", "nap", "wd"), "long_horizon.arms": ("norm",),
              "long_horizon.num_tasks": 2}
TINY_STAT = {"data.num_samples": 600, "model.hidden_sizes": (16, 16), "train.num_steps": 30,
             "train.batch_size": 32, "train.log_every_steps": 10, "train.eval_every_steps": 10}


def test_plasticity_tiny_end_to_end(tmp_path):
  s = run.run(f"{PLAST}:quick", str(tmp_path), TINY_PLAST)
  assert set(s["arms"]) == {"plain", "nap", "wd"} and set(s["long_horizon"]) == {"norm"}
  for arm in ("plain", "nap", "wd", "long_norm"):
    assert os.path.exists(tmp_path / arm / "metrics.jsonl")
  rows = io.read_jsonl(str(tmp_path / "nap" / "metrics.jsonl"))
  assert {"norm/dense_0", "elr/dense_0", "dead/mean", "task_accuracy"} <= set(rows[-1])
  for a in s["arms"].values():
    assert len(a["end_of_task_train_accuracy"]) == 2 and 0 <= a["last_task_accuracy"] <= 1
  # NaP's hidden layers stay on their sphere even at this tiny scale.
  assert s["checks"]["nap_elr_max_rel_change"] < 1e-5
  assert os.path.exists(tmp_path / "plots" / "per_task.png")
  assert os.path.exists(tmp_path / "plots" / "task_curves.png")
  assert io.read_json(str(tmp_path / "summary.json"))["num_tasks"] == 2


def test_stationary_tiny_end_to_end(tmp_path):
  s = run.run(f"{STAT}:quick", str(tmp_path), TINY_STAT)
  assert set(s["arms"]) == {"baseline", "nap", "nap_schedule"}
  assert s["projected_groups"] == ["dense_0", "dense_1"]
  assert "nap_schedule_minus_baseline_test_points" in s
  assert os.path.exists(tmp_path / "plots" / "stationary.png")
  # The explicit schedule is the baseline's implicit decay, η·(ρ/‖θ_t‖)^p (geometric mean
  # over the projected groups), at every logged step.
  base = {r["step"]: r for r in io.read_jsonl(str(tmp_path / "baseline" / "metrics.jsonl"))}
  rows = [r for r in io.read_jsonl(str(tmp_path / "nap_schedule" / "metrics.jsonl")) if "lr" in r]
  assert rows
  for r in rows:
    ratio = np.prod([s["init_norms"][g] / base[r["step"]][f"norm/{g}"]
                     for g in s["projected_groups"]]) ** (1 / 2)
    assert r["lr"] == pytest.approx(1e-3 * ratio, rel=1e-5)


@pytest.mark.parametrize("spec, overrides, match", [
    (PLAST, {"tasks.kind": "shuffle"}, r"'tasks.kind': 'shuffle'.*'random_labels', 'permute_inputs'"),
    (PLAST, {"arms": ("plain", "bn")}, r"'arms': \('plain', 'bn'\); allowed.*'nap'"),
    (PLAST, {"train.eval_every_steps": 7}, r"'train.eval_every_steps': 7; allowed: a divisor"),
    (PLAST, {"data.num_train": 5000}, r"'data.num_train': 5000; allowed: ≤ 4000"),
    (PLAST, {"optimizer.name": "adamm"}, r"'optimizer.name': 'adamm'"),
    (STAT, {"arms": ()}, r"'arms': \(\); allowed: a non-empty tuple"),
    (STAT, {"schedule.power": 0.0}, r"'schedule.power': 0.0"),
])
def test_bad_config_raises_before_compile(tmp_path, compiles, spec, overrides, match):
  with pytest.raises(ValueError, match=match):
    run.run(f"{spec}:quick", str(tmp_path), overrides)
  assert compiles == []


@pytest.mark.repro
def test_plasticity_quick_repro(tmp_path):
  s = run.run(f"{PLAST}:quick", str(tmp_path))
  a, c = s["arms"], s["checks"]
  # The plain MLP loses plasticity: its last tasks ≥ 10 points below its first.
  assert c["plain_drop_points"] >= 10
  assert 100 * (a["plain"]["first_task_accuracy"] - a["plain"]["mean_last3_accuracy"]) >= 10
  # NaP keeps it: every task within 3 points of the first.
  first = a["nap"]["first_task_accuracy"]
  assert max(abs(x - first) for x in a["nap"]["end_of_task_train_accuracy"]) <= 0.03
  # NaP's effective LR is constant (5%); the plain network's decays.
  assert c["nap_elr_max_rel_change"] <= 0.05
  assert c["plain_elr_ratio_final"] < 0.8
  # Normalization alone: norms grow and the effective LR decays, unlike NaP.
  assert c["norm_norm_growth"] > 1.1 and c["norm_elr_ratio_final"] < 0.9
  assert a["nap"]["hidden_norm_growth"]["dense_1"] == pytest.approx(1.0, abs=1e-5)
  # Long horizon (10× LR): the normalized-only network's effective LR decays further.
  assert s["long_horizon"]["norm"]["elr_ratio_final"] < c["norm_elr_ratio_final"]


@pytest.mark.repro
def test_stationary_quick_repro(tmp_path):
  s = run.run(f"{STAT}:quick", str(tmp_path))
  assert abs(s["nap_schedule_minus_baseline_test_points"]) <= 1.0
  assert s["arms"]["baseline"]["test_accuracy"] > 0.55  # the MLP learned MNIST-1D
