"""Spectral studies end to end on tiny settings; quick-scale repro tests (`-m repro`)."""
import json
import os

import pytest

from experiments import run

EOS = "experiments/configs/edge_of_stability.py"
EOS_TINY = {"data.num_samples": 100, "data.num_train": 64, "model.hidden_sizes": (16,), "train.num_steps": 40,
            "train.sharpness_every_steps": 10, "sharpness.lanczos_iters": 8,
            "learning_rates": (0.05, 0.1)}


def test_edge_of_stability_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(EOS + ":quick", wd, overrides=EOS_TINY)
  for f in ("summary.json", "plots/sharpness.png", "lr_0.05/metrics.jsonl", "lr_0.1/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  with open(os.path.join(wd, "summary.json")) as fh:
    assert json.load(fh)["median_ratios"] == summary["median_ratios"]
  arm = summary["arms"]["lr_0.1"]
  assert arm["threshold_2_over_lr"] == pytest.approx(20.0)
  assert arm["initial_sharpness"] > 0


@pytest.mark.parametrize("override,key", [
    ({"learning_rates": (0.1, -1.0)}, "learning_rates"),
    ({"loss": "hinge"}, "loss"),
    ({"train.num_steps": 10}, "train.num_steps"),
    ({"model.activation": "swish"}, "model.activation"),
])
def test_edge_of_stability_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(EOS + ":quick", str(tmp_path), overrides=override)


@pytest.mark.repro
def test_edge_of_stability_quick_repro(tmp_path, repro_seed):
  """Cohen et al.'s edge of stability; init, data subset and Lanczos start vectors from the seed.

  Measured (quick config, data seed 42 + seed): every assertion passes on --repro-seed 0-4
  (5 of 5). About 2 min of CPU per seed.
  """
  summary = run.run(EOS + ":quick", str(tmp_path),
                    overrides={"seed": repro_seed, "data.data_seed": 42 + repro_seed})
  steps = 3000  # the quick config's train.num_steps
  for name, arm in summary["arms"].items():
    # The sharpness rises to 2/η and hovers there: median λ_max·η/2 over the last half in a
    # band centred on 1 (measured for η = 0.06 / 0.08 / 0.10: seed 0 1.003 / 1.023 / 1.026,
    # seed 1 0.968 / 1.020 / 1.026, seed 2 1.002 / 1.019 / 1.024, seed 3 1.007 / 1.021 / 1.024,
    # seed 4 1.012 / 1.025 / 1.026; η = 0.06 reaches λ_max = 2/η latest, at step 1,860-2,400,
    # hence its lower values; once there, every run's median is 1.01-1.03, just above 2/η
    # as Cohen et al. describe). A run that stops sharpening below
    # the edge (an earlier 8,000-step full run's 0.81 for η = 0.06) or overshoots fails.
    assert 0.95 <= arm["median_sharpness_ratio_last_half"] <= 1.05, (name, arm)
    # The loss still falls overall ...
    assert arm["final_over_initial_loss"] < 0.5, (name, arm)
    # ... non-monotonically once GD is at the edge: for the runs at the edge for the whole last
    # half the loss rises on 44-49% of the logged intervals (a monotone descent has 0). "At
    # the edge for (nearly) the whole last half" = r ≥ 0.9 within the first third: r = 1
    # followed r = 0.9 by 220-580 steps over these runs (seed 4, η = 0.06: 1,420 → 1,860, still
    # sharpening, its loss rising on only 20% of the last half), so r ≥ 0.9 before step 1,500
    # is not enough.
    if 0 <= arm["first_step_at_0.9_threshold"] < steps / 3:
      assert arm["fraction_loss_increases_last_half"] > 0.3, (name, arm)


OUT = "experiments/configs/hessian_outliers.py"
OUT_TINY = {"mixture.num_classes": (3,), "mixture.dim": 5, "mixture.num_train": 60,
            "mnist1d.num_samples": 100, "mnist1d.num_train": 60, "model.hidden_sizes": (8,),
            "widths": (8,), "train.num_steps": 20, "train.batch_size": 20,
            "train.log_every_steps": 10, "spectrum.lanczos_iters": 10, "spectrum.top_k": 8,
            "spectrum.hessian_examples": 60, "spectrum.density_iters": 6}


def test_hessian_outliers_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(OUT + ":quick", wd, overrides=OUT_TINY)
  for f in ("summary.json", "plots/top_eigenvalues.png", "plots/density.png",
            "plots/width_sweep.png", "mixture_C3/metrics.jsonl", "mnist1d/metrics.jsonl",
            "width_8/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  assert set(summary["outlier_count"]) == {"mixture_C3", "mnist1d"}
  assert summary["width_sweep"]["outlier_count"] == [summary["outlier_count"]["mixture_C3"]]
  for arm in summary["arms"].values():
    lam = arm["top_eigenvalues"]
    assert len(lam) == 8 and lam == sorted(lam, reverse=True)
    assert 1 <= arm["count"] <= 4 and arm["gap"] >= 1


@pytest.mark.parametrize("override,key", [
    ({"mixture.num_classes": (1, 2)}, "mixture.num_classes"),
    ({"spectrum.top_k": 5}, "spectrum.top_k"),
    ({"spectrum.lanczos_iters": 10}, "spectrum.lanczos_iters"),
    ({"widths": ()}, "widths"),
    ({"optimizer.name": "nope"}, "optimizer.name"),
])
def test_hessian_outliers_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(OUT + ":quick", str(tmp_path), overrides=override)


@pytest.mark.repro
def test_hessian_outliers_quick_repro(tmp_path, repro_seed):
  """Sagun et al. / Papyan: C − 1 outliers; init, batches, mixture and MNIST-1D data from the seed.

  Measured (quick config): every assertion passes on --repro-seed 0-4 (5 of 5). About 80 s
  of CPU per seed.
  """
  summary = run.run(OUT + ":quick", str(tmp_path), overrides={
      "seed": repro_seed, "mixture.data_seed": repro_seed, "mnist1d.data_seed": 42 + repro_seed})
  for name, arm in summary["arms"].items():
    if name.startswith("mixture"):
      # Well-separated classes (train accuracy 1.00): exactly C − 1 outliers (Papyan 2019: the
      # C class-mean directions less the softmax's null one), measured 1 / 4 / 9 for C = 2 / 5 /
      # 10 on every seed 0-4, with the bulk edge a clear gap below (λ_{C−1}/λ_C = 4.8-6.0 /
      # 1.9-2.7 / 2.3-3.0).
      assert arm["count"] == arm["num_classes"] - 1, (name, arm["count"])
      assert arm["gap"] > 1.5, (name, arm["gap"])
  sw = summary["width_sweep"]
  assert all(k == sw["num_classes"] - 1 for k in sw["outlier_count"]), sw["outlier_count"]
  # Widening moves the bulk, not the outliers: widths 32 → 256 bulk edge ×0.61 / ×0.64 / ×0.56 /
  # ×0.73 / ×0.55, mean outlier ×1.05 / ×1.04 / ×0.84 / ×1.04 / ×0.87 (seeds 0-4). MNIST-1D's
  # count (no clean class separation at train accuracy ~0.8) moves with the seed, 8 / 10 / 1 /
  # 8 / 8, and is reported, not asserted.
  assert 0.75 <= sw["mean_outlier_ratio_widest_over_narrowest"] <= 1.33
  assert sw["bulk_edge_ratio_widest_over_narrowest"] < 0.75
