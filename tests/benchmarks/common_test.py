"""benchmarks.common: the peak table by device_kind and the FLOP/s and MFU columns."""
import types

import pytest

from benchmarks import common


def _device(kind, platform="gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "float32", 494.7e12),  # SXM
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),  # matched before the SXM row
    ("NVIDIA H200", "bfloat16", 989.4e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("TPU v5 lite", "bfloat16", 197e12),  # v5e, matched before v5p's "TPU v5"
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v4", "float32", 275e12),
])
def test_peak_by_device_kind(kind, dtype, peak):
  assert common.peak_flops(dtype, _device(kind))[0] == peak


def test_no_peak_on_cpu_or_unknown_device():
  assert common.peak_flops("float32", _device("cpu", "cpu")) == (None, "no accelerator peak")
  got, why = common.peak_flops("float32", _device("Mystery GPU 9000"))
  assert got is None and "'Mystery GPU 9000' not in" in why
  cols = common.flop_columns(2e9, 0.5, prefix="x_")  # this machine's device
  assert cols["x_flop_per_s"] == 4e9
  assert cols["x_mfu"] == "n/a (no accelerator peak)" or 0 < cols["x_mfu"] < 1
  assert common.flop_columns(None, 0.5)["mfu"] == "n/a (no FLOP count)"
