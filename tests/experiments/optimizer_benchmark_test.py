"""The optimizer benchmark study runs end to end on a tiny setting."""
import numpy as np

from experiments import optimizer_benchmark, run

TINY = {"optimizers": ("adam", "momentum"), "schedules": ("constant", "wsd"),
        "num_steps": 60, "eval_every_steps": 20, "lr_factors": (1.0,),
        "model.hidden_sizes": (32,), "data.num_samples": 600}


def test_optimizer_benchmark_tiny(tmp_path):
  summary = run.run("experiments/configs/optimizer_benchmark.py:quick", str(tmp_path), TINY)
  assert set(summary["best_val_accuracy"]) == {"adam/constant", "adam/wsd",
                                               "momentum/constant", "momentum/wsd"}
  assert np.isfinite(summary["annealing_law"]["wsd_mean_relative_error"])
  assert 0 <= summary["refined_schedule"]["refined_best_val_accuracy"] <= 1
  for name in ("loss_curves", "performance_profile", "annealing_law"):
    assert (tmp_path / "plots" / f"{name}.png").exists()


def test_performance_profile_scoring():
  # Two workloads: A is fastest on w1 and 2× slower on w2; B never reaches target on w1.
  best = {("A", "w1"): {"steps_to_target": 10}, ("A", "w2"): {"steps_to_target": 40},
          ("B", "w1"): {"steps_to_target": None}, ("B", "w2"): {"steps_to_target": 20}}
  prof = optimizer_benchmark.performance_profile(best, ("A", "B"), ("w1", "w2"))
  taus = np.asarray(prof["taus"])
  np.testing.assert_allclose(prof["rho"]["A"], np.where(taus >= 2.0, 1.0, 0.5))
  np.testing.assert_allclose(prof["rho"]["B"], 0.5)
  np.testing.assert_allclose(prof["score"]["B"], 0.5, atol=1e-9)
  np.testing.assert_allclose(prof["score"]["A"], (0.5 * 1 + 1.0 * 2) / 3, atol=0.01)


def test_time_to_target_is_the_fastest_trial_of_the_sweep():
  # The most accurate trial (lr 0.1) is not the fastest to the target (lr 0.3 is).
  runs = [{"lr": 0.1, "val_curve": [(10, 0.4), (20, 0.6), (30, 0.9)]},
          {"lr": 0.3, "val_curve": [(10, 0.65), (20, 0.7), (30, 0.7)]},
          {"lr": 1.0, "val_curve": [(10, 0.2), (20, 0.3), (30, 0.3)]}]
  assert optimizer_benchmark.time_to_target(runs, 0.6) == {"steps_to_target": 10, "lr": 0.3}
  assert optimizer_benchmark.time_to_target(runs, 0.8) == {"steps_to_target": 30, "lr": 0.1}
  assert optimizer_benchmark.time_to_target(runs, 0.95) == {"steps_to_target": None, "lr": None}


def test_a_diverged_trial_does_not_stop_the_sweep(tmp_path):
  # Momentum at 1e5 × its base rate overflows; the sweep records it and goes on.
  summary = run.run("experiments/configs/optimizer_benchmark.py:quick", str(tmp_path),
                    {**TINY, "lr_factors": (1.0, 1e5)})
  assert any(d.startswith("momentum/") for d in summary["diverged"]), summary["diverged"]
  base = summary["best_lr"]["momentum/constant"]
  assert base == run.load_config("experiments/configs/optimizer_benchmark.py:quick").base_lrs.momentum
  assert summary["best_val_accuracy"]["momentum/constant"] > 0.1
