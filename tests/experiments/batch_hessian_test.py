"""batch_hessian study end to end on a tiny setting; the quick-scale repro test (`-m repro`)."""
import os

import numpy as np
import pytest

from experiments import run
from jaxlab.train import io

CFG = "experiments/configs/batch_hessian.py"
TINY = {"data.num_samples": 200, "data.num_train": 128, "model.hidden_sizes": (8,),
        "pretrain.num_steps": 20, "pretrain.batch_size": 16,
        "sharpness.batch_sizes": (4, 16, 64), "sharpness.draws": 2, "sharpness.grad_draws": 2,
        "sharpness.lanczos_iters": 6,
        "stability.batch_sizes": (4, 16), "stability.num_steps": 20,
        "stability.eval_every_steps": 10, "stability.points_per_octave": 1,
        "stability.adam_warmup_steps": 5, "onthefly.every_steps": 10,
        "onthefly.lanczos_iters": 4, "onthefly.fixed_learning_rates": (0.05, 0.1)}


def test_batch_hessian_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(CFG + ":quick", wd, overrides=TINY)
  for f in ("summary.json", "plots/batch_sharpness.png", "plots/max_learning_rate.png",
            "plots/onthefly.png", "pretrain/metrics.jsonl", "onthefly/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  saved = io.read_json(os.path.join(wd, "summary.json"))
  for key in ("sharpness_table", "full_batch_sharpness", "fit", "fit_with_measured_full",
              "sgd_exponent", "adam_exponent", "sweeps", "onthefly", "equation"):
    assert key in saved, key
  assert [r["batch_size"] for r in saved["sharpness_table"]] == [4, 16, 64]
  assert all(len(r["draws"]) == 2 and r["mean"] > 0 for r in saved["sharpness_table"])
  assert saved["fit"]["lambda_full"] > 0 and saved["fit"]["num_examples"] == 128
  for opt in ("sgd", "adam"):
    rows = summary["sweeps"][opt]["rows"]
    assert [r["batch_size"] for r in rows] == [4, 16]
    for r in rows:
      assert set(r["at_factors"]) == {"0.5", "2"} and r["predicted_max_lr"] > 0
  lrs = np.array(summary["onthefly"]["slq_rule"]["learning_rates"])
  assert lrs.shape == (2, 2) and np.all(lrs[:, 1] > 0)  # set at steps 10 and 20
  sweep = summary["onthefly"]["fixed_lr_sweep"]
  assert [v["learning_rate"] for v in sweep.values()] == [0.05, 0.1]
  best = min(v["train_loss"] for v in sweep.values())
  assert summary["onthefly"]["best_fixed_lr"]["train_loss"] == best
  assert sweep["0.05"]["train_loss"] == summary["pretrain"]["train_loss"]  # the pretraining run


@pytest.mark.parametrize("override,key", [
    ({"sharpness.batch_sizes": (0, 4)}, "sharpness.batch_sizes"),
    ({"stability.batch_sizes": (4, 4)}, "stability.batch_sizes"),
    ({"stability.lr_range_sgd": (1.0, 0.1)}, "stability.lr_range_sgd"),
    ({"stability.num_steps": 25}, "stability.num_steps"),
    ({"onthefly.fraction": 2.0}, "onthefly.fraction"),
    ({"onthefly.fixed_learning_rates": (0.1, -0.1)}, "onthefly.fixed_learning_rates"),
    ({"model.activation": "swish"}, "model.activation"),
    ({"sharpness.nope": 1}, "sharpness.nope"),
])
def test_batch_hessian_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(CFG + ":quick", str(tmp_path), overrides=override)


def _spearman(a, b) -> float:
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.repro
def test_batch_hessian_quick_repro(tmp_path, repro_seed):
  """Granziol et al.'s claims at quick scale; init, data, batches and Lanczos from --repro-seed.

  Measured over --repro-seed 0-4 (quick config, 16 batches per B): every assertion passes on
  5 of 5 seeds; about 35 s of CPU per seed. The numbers per seed 0-4 are in the comments.
  """
  s = run.run(CFG + ":quick", str(tmp_path),
              overrides={"seed": repro_seed, "data.data_seed": 42 + repro_seed})
  tab = s["sharpness_table"]
  b = np.array([r["batch_size"] for r in tab])
  mean = np.array([r["mean"] for r in tab])
  full = s["full_batch_sharpness"]
  # λ_max(B) falls with B toward the full-data-set value. Spearman(B, mean λ_max(B))
  # -0.98 / -0.88 / -0.98 / -1.00 / -1.00 (above B ≈ 64 the fall, +4% at B = 128 by the
  # fit, is below the spread of 16 batches, so strict monotonicity is not asked for);
  # λ_max(2) / full 3.7 / 3.5 / 4.7 / 4.0 / 4.3; mean over B ≥ 128 / full 1.033 / 1.048 /
  # 1.024 / 1.022 / 1.035 (the spiked form predicts slightly above 1). A B-independent
  # sharpness, or one that converges to another value, fails.
  assert _spearman(b, mean) <= -0.8, mean
  assert mean[0] > 2.5 * full, (mean[0], full)
  assert 0.98 <= mean[b >= 128].mean() / full <= 1.10, (mean, full)
  # The spiked-model form λ + Pσ²(1/B − 1/N)/λ fits: rms 6.1 / 9.2 / 5.8 / 5.1 / 2.5%, and
  # its λ is the measured full-set λ_max: ratio 1.011 / 0.993 / 0.999 / 0.994 / 1.009.
  assert s["fit"]["rel_rms_error"] < 0.12
  assert abs(s["fit_lambda_over_measured_full"] - 1) < 0.05
  # SGD's largest stable rate grows linearly in B (the paper's claim): exponent over
  # B = 2-32 1.13 / 1.30 / 1.10 / 1.07 / 1.17; the grid (3 points per octave) quantizes it
  # by ~±0.2, hence the band around 1.
  assert 0.7 <= s["sgd_exponent"] <= 1.4
  # Adam's grows more slowly: 0.77 / 0.87 / 0.80 / 0.67 / 0.73 (the paper's √B, 0.5, is not
  # reproduced at this scale; see the config docstring), 0.30-0.44 below SGD's.
  assert 0.3 <= s["adam_exponent"] <= 0.9 and s["adam_exponent"] < s["sgd_exponent"] - 0.2
  # Below the BBP batch size (B* = 6-9) the predicted SGD rate 2/λ_max(B) is the stability
  # edge: 0.5× trains and 2× does not, at B = 2 and 4 (5 of 5 seeds).
  for row in s["sweeps"]["sgd"]["rows"][:2]:
    assert row["at_factors"]["0.5"]["stable"] and not row["at_factors"]["2"]["stable"], row
  # The SLQ on-the-fly rate (median 0.08-0.11) trains further than the fixed pretraining rate
  # 0.05 (final train loss 0.75 / 0.85 / 0.77 / 0.75 / 0.66 vs 1.18 / 1.11 / 1.20 / 1.17 /
  # 1.20) -- a larger rate, not a better rule: the best fixed rate of the sweep 0.025-1.6, same
  # steps, reaches 0.007-0.035 (0.4 or 0.8), 20-100× lower. Asserted as measured: a rule that
  # matched a tuned rate would fail the second line.
  of = s["onthefly"]
  assert of["slq_rule"]["train_loss"] < 0.9 * of["fixed_lr"]["train_loss"]
  assert of["best_fixed_lr"]["train_loss"] < 0.2 * of["slq_rule"]["train_loss"], (
      {k: v["train_loss"] for k, v in of["fixed_lr_sweep"].items()})
