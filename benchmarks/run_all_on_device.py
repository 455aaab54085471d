"""Every benchmark and every study's full config, one after the other, on this machine.

    python -m benchmarks.run_all_on_device                  # everything (hours; GPU/TPU)
    python -m benchmarks.run_all_on_device --dry-run        # the commands and expected times
    python -m benchmarks.run_all_on_device --only icl_train,spectral,mlp_mnist1d
    python -m benchmarks.run_all_on_device --quick          # quick sizes: a smoke test
    python -m benchmarks.run_all_on_device --append-results # also append to RESULTS.md

Each item runs in its own process (`python -m benchmarks.NAME --out ...` or
`python -m experiments.run --config=experiments/configs/NAME.py --workdir=...`)
under `--timeout-min`; a failure or a timeout is recorded and the next item
runs. Everything goes under `--outdir` (default `runs/device_<UTC time>`):
`NAME.json` (a benchmark's results), `NAME.log` (its output), `studies/NAME/`
(a study's workdir: summary.json, metrics, plots), `run_all.json` (commands,
exit codes, wall times) and `RESULTS_section.md`: a dated section naming the
device, with each item's wall time and the benchmarks' FLOP/s and MFU rows,
printed at the end and, with `--append-results`, appended to
benchmarks/RESULTS.md. A re-run with the same `--outdir` resumes the studies
(their workdirs resume) and re-runs the benchmarks.

Expected times: the numbers in `EXPECTED` are measured on a 2-core CPU (from
the benchmark and config docstrings); none has been measured on a GPU or TPU
yet, where the studies' small models are expected to take a fraction of that.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BENCHMARKS = ("train_step", "spectral", "ntk", "icl_train", "optim_step")
# Wall time of the full run on a 2-core CPU, as measured in each docstring
# (None: never measured there).
EXPECTED = {
    "train_step": "a few minutes", "spectral": "15-40 min", "ntk": "~10 min",
    "icl_train": "~1 min", "optim_step": "~10 min",
    "autolrs": None, "batch_hessian": None, "edge_of_stability": "11 min",
    "hessian_outliers": "3 min", "hyperfree": None, "icl_linreg": None,
    "lr_transfer": "14 min", "mlp_mnist1d": "~1 min", "nap_plasticity": "~10 min",
    "nap_stationary": "~6 min", "ntk_permutations": "20-30 min",
    "optimizer_benchmark": "32 min", "tract": None,
}


def studies() -> list[str]:
  from experiments import run
  return list(run.studies())


def commands(outdir: str, quick: bool, only: list[str] | None) -> list[dict]:
  """One entry per item: name, kind, argv, and where its results go."""
  items = []
  for name in BENCHMARKS:
    out = os.path.join(outdir, f"{name}.json")
    argv = [sys.executable, "-m", f"benchmarks.{name}", "--out", out]
    items.append(dict(name=name, kind="benchmark", argv=argv + (["--quick"] if quick else []),
                      result=out))
  for name in studies():
    workdir = os.path.join(outdir, "studies", name)
    config = f"experiments/configs/{name}.py" + (":quick" if quick else "")
    argv = [sys.executable, "-m", "experiments.run", f"--config={config}",
            f"--workdir={workdir}"]
    items.append(dict(name=name, kind="study", argv=argv,
                      result=os.path.join(workdir, "summary.json")))
  if only:
    known = {i["name"] for i in items}
    bad = sorted(set(only) - known)
    if bad:
      raise ValueError(f"--only {','.join(bad)}: not an item; allowed: {sorted(known)}")
    items = [i for i in items if i["name"] in only]
  for i in items:
    i["expected_cpu"] = EXPECTED.get(i["name"])
  return items


def device() -> dict:
  import jax
  d = jax.devices()[0]
  return {"device_kind": d.device_kind, "platform": d.platform,
          "device_count": jax.device_count(), "jax": jax.__version__}


def flop_rows(item: dict) -> list[str]:
  """The FLOP/s and MFU lines of a benchmark's JSON (icl_train, spectral), if any."""
  from benchmarks import common
  if item["kind"] != "benchmark" or not os.path.exists(item["result"]):
    return []
  with open(item["result"]) as f:
    res = json.load(f)
  gf = lambda x: "n/a" if x is None else f"{x / 1e9:.4g} GFLOP/s"
  lines = []
  for r in res.get("rows", []) if item["name"] == "icl_train" else []:
    lines.append(f"icl_train {r['size']}: {r['step_ms']:.3g} ms/step, {gf(r.get('flop_per_s'))}, "
                 f"MFU {common.mfu_text(r.get('mfu'))}")
  for r in (res.get("costs") or {}).get("rows", []) if item["name"] == "spectral" else []:
    lines.append(f"spectral costs batch {r['batch']}: gradient {gf(r.get('grad_flop_per_s'))} "
                 f"(MFU {common.mfu_text(r.get('grad_mfu'))}), HVP {gf(r.get('hvp_flop_per_s'))} "
                 f"(MFU {common.mfu_text(r.get('hvp_mfu'))})")
  return lines


