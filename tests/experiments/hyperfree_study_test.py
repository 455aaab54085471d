"""The hyperparameter-free learners study: config errors, scoring by hand, a tiny run end to
end with resume, and (repro) the paper's headline claim at quick scale."""
import os

import numpy as np
import pytest

from experiments import hyperfree, run
from jaxlab.train import io

CONFIG = "experiments/configs/hyperfree.py"


@pytest.mark.parametrize("overrides, match", [
    ({"learners": ("prodigy", "adagrad")}, r"'learners': 'adagrad' is not a self-tuning learner"),
    ({"learners": ("dog", "dog")}, r"'learners'.*repeats"),
    ({"tuned.optimizers": ("sgd",)}, r"'tuned.optimizers': 'sgd'; allowed: \['adamw', 'nadamw'\]"),
    ({"tuned.learning_rates": (1e-3, 0.0)}, r"'tuned.learning_rates'.*numbers > 0"),
    ({"target_fraction": 0.0}, r"'target_fraction': 0.0; allowed: 0 < f <= 1"),
    ({"close_ratio": 0.5}, r"'close_ratio': 0.5; allowed: a number >= 1"),
    ({"digits_cnn.eval_every_steps": 7}, r"'digits_cnn.eval_every_steps': 7 does not divide"),
    ({"icl_linreg.width": 30, "icl_linreg.num_heads": 4},
     r"'icl_linreg.width': 30 is not divisible by icl_linreg.num_heads=4"),
    ({"mnist1d_mlp.batch_size": 10_000}, r"'mnist1d_mlp.batch_size': 10000; allowed: at most"),
])
def test_bad_config_raises_before_compile(tmp_path, compiles, overrides, match):
  with pytest.raises(ValueError, match=match):
    run.run(f"{CONFIG}:tiny", str(tmp_path), overrides)
  assert compiles == [] and not os.listdir(tmp_path)


def _run(lr, curve, init=0.1):
  return {"lr": lr, "init_metric": init, "val_curve": curve, "tag": "t"}


def test_scoring_by_hand():
  config = run.load_config(f"{CONFIG}:tiny")
  config.unlock()
  config.learners = ("prodigy", "dog")
  config.tuned.optimizers = ("nadamw",)
  config.target_fraction = 0.5
  config.close_ratio = 2.0
  # Two workloads. Tuned best 0.9 on both, init 0.1: target 0.1 + 0.5 (0.9 - 0.1) = 0.5.
  runs = {
      "a": {"learners": {"prodigy": _run(None, [(10, 0.3), (20, 0.6)]),
                         "dog": _run(None, [(10, 0.2), (20, 0.3)])},
            "tuned": {"nadamw": [_run(1e-3, [(10, 0.5), (20, 0.9)]),
                                 _run(1e-2, [(10, 0.4), (20, 0.8)])]}},
      "b": {"learners": {"prodigy": _run(None, [(10, 0.55), (20, 0.6)]),
                         "dog": _run(None, [(10, 0.7), (20, 0.8)])},
            "tuned": {"nadamw": [_run(1e-3, [(10, 0.3), (20, 0.9)])]}},
  }
  s = hyperfree.score(runs, config)
  assert s["targets"]["a"]["target"] == pytest.approx(0.5)
  assert s["steps_to_target"] == {"prodigy/a": 20, "dog/a": None, "nadamw_tuned/a": 10,
                                  "prodigy/b": 10, "dog/b": 10, "nadamw_tuned/b": 20}
  # prodigy: 2x the tuned steps on a, 0.5x on b -> close (<= 2); dog never reaches a.
  assert s["ratio_to_tuned"]["prodigy/a"] == 2.0 and s["ratio_to_tuned"]["dog/a"] is None
  assert s["close_to_tuned"] == ["prodigy"]
  # AlgoPerf score: r per workload vs the best of all three; area of rho over [1, 4] / 3.
  # prodigy r = (2, 1): rho = 1/2 on [1, 2), 1 after -> (0.5 + 2) / 3.
  assert s["algoperf_score"]["prodigy"] == pytest.approx(2.5 / 3, abs=0.01)
  assert s["algoperf_score"]["dog"] == pytest.approx(0.5, abs=1e-9)  # r = (inf, 1)
  assert s["algoperf_score"]["nadamw_tuned"] == pytest.approx(2.5 / 3, abs=0.01)  # r = (1, 2)


