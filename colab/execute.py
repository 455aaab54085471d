"""Re-executes notebooks and saves them with their outputs (`make notebooks`).

    python colab/execute.py [NAME ...]      # default: every colab/*.ipynb

Each notebook runs in a fresh kernel from the repository root, on its quick
setting (or its tiny one with JAXLAB_NOTEBOOK_TINY=1), and is written back in
place only when every cell ran without error, so a failed run never replaces
a good notebook. Plots are saved as PNGs of at most 110 dpi by the studies.

Before writing, every text output (stream text, text/* data such as
text/plain, error tracebacks) is scrubbed of this machine's paths (`scrub`):
the Python environment (sys.prefix, e.g. the venv) becomes "<venv>", the
repository root ".", the temp dir (tempfile.gettempdir() and /tmp) "<tmp>"
and the home directory "~", so no machine path reaches git. Consecutive
stream outputs of a cell are merged and carriage-return progress-bar updates
(tqdm) collapsed to the last state of each bar, so files stay small.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_paths() -> list[tuple[str, str]]:
  """(path, placeholder) pairs of this machine, as `scrub` takes them."""
  home = os.path.expanduser("~")
  return [(sys.prefix, "<venv>"), (ROOT, "."), (tempfile.gettempdir(), "<tmp>"),
          ("/tmp", "<tmp>"), (home, "~")]


def _path_pattern(paths: list[tuple[str, str]]) -> tuple[re.Pattern, dict[str, str]]:
  # Longest first, so a venv inside the repository or a repository inside home
  # is replaced whole. A path matches only as a whole component sequence:
  # "/work/main" in "/work/main2" or "x/work/main" is left alone.
  # A path may follow an ANSI colour code (IPython tracebacks).
  table = {}
  for path, placeholder in paths:
    for form in {os.path.normpath(path), os.path.realpath(path)} if path else ():
      if form not in ("/", ".") and form not in table:
        table[form] = placeholder
  alternatives = "|".join(re.escape(p) for p in sorted(table, key=len, reverse=True))
  return re.compile(rf"(^|[^\w.\-/]|\x1b\[[0-9;]*m)({alternatives})(?![\w.\-])",
                    re.MULTILINE), table


def _collapse_carriage_returns(text: str) -> str:
  """Keeps what a terminal would show: the text after the last \\r of each line."""
  lines = []
  for line in text.split("\n"):
    parts = [p for p in line.split("\r") if p]
    lines.append(parts[-1] if parts else "")
  return "\n".join(lines)


def scrub(nb: nbformat.NotebookNode, paths: list[tuple[str, str]] | None = None
          ) -> nbformat.NotebookNode:
  """Replaces machine paths in every text output of `nb` (in place; returns it).

  Args:
    nb: an executed notebook.
    paths: (path, placeholder) pairs; default `machine_paths()`.
  """
  pattern, table = _path_pattern(machine_paths() if paths is None else paths)

  def sub(text):
    return pattern.sub(lambda m: m.group(1) + table[m.group(2)], text) if table else text

  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    outputs = []
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == out.name:
          outputs[-1].text += out.text
          continue
      elif out.output_type in ("display_data", "execute_result"):
        for mime, value in out.get("data", {}).items():
          if mime.startswith("text/"):
            out.data[mime] = sub(value if isinstance(value, str) else "".join(value))
      elif out.output_type == "error":
        out.traceback = [sub(line) for line in out.traceback]
        out.evalue = sub(out.evalue)
      outputs.append(out)
    for out in outputs:
      if out.output_type == "stream":
        out.text = sub(_collapse_carriage_returns(out.text))
    cell.outputs = outputs
  return nb


def execute(path: str, timeout: int) -> float:
  start = time.time()
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  if errors:
    raise RuntimeError(f"{path}: a cell failed: {errors[0].get('ename')}: {errors[0].get('evalue')}")
  scrub(nb)
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
