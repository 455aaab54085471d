"""lr_transfer study: a tiny end-to-end run, config errors, and the quick-scale effect (`-m repro`)."""
import json
import os

import jax
import numpy as np
import pytest

from experiments import lr_transfer, run
from jaxlab import models, train

CFG = "experiments/configs/lr_transfer.py"
TINY = {"widths": (8, 16), "parametrizations": ("mup",), "data.num_samples": 300,
        "data.num_train": 200, "model.depth": 2, "lr_grid.log2_learning_rates": (-8, -6, -4),
        "train.num_steps": 20, "train.batch_size": 32, "sharpness.every_steps": 10,
        "sharpness.lanczos_iters": 6, "sharpness.num_examples": 64}


def test_lr_transfer_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(CFG + ":quick", wd, overrides=TINY)
  for f in ("summary.json", "plots/loss_vs_lr.png", "plots/sharpness.png",
            "mup_width_8/metrics.jsonl", "mup_width_16/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  with open(os.path.join(wd, "summary.json")) as fh:
    assert json.load(fh)["optimum_shift"] == summary["optimum_shift"]
  arm = summary["parametrizations"]["mup"]
  assert np.asarray(arm["final_loss"]).shape == (2, 3)
  assert arm["optimum_shift_grid_steps"] == max(arm["optimal_index"]) - min(arm["optimal_index"])
  for i, j in enumerate(arm["optimal_index"]):  # the optimum is the grid argmin
    assert arm["final_loss"][i][j] == min(arm["final_loss"][i])
  assert arm["sharpness_learning_rate"] == 2.0 ** -8 * 4 ** arm["optimal_index"][0]
  for w in ("8", "16"):  # Adam: the first measurement needs one step of second moments
    assert arm["sharpness"][w]["steps"] == [10, 20]
    assert all(lam > 0 for lam in arm["sharpness"][w]["sharpness"])
    assert arm["sharpness"][w]["stability_threshold"] == pytest.approx(
        38.0 / arm["sharpness_learning_rate"])
  for i, w in enumerate(("8", "16")):  # two measurements: one in each half
    first, last = arm["sharpness"][w]["sharpness"]
    assert arm["median_sharpness_first_half"][i] == pytest.approx(first)
    assert arm["median_sharpness_last_half"][i] == pytest.approx(last)


def test_lr_transfer_resumes_finished_cells(tmp_path, monkeypatch):
  """A re-run on the same workdir and config reads every finished cell back (no training);
  a changed config recomputes."""
  wd = str(tmp_path)
  first = run.run(CFG + ":quick", wd, overrides=TINY)
  cells = sorted(os.listdir(os.path.join(wd, "cells")))
  assert len(cells) == 4, cells  # (grid, sharpness) x 2 widths

  def fail(*args, **kwargs):
    raise AssertionError("a finished cell was recomputed")

  monkeypatch.setattr(lr_transfer, "lr_grid_losses", fail)
  monkeypatch.setattr(lr_transfer, "sharpness_run", fail)
  again = run.run(CFG + ":quick", wd, overrides=TINY)
  a, b = first["parametrizations"]["mup"], again["parametrizations"]["mup"]
  for key in ("final_loss", "optimal_index", "median_sharpness_last_half"):
    np.testing.assert_allclose(np.asarray(b[key], float), np.asarray(a[key], float))
  # A changed config is refused by the workdir check; continued deliberately, the
  # cells (keyed by the config's fingerprint) are recomputed.
  with pytest.raises(train.ConfigChangedError, match="train.num_steps: 20 -> 30"):
    run.run(CFG + ":quick", wd, overrides={**TINY, "train.num_steps": 30})
  with pytest.raises(AssertionError, match="recomputed"):
    run.run(CFG + ":quick", wd, overrides={**TINY, "train.num_steps": 30},
            allow_config_change=True)


def test_adam_mup_lr_multipliers_follow_tensor_programs_v():
  # Table 3 (Adam) with the MLP's multipliers: relative to the base width n0,
  # input kernel and √n-biases (n0/n)^½, hidden kernel n0/n, readout kernel (n0/n)^½.
  params = models.mlp(4, (32, 32), 3, parametrization="mup").init(jax.random.key(0))
  s = lr_transfer.lr_multipliers(params, "mup", "adam", 32, 8)
  got = {f"{layer}/{leaf}": float(v) for layer, leaves in s.items() for leaf, v in leaves.items()}
  assert got == pytest.approx({"dense_0/kernel": 0.5, "dense_0/bias": 0.5, "dense_1/kernel": 0.25,
                               "dense_1/bias": 0.5, "readout/kernel": 0.5, "readout/bias": 1.0})
  for p, opt in (("mup", "sgd"), ("standard", "adam"), ("ntk", "adam")):
    ones = lr_transfer.lr_multipliers(params, p, opt, 32, 8)
    assert all(float(v) == 1.0 for v in jax.tree.leaves(ones)), (p, opt)


@pytest.mark.parametrize("override,key", [
    ({"widths": (64, 32)}, "widths"),
    ({"parametrizations": ("sp",)}, "parametrizations"),
    ({"optimizer": "lion"}, "optimizer"),
    ({"lr_grid.log2_learning_rates": (-3,)}, "lr_grid.log2_learning_rates"),
    ({"sharpness.every_steps": 7}, "sharpness.every_steps"),
])
def test_lr_transfer_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(CFG + ":quick", str(tmp_path), overrides=override)


def test_lr_transfer_unknown_key(tmp_path):
  with pytest.raises(ValueError, match="unknown config key 'train.lr'"):
    run.run(CFG + ":quick", str(tmp_path), overrides={"train.lr": 0.1})


@pytest.mark.repro
def test_lr_transfer_quick_repro(tmp_path, repro_seed):
  """Noci et al. / Tensor Programs V at quick scale; init, batches and Lanczos from the seed.

  The data set is the package's standard MNIST-1D (data seed 42) for every repro seed, as in
  the seeds the config docstring reports. Measured pass rate: 5 of 5 on --repro-seed 0-4
  (seeds 0, 1, 4 at commit c6d9a32, seeds 2, 3 on earlier code). Seeds 0 / 1 / 4: shift µP
  0 / 0 / 1, SP 3 / 3 / 2; loss ratio at width 256 µP 1.00 / 1.00 / 2.15 (bound 2.5: seed
  4 is the closest margin), SP 45 / 34 / 20 (bound 4); best / initial loss ≤ 0.36. About
  97 s of CPU, 4 min 21 s / 4 min 36 s / 5 min 6 s wall at load ~12-18 (niced).
  """
  summary = run.run(CFG + ":quick", str(tmp_path), overrides={"seed": repro_seed})
  shift = summary["optimum_shift"]
  params = summary["parametrizations"]
  exps = np.array(summary["log2_learning_rates"])
  # µP's optimum stays within one grid step (factor 2) over 8× in width: optimal log2 η at
  # widths 32 / 64 / 128 / 256 was -6/-6/-6/-6 (seed 0), -7/-6/-6/-6 (seeds 1, 2, 3) on
  # earlier code; at c6d9a32 -6/-6/-6/-6 (seeds 0, 1), -7/-6/-6/-6 (seed 4): only the
  # narrowest width, where the margins are thinnest, moves.
  assert shift["mup"] <= 1, exps[params["mup"]["optimal_index"]]
  # SP's optimum drifts toward smaller rates as the width grows (Adam-SP: ∝ 1/width, 3 grid
  # steps over 8×): -7/-7/-8/-9, -6/-7/-8/-9, -7/-7/-8/-9, -7/-7/-8/-8, i.e. down 2 / 3 / 2 /
  # 1 steps (earlier code; at c6d9a32 seeds 0, 1, 4: down 3 / 3 / 2). "SP moves ≥ 2 steps"
  # held on 3 of the first 4 seeds only, so the grid shift asserts
  # the direction, and the size of the effect is asserted through the loss below.
  sp = exps[params["standard"]["optimal_index"]]
  assert sp[-1] - sp[0] <= -1, sp
  # Transfer, as a practitioner meets it: the rate tuned at width 32, used at width 256,
  # reaches R × the best loss at 256. Measured R (seeds 2, 3): µP 1.60 / 1.46, SP 9.7 / 26;
  # (seeds 0, 1, 4 at c6d9a32): µP 1.00 / 1.00 / 2.15, SP 45 / 34 / 20.
  regret = {}
  for p in ("mup", "standard"):
    table, j = np.array(params[p]["final_loss"]), params[p]["optimal_index"]
    regret[p] = table[-1, j[0]] / table[-1, j[-1]]
  assert regret["mup"] < 2.5 and regret["standard"] > 4.0, regret
  for p, arm in params.items():
    # The optimum trains: its loss is far below the loss at initialization.
    for first, best in zip(arm["initial_loss"], arm["optimal_loss"], strict=True):
      assert best < 0.5 * first, (p, first, best)
