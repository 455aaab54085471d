"""benchmarks/run_all_on_device.py: every benchmark and every study is listed, and the
RESULTS section names the device and carries the FLOP/s and MFU rows (nothing is run)."""
import json

import pytest

from benchmarks import run_all_on_device as run_all
from experiments import run


def test_dry_run_lists_every_benchmark_and_every_full_study(tmp_path, capsys):
  items = run_all.main(["--dry-run", "--outdir", str(tmp_path)])["items"]
  names = [i["name"] for i in items]
  assert names == list(run_all.BENCHMARKS) + list(run.studies())
  assert set(run_all.EXPECTED) == set(names)  # an expected time (or None) for each
  printed = capsys.readouterr().out
  for study in run.studies():  # the full config: no ":quick"
    assert f"--config=experiments/configs/{study}.py --workdir=" in printed
  assert "-m benchmarks.icl_train --out" in printed and "--quick" not in printed
  assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_only_and_quick(tmp_path):
  items = run_all.commands(str(tmp_path), True, ["icl_train", "mlp_mnist1d"])
  assert [i["name"] for i in items] == ["icl_train", "mlp_mnist1d"]
  assert items[0]["argv"][-1] == "--quick"
  assert items[1]["argv"][-2].endswith("mlp_mnist1d.py:quick")
  with pytest.raises(SystemExit):
    run_all.main(["--dry-run", "--only", "icl_train,nonesuch"])


def test_section_names_the_device_and_the_flop_rows(tmp_path):
  out = tmp_path / "icl_train.json"
  out.write_text(json.dumps({"rows": [{"size": "full", "step_ms": 12.0, "flop_per_s": 3e13,
                                       "mfu": 0.0606}]}))
  items = [dict(name="icl_train", kind="benchmark", result=str(out), rc=0, wall_s=90.0,
                expected_cpu="~1 min"),
           dict(name="tract", kind="study", result=str(tmp_path / "none"), rc="timeout",
                wall_s=60.0, expected_cpu=None)]
  dev = {"device_kind": "NVIDIA H200", "device_count": 1, "platform": "gpu", "jax": "0.x"}
  text = run_all.section(dev, items, quick=False)
  assert text.startswith("## On a device: NVIDIA H200 × 1 (gpu), 20")
  assert "| icl_train | benchmark | ok | 1.5 min | ~1 min |" in text
  assert "| tract | study | timeout | 1.0 min | not measured |" in text
  assert "icl_train full: 12 ms/step, 3e+04 GFLOP/s, MFU 6.1%" in text
