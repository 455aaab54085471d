"""The icl_train benchmark runs end to end at tiny sizes and writes its JSON."""
import json

import pytest

from benchmarks import icl_train


def test_icl_train_benchmark_quick(tmp_path):
  out = tmp_path / "icl_train.json"
  rows = icl_train.main(["--quick", "--out", str(out)])
  assert [r["size"] for r in rows] == ["quick", "full"]
  saved = json.loads(out.read_text())
  assert saved["benchmark"] == "icl_train" and saved["rows"] == rows
  for r in rows:
    assert r["prompts_per_s"] > 0 and r["step_ms"] > 0
    # FLOPs from XLA's cost analysis over the measured step time; on CPU no MFU.
    assert r["gflop_per_step"] > 0 and r["flop_per_s"] > 0
    assert r["flop_per_s"] == pytest.approx(r["gflop_per_step"] * 1e9 / (r["step_ms"] / 1e3))
    assert r["mfu"] == "n/a (no accelerator peak)" or 0 < r["mfu"] < 1
  # The "full" size has more parameters and more tokens per prompt.
  assert rows[1]["params"] > rows[0]["params"]
