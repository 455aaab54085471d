"""Shared helpers for benchmarks: timing, tables, JSON results."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def median_time(fn: Callable[[], object], repeats: int = 5) -> float:
  """Median wall time of `fn()` over `repeats` calls (call it once before to warm up)."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  """A plain-text table of `rows` (dicts) with the given columns."""
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
  return "\n".join(lines)


# Dense (no sparsity) peak FLOP/s per chip, by a substring of `jax.Device.device_kind`
# (first match wins), for the matmul precision JAX uses by default: float32 dots run
# on TF32 tensor cores on NVIDIA Ampere and later, and as one bfloat16 pass on TPU,
# so those are the float32 peaks (under jax_default_matmul_precision="highest" the
# true float32 peak is lower, and the MFU against these peaks a lower bound).
# Sources (vendor data sheets and Cloud TPU docs; the numbers they print):
PEAK_FLOPS = (
    # NVIDIA H100 PCIe data sheet: BF16 1,513 and TF32 756 TFLOPS with sparsity; half dense.
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    # NVIDIA H100 SXM data sheet: BF16 1,979 and TF32 989 TFLOPS with sparsity; half dense.
    ("H100", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    # NVIDIA H200 SXM data sheet: BF16 1,979 and TF32 989 TFLOPS with sparsity (the H100's
    # tensor cores with more memory); half dense.
    ("H200", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    # NVIDIA A100 data sheet: BF16 312 and TF32 156 TFLOPS dense (624 / 312 with sparsity).
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    # NVIDIA L4 data sheet: BF16 242 and TF32 120 TFLOPS with sparsity; half dense.
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    # Cloud TPU docs, system architecture: v4 275 TFLOPS bf16 per chip.
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    # Cloud TPU docs: v5e ("TPU v5 lite") 197 TFLOPS bf16 per chip.
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    # Cloud TPU docs: v5p ("TPU v5") 459 TFLOPS bf16 per chip.
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),
    # Cloud TPU docs: v6e Trillium ("TPU v6 lite") 918 TFLOPS bf16 per chip.
    ("TPU v6 lite", {"bfloat16": 918e12, "float32": 918e12}),
)


def peak_flops(dtype: str = "float32", device=None) -> tuple[float | None, str]:
  """(peak FLOP/s of one `device` for `dtype`, where it came from); None and why if unknown."""
  import jax

  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None, "no accelerator peak"
  for name, peaks in PEAK_FLOPS:
    if name in device.device_kind:
      if dtype not in peaks:
        return None, f"no {dtype} peak for {device.device_kind}"
      return peaks[dtype], f"{name} {dtype} dense peak"
  return None, f"device_kind {device.device_kind!r} not in benchmarks/common.py:PEAK_FLOPS"


def compiled_flops(jitted, *args, **kwargs) -> float | None:
  """FLOPs of one call of `jitted` (a `jax.jit` function) at `args`, from XLA's cost analysis.

  None when the backend reports none. For a program split over several devices
  XLA reports one device's share.
  """
  cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
    cost = cost[0] if cost else {}
  flops = float((cost or {}).get("flops", 0.0))
  return flops if flops > 0 else None


def flop_columns(flops: float | None, seconds: float, dtype: str = "float32",
                 prefix: str = "") -> dict:
  """`{prefix}flop_per_s` (achieved: XLA's FLOPs / measured time) and `{prefix}mfu`
  (achieved / the device's peak, `peak_flops`), or "n/a (why)" where there is no peak."""
  if not flops or not seconds > 0:
    return {f"{prefix}flop_per_s": None, f"{prefix}mfu": "n/a (no FLOP count)"}
  rate = flops / seconds
  peak, why = peak_flops(dtype)
  return {f"{prefix}flop_per_s": rate, f"{prefix}mfu": rate / peak if peak else f"n/a ({why})"}


def mfu_text(mfu) -> str:
  """An MFU column value as printed: a percentage, or "n/a (why)"."""
  return f"{100 * mfu:.1f}%" if isinstance(mfu, float) else str(mfu)


def machine() -> dict:
  import jax

  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind}


def write_results(name: str, payload: dict, path: str | None = None) -> str:
  path = path or os.path.join(RESULTS, f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"benchmark": name, "machine": machine(), **payload}, f, indent=2)
    f.write("\n")
  return path
