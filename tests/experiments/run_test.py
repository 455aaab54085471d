"""The launcher: config loading, overrides, bad input before any compile, the MLP study."""
import json
import os
import subprocess
import sys

import pytest

from experiments import run
from jaxlab import train
from jaxlab.train import io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MLP = "experiments/configs/mlp_mnist1d.py"
TINY = {"train.num_steps": 30, "train.eval_every_steps": 15, "train.checkpoint_every_steps": 10,
        "train.log_every_steps": 10, "train.progress": False, "data.num_samples": 600,
        "model.hidden_sizes": (32,)}


@pytest.mark.parametrize("overrides, match", [
    ({"train.no_such_key": 1}, r"unknown config key 'train.no_such_key'.*allowed keys.*train.num_steps"),
    (["train.num_steps=ten"], r"'train.num_steps': cannot parse 'ten'.*int"),
    ({"train.num_steps": 1.5}, r"'train.num_steps': got 1.5 \(float\), expected int"),
    ({"optimizer.learning_rate": -0.1}, r"'optimizer.learning_rate': -0.1.*allowed: a number > 0"),
    ({"optimizer.name": "adamm"}, r"'optimizer.name': 'adamm'.*allowed:.*'sgd'.*'adam'"),
    ({"study": "no_study"}, r"'study': unknown study 'no_study'; allowed:.*mlp_mnist1d"),
    ({"model.parametrization": "abc"}, r"'model.parametrization': 'abc'.*'standard', 'ntk', 'mup'"),
    ({"optimizer.schedule": "step"}, r"'optimizer.schedule': 'step'.*'cosine'"),
    ({"train.batch_size": 0}, r"'train.batch_size': 0"),
])
def test_bad_config_raises_before_compile(tmp_path, compiles, overrides, match):
  with pytest.raises(ValueError, match=match):
    run.run(f"{MLP}:quick", str(tmp_path), overrides)
  assert compiles == []
  assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_bad_config_argument_and_file(tmp_path):
  with pytest.raises(ValueError, match=r"'fast' .* allowed: \['quick'\]"):
    run.run(f"{MLP}:fast", str(tmp_path))
  with pytest.raises(ValueError, match="no config file.*available configs.*mlp_mnist1d"):
    run.run("experiments/configs/nope.py", str(tmp_path))


def test_overrides_parse_types():
  config = run.apply_overrides(run.load_config(f"{MLP}:quick"), [
      "--config.optimizer.learning_rate=3e-4", "model.hidden_sizes=(64, 32)",
      "model.normalize=True", "optimizer.name=lion", "train.num_steps=7"])
  assert config.optimizer.learning_rate == 3e-4 and config.model.hidden_sizes == (64, 32)
  assert config.model.normalize is True and config.optimizer.name == "lion"
  assert config.train.num_steps == 7


def test_mlp_study_end_to_end_and_resume(tmp_path):
  summary = run.run(f"{MLP}:quick", str(tmp_path), TINY)
  for name in ("config.json", "metrics.jsonl", "summary.json", "plots/loss.png",
               "plots/accuracy.png"):
    assert (tmp_path / name).exists(), name
  assert io.read_json(str(tmp_path / "summary.json")) == json.loads(json.dumps(summary))
  assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["num_steps"] == 30
  assert io.read_json(str(tmp_path / "config.json"))["train"]["num_steps"] == 30
  # More steps on the same workdir is a changed config: refused by default,
  # resumed from step 30 when asked for.
  with pytest.raises(train.ConfigChangedError, match=r"train.num_steps: 30 -> 40"):
    run.run(f"{MLP}:quick", str(tmp_path), {**TINY, "train.num_steps": 40})
  more = run.run(f"{MLP}:quick", str(tmp_path), {**TINY, "train.num_steps": 40},
                 allow_config_change=True)
  rows = io.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [10, 15, 20, 30, 40]
  assert more["num_steps"] == 40


def test_nan_injected_from_config(tmp_path):
  with pytest.raises(train.NonFiniteError, match=r"step 25\b.*checkpoint is step 20"):
    run.run(f"{MLP}:quick", str(tmp_path), {**TINY, "train.inject_nan_at_step": 25})


def test_command_line(tmp_path):
  cmd = [sys.executable, "-m", "experiments.run", f"--config={MLP}:quick",
         f"--workdir={tmp_path}", "--config.train.num_steps=ten"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "train.num_steps" in proc.stderr
  cmd[-1] = "--config.train.num_steps=20"
  cmd += [f"--config.{k}={v}" for k, v in TINY.items() if k != "train.num_steps"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "test_accuracy" in proc.stdout