def test_tiny_end_to_end_and_resume(tmp_path):
  summary = run.run(f"{CONFIG}:tiny", str(tmp_path))
  assert set(summary["algoperf_score"]) == {"schedule_free_adamw", "nadamw_tuned"}
  for w in hyperfree.WORKLOADS:
    t = summary["targets"][w]
    # Tiny runs may not beat initialization (ICL): then the target is the tuned best.
    assert t["target"] == pytest.approx(
        min(t["tuned_best"], t["init"] + 0.95 * (t["tuned_best"] - t["init"])))
    assert summary["steps_to_target"][f"nadamw_tuned/{w}"] is not None  # the target's source
  assert all(0.0 <= v <= 1.0 for v in summary["algoperf_score"].values())
  for name in ("performance_profile", "curves"):
    assert (tmp_path / "plots" / f"{name}.png").exists()
  rec = io.read_json(str(tmp_path / "runs" / "icl_linreg" / "schedule_free_adamw" /
                         "run_summary.json"))
  assert [s for s, _ in rec["val_curve"]] == [10, 20] and np.isfinite(rec["init_metric"])
  # A finished workdir re-scores from its run records: same numbers, nothing retrained.
  again = run.run(f"{CONFIG}:tiny", str(tmp_path))
  assert again["steps_to_target"] == summary["steps_to_target"]
  assert again["algoperf_score"] == summary["algoperf_score"]


@pytest.mark.repro
def test_quick_repro_few_self_tuning_learners_come_close(tmp_path, repro_seed):
  """Kasimbeg et al. 2025's headline at quick scale: with one fixed configuration, few
  hyperparameter-free learners come close to a tuned baseline on every workload. Measured at
  seeds 0 / 1 / 2 (3 workloads, target 95% of the tuned sweep's gain): of the 7 self-tuning
  learners 2 / 1 / 1 reach every target within 2x the tuned steps (D-Adapt AdamW; Prodigy at
  seed 0), 5 / 6 / 6 miss a target (DoG and DoWG every one), median score 0.31 / 0.26 / 0.24
  vs tuned NAdamW 0.98 / 0.92 / 0.95. Asserted with margins: at most 3 close, at least 4
  missing a target, median <= 0.5, tuned NAdamW >= 0.85. Learners secretly given tuned
  rates, or a scoring that rewards everyone, fail these. Pass rate: run as this pytest on
  --repro-seed 0-4, all pass (5/5): 0, 1, 2 at 1,052 / 1,033 / 649 s wall at load ~14-22;
  3, 4 at 141 / 138 s wall (215 / 211 s CPU) on the idle machine."""
  s = run.run(f"{CONFIG}:quick", str(tmp_path), {"seed": repro_seed})
  self_tuning = [lab for lab in s["algoperf_score"]
                 if lab in hyperfree.LEARNERS and hyperfree.LEARNERS[lab][0] in
                 ("prodigy", "dog", "dowg", "mechanic", "cocob", "dadapt_adamw",
                  "schedule_free_adamw")]
  assert len(self_tuning) == 7, self_tuning
  close = [lab for lab in s["close_to_tuned"] if lab in self_tuning]
  assert len(close) <= 3, close
  missing = [lab for lab in self_tuning
             if any(s["steps_to_target"][f"{lab}/{w}"] is None for w in hyperfree.WORKLOADS)]
  assert len(missing) >= 4, missing
  assert np.median([s["algoperf_score"][lab] for lab in self_tuning]) <= 0.5
  assert s["algoperf_score"]["nadamw_tuned"] >= 0.85, s["algoperf_score"]
