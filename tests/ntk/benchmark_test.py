"""benchmarks/ntk.py --quick runs and its kernels agree with the reference to 1e-5."""
import json

from benchmarks import ntk as bench


def test_quick_benchmark_agrees(tmp_path):
  out = tmp_path / "ntk.json"
  payload = bench.main(["--quick", "--out", str(out)])
  assert payload["agree"] and payload["max_relative_deviation"] <= 1e-5
  saved = json.loads(out.read_text())
  assert {r["kind"] for r in saved["rows"]} == {"empirical", "analytic", "auto"}
  auto = {r["model"]: r for r in saved["rows"] if r["kind"] == "auto"}
  assert set(auto) == {"mlp", "cnn"}
  for r in auto.values():  # auto picked the faster of the two on its probe
    assert r["auto_picks"] == min(("jacobian", "ntvp"), key=lambda m: r[f"probe_{m}_s"])
  assert saved["peer"]  # either the peer's version or why it could not be used
