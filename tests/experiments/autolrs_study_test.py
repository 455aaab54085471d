"""autolrs study: a tiny end-to-end run, config errors, and the quick-scale comparison with
tuned schedules (`-m repro`). Mid-run resume of the AutoLRS hook (crash, then a bit-identical
run) is tested at the unit level, in tests/optim/autolrs_test.py."""
import os

import pytest

from experiments import run

CFG = "experiments/configs/autolrs.py"


def test_autolrs_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(CFG + ":tiny", wd)
  for f in ("summary.json", "plots/lr_schedule.png", "plots/loss_curves.png",
            "runs/adam_autolrs/metrics.jsonl", "runs/adam_cosine_0.003/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  arm = summary["optimizers"]["adam"]
  au = arm["autolrs"]
  # Equal budgets: look-ahead updates are counted and reported apart.
  assert au["total_steps"] == au["train_steps"] + au["lookahead_steps"] <= 40
  assert au["lookahead_steps"] > 0 and au["train_steps"] > 0
  assert len(au["stage_lrs"]) == 2  # stages of 8 and 16 (cut) updates
  lo, hi = au["lr_range"]
  assert all(lo <= lr <= hi for lr in au["stage_lrs"])
  assert arm["best_schedule"] == "cosine" and "wsd" not in arm
  assert arm["autolrs_minus_best_accuracy"] == pytest.approx(
      au["final_val_accuracy"] - arm["cosine"]["final_val_accuracy"])
  assert arm["cosine"]["final_val_accuracy"] == max(arm["cosine"]["sweep"].values())


@pytest.mark.parametrize("override,key", [
    ({"optimizers": ("adam", "nope")}, "optimizers"),
    ({"schedules": ("linear",)}, "schedules"),
    ({"autolrs.tau_max": 30}, "autolrs"),
    ({"autolrs.acquisition": "pi"}, "autolrs"),
    ({"autolrs.lr_range_factors": (3.0, 1.0)}, "autolrs.lr_range_factors"),
    ({"budget_steps": 2}, "budget_steps"),
])
def test_autolrs_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(CFG + ":tiny", str(tmp_path), overrides=override)


@pytest.mark.repro
def test_autolrs_quick_repro(tmp_path, repro_seed):
  """Not reproduced at quick scale: the paper's claim (AutoLRS matches the tuned schedules,
  checked as final validation accuracy within 0.02 of the better one) fails; measured at
  seeds 0 / 1 / 2, AutoLRS is 0.034 / 0.048 / 0.056 below with Adam and 0.028 / 0.127 /
  0.118 below with momentum. What holds, asserted: it trains (accuracy > 0.5; chance is
  0.1) and stays within 0.15 of the tuned schedule (the measured worst gap, 0.127, plus
  a margin), which the implementation before the look-ahead fixes failed by 0.6 with
  momentum (a rate near the top of the range killed the network). Pass rate: run as this
  pytest on --repro-seed 0-4, all pass (5/5): 0, 1, 2 at 216 / 198 / 121 s wall at load ~20;
  3, 4 at 30 / 30 s wall (41 s CPU each) on the idle machine."""
  summary = run.run(CFG + ":quick", str(tmp_path), overrides={"seed": repro_seed})
  for opt, arm in summary["optimizers"].items():
    assert arm["autolrs"]["final_val_accuracy"] > 0.5, (opt, arm["autolrs"])
    assert arm["autolrs_minus_best_accuracy"] > -0.15, (opt, arm["autolrs_minus_best_accuracy"])
    assert arm["autolrs"]["total_steps"] <= summary["budget_steps"]  # look-ahead counted
