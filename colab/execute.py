"""Re-executes notebooks and saves them with their outputs (`make notebooks`).

    python colab/execute.py [NAME ...]      # default: every colab/*.ipynb

Each notebook runs in a fresh kernel from the repository root, on its quick
setting (or its tiny one with JAXLAB_NOTEBOOK_TINY=1), and is written back in
place only when every cell ran without error, so a failed run never replaces
a good notebook. Plots are saved as PNGs of at most 110 dpi by the studies.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute(path: str, timeout: int) -> float:
  start = time.time()
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  if errors:
    raise RuntimeError(f"{path}: a cell failed: {errors[0].get('ename')}: {errors[0].get('evalue')}")
  tmp = path + ".tmp"
  nbformat.write(nb, tmp)
  os.replace(tmp, path)
  return time.time() - start


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("names", nargs="*", help="notebook names (default: all)")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
  args = parser.parse_args(argv)
  paths = ([os.path.join(ROOT, "colab", n.removesuffix(".ipynb") + ".ipynb") for n in args.names]
           or sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb"))))
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    print(f"error: no notebook {missing}", file=sys.stderr)
    return 2
  for path in paths:
    print(f"{os.path.relpath(path, ROOT)}: {execute(path, args.timeout):.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