def section(dev: dict, items: list[dict], quick: bool) -> str:
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  lines = [f"## On a device: {dev['device_kind']} × {dev['device_count']} ({dev['platform']}), "
           f"{when}", "",
           f"`python -m benchmarks.run_all_on_device{' --quick' if quick else ''}`, jax "
           f"{dev['jax']}. Wall time per item, and the full size's on a 2-core CPU (from the "
           "docstrings) for comparison:",
           "", "| item | kind | status | wall | 2-core CPU, full size |", "|---|---|---|---|---|"]
  for i in items:
    status = "ok" if i.get("rc") == 0 else ("timeout" if i.get("rc") == "timeout"
                                            else f"failed (exit {i.get('rc')})")
    lines.append(f"| {i['name']} | {i['kind']} | {status} | {i.get('wall_s', 0) / 60:.1f} min | "
                 f"{i['expected_cpu'] or 'not measured'} |")
  flops = [line for i in items if i.get("rc") == 0 for line in flop_rows(i)]
  if flops:
    lines += ["", "Achieved FLOP/s (XLA cost analysis / measured time) and MFU:", ""]
    lines += [f"- {line}" for line in flops]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--outdir", default=None, help="default runs/device_<UTC time>")
  ap.add_argument("--only", default="", help="comma list of benchmark or study names")
  ap.add_argument("--quick", action="store_true", help="quick sizes and :quick configs")
  ap.add_argument("--timeout-min", type=float, default=180.0, help="per item (default 180)")
  ap.add_argument("--dry-run", action="store_true", help="print the commands and stop")
  ap.add_argument("--append-results", action="store_true",
                  help="append the section to benchmarks/RESULTS.md")
  args = ap.parse_args(argv)
  if not args.timeout_min > 0:
    ap.error(f"--timeout-min {args.timeout_min}; allowed: a number > 0")
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
  outdir = os.path.abspath(args.outdir or os.path.join("runs", f"device_{stamp}"))
  only = [s.strip() for s in args.only.split(",") if s.strip()] or None
  try:
    items = commands(outdir, args.quick, only)
  except ValueError as e:
    ap.error(str(e))
  if args.dry_run:
    for i in items:
      print(f"[{i['kind']}, 2-core CPU: {i['expected_cpu'] or 'not measured'}] "
            + " ".join(i["argv"][1:]))
    return {"items": items}

  from jaxlab.train import io
  dev = device()
  print(f"device: {dev['device_kind']} × {dev['device_count']} ({dev['platform']}); "
        f"{len(items)} items; results in {outdir}", flush=True)
  os.makedirs(outdir, exist_ok=True)
  record = {"device": dev, "quick": args.quick, "items": items}
  for i in items:
    t0 = time.time()
    print(f"== {i['name']} ({i['kind']}): {' '.join(i['argv'][1:])}", flush=True)
    with open(os.path.join(outdir, f"{i['name']}.log"), "w") as log:
      try:
        i["rc"] = subprocess.run(i["argv"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=60 * args.timeout_min).returncode
      except subprocess.TimeoutExpired:
        i["rc"] = "timeout"
    i["wall_s"] = time.time() - t0
    print(f"   exit {i['rc']}, {i['wall_s'] / 60:.1f} min", flush=True)
    io.write_json(os.path.join(outdir, "run_all.json"), record)  # after every item
  text = section(dev, items, args.quick)
  with open(os.path.join(outdir, "RESULTS_section.md"), "w") as f:
    f.write(text)
  print("\n" + text)
  if args.append_results:
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
      f.write("\n" + text)
  return record


if __name__ == "__main__":
  main(sys.argv[1:])
