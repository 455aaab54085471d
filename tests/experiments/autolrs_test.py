"""autolrs study: a tiny end-to-end run, a killed run that resumes bit for bit, config errors,
and the quick-scale comparison with tuned schedules (`-m repro`)."""
import os
import signal
import subprocess
import sys

import pytest

from experiments import run
from jaxlab.train import io

CFG = "experiments/configs/autolrs.py"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"data.num_samples": 600, "model.hidden_sizes": (16,), "optimizers": ("adam",),
        "lr_factors": (1.0,),
        "budget_steps": 120, "batch_size": 32, "eval_every_steps": 10,
        "checkpoint_every_steps": 10, "autolrs.tau": 10, "autolrs.tau_max": 20,
        "autolrs.num_lrs": 3, "autolrs.lookahead_fraction": 0.3}


def _strip(rows):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


def test_autolrs_tiny_run(tmp_path):
  wd = str(tmp_path)
  summary = run.run(CFG + ":quick", wd, overrides=TINY)
  for f in ("summary.json", "plots/lr_schedule.png", "plots/loss_curves.png",
            "runs/adam_autolrs/metrics.jsonl", "runs/adam_cosine_0.003/metrics.jsonl"):
    assert os.path.exists(os.path.join(wd, f)), f
  for opt in ("adam",):
    arm = summary["optimizers"][opt]
    au = arm["autolrs"]
    # Equal budgets: look-ahead updates are counted and reported apart.
    assert au["total_steps"] == au["train_steps"] + au["lookahead_steps"] <= 120
    assert au["lookahead_steps"] > 0 and au["train_steps"] > 0
    lo, hi = au["lr_range"]
    assert all(lo <= lr <= hi for lr in au["stage_lrs"])
    best = max(arm[s]["final_val_accuracy"] for s in ("cosine", "wsd"))
    assert arm["autolrs_minus_best_accuracy"] == pytest.approx(
        au["final_val_accuracy"] - best)
    for s in ("cosine", "wsd"):  # the tuned rate is the sweep's best
      assert arm[s]["final_val_accuracy"] == max(arm[s]["sweep"].values())


def test_autolrs_killed_run_resumes_bit_identically(tmp_path):
  ref = str(tmp_path / "ref")
  run.run(CFG + ":quick", ref, overrides=TINY)
  wd = str(tmp_path / "run")
  args = [sys.executable, "-m", "experiments.run", f"--config={CFG}:quick", f"--workdir={wd}",
          *(f"--config.{k}={v}" for k, v in TINY.items())]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLAB_FAULT="checkpoint.save.after:3")
  # Only the AutoLRS run checkpoints: the kill lands inside it, after stage 1's search.
  killed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  run.run(CFG + ":quick", wd, overrides=TINY)
  for name in ("adam_autolrs",):
    a = io.read_jsonl(os.path.join(ref, "runs", name, "metrics.jsonl"))
    b = io.read_jsonl(os.path.join(wd, "runs", name, "metrics.jsonl"))
    assert _strip(a) == _strip(b), name
  strip = lambda d: {k: v for k, v in d.items() if k != "wall_time_s"}
  assert strip(io.read_json(os.path.join(wd, "summary.json"))) == \
      strip(io.read_json(os.path.join(ref, "summary.json")))


@pytest.mark.parametrize("override,key", [
    ({"optimizers": ("momentum", "nope")}, "optimizers"),
    ({"schedules": ("linear",)}, "schedules"),
    ({"autolrs.tau_max": 30}, "autolrs"),
    ({"autolrs.acquisition": "pi"}, "autolrs"),
    ({"autolrs.lr_range_factors": (3.0, 1.0)}, "autolrs.lr_range_factors"),
    ({"budget_steps": 2}, "budget_steps"),
])
def test_autolrs_bad_config(tmp_path, override, key):
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    run.run(CFG + ":quick", str(tmp_path), overrides={**TINY, **override})


@pytest.mark.repro
def test_autolrs_quick_repro(tmp_path, repro_seed):
  """Not reproduced at quick scale: the paper's claim (AutoLRS matches or beats tuned
  schedules) was checked as "final validation accuracy within 0.02 of the better tuned
  schedule"; measured at seeds 0 and 1, AutoLRS is 0.085-0.092 below with Adam and
  0.62 below with momentum (a stage at the top of the range kills the network). This
  asserts the measured finding: below the better tuned schedule for both optimizers."""
  summary = run.run(CFG + ":quick", str(tmp_path), overrides={"seed": repro_seed})
  gaps = {o: a["autolrs_minus_best_accuracy"] for o, a in summary["optimizers"].items()}
  assert all(g < 0 for g in gaps.values()), gaps
  for arm in summary["optimizers"].values():  # equal budgets, look-ahead counted
    assert arm["autolrs"]["total_steps"] <= summary["budget_steps"]
