"""Workdir I/O: config.json, metrics.jsonl, summary.json and plots/*.png.

Every file is written so that a kill at any instant leaves either the old
content or the new, never a mix: whole files go to a temporary name in the
same directory, are flushed to disk and renamed over the target
(:func:`atomic_write`); `metrics.jsonl` is only ever appended one complete,
flushed line at a time, and a line torn by a kill or a full disk is dropped
(with a warning) when the run resumes.

In a multi-process run only process 0 writes (`jaxlab.train.multihost`): on
the other processes every write here returns without touching the disk, and
`MetricsLogger.resume_from` only reads.

Fault injection for tests: with the environment variable
`JAXLAB_FAULT=NAME[:K]`, the K-th time (default 1) this process passes the
write boundary NAME it kills itself with SIGKILL. The boundaries are listed in
:data:`FAULT_POINTS`.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import signal
import tempfile
from typing import Any, Mapping

import numpy as np

from jaxlab.train import multihost
from jaxlab.train.errors import WorkdirError

log = logging.getLogger("jaxlab")

FAULT_POINTS = (
    "metrics.append.mid",     # half a metrics row written and flushed
    "metrics.append.after",   # a row written, before the checkpoint of that step
    "metrics.rewrite.mid",    # resume: the trimmed metrics half written to its temp file
    "checkpoint.save.before",  # the row is on disk, the checkpoint not yet started
    "checkpoint.save.after",  # the checkpoint committed (saves are waited for under faults)
    "file.write.mid",         # config/summary/eval JSON or a plot half written to its temp file
    "file.write.before_rename",  # the temp file complete, not yet renamed
)
_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
  """Test hook: SIGKILLs this process at the K-th pass through `name`."""
  spec = os.environ.get("JAXLAB_FAULT")
  if not spec:
    return
  target, _, k = spec.partition(":")
  if target != name:
    return
  _fault_counts[name] = _fault_counts.get(name, 0) + 1
  if _fault_counts[name] == int(k or 1):
    os.kill(os.getpid(), signal.SIGKILL)


def faults_enabled() -> bool:
  return bool(os.environ.get("JAXLAB_FAULT"))


def to_python(x: Any) -> Any:
  """Converts arrays / numpy scalars / ConfigDicts to JSON-ready Python values."""
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): to_python(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_python(v) for v in x]
  if isinstance(x, (str, bool)) or x is None:
    return x
  if isinstance(x, (int, np.integer)):
    return int(x)
  arr = np.asarray(x)
  if arr.ndim == 0:
    v = arr.item()
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)  # JSON has no nan/inf: keep them visible as strings
    return v
  return to_python(arr.tolist())


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # some file systems cannot sync a directory; the rename is still atomic
  finally:
    os.close(fd)


def atomic_write(path: str, data: bytes | str, *, writer=None) -> None:
  """Writes `data` (or calls `writer(file)`) to `path` atomically.

  The content goes to a unique temporary file beside `path`, is flushed and
  fsynced, then renamed over `path`; a kill at any instant leaves the old file
  or the new one. The temporary file is removed if writing fails, and one
  left by a killed writer is removed by the next write of the same file.
  In a multi-process run only process 0 writes; the others return at once.
  """
  if not multihost.is_primary():
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # A temporary file of this target left by a killed writer (one process owns a
  # workdir at a time, see jaxlab.train.workdir.lock): remove it.
  for stale in glob.glob(os.path.join(glob.escape(directory),
                                      "." + glob.escape(os.path.basename(path)) + ".*.tmp")):
    with contextlib.suppress(FileNotFoundError):
      os.remove(stale)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                             dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      if writer is not None:
        writer(f)
      else:
        raw = data.encode() if isinstance(data, str) else data
        half = len(raw) // 2
        f.write(raw[:half])
        if faults_enabled():
          f.flush()
          fault_point("file.write.mid")
        f.write(raw[half:])
      f.flush()
      os.fsync(f.fileno())
    fault_point("file.write.before_rename")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_dir(directory)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically (see :func:`atomic_write`)."""
  atomic_write(path, json.dumps(to_python(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  """Reads a JSON file; a damaged file raises WorkdirError naming it."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); it was not written by a finished "
                     "jaxlab write (those are atomic): restore it or move it away") from None


def _parse_jsonl(path: str) -> tuple[list[dict], bool]:
  """Rows of a JSONL file and whether its last line was torn (and dropped).

  Only the last line can be torn by a kill or a full disk (every row is
  appended whole and ends with a newline); a bad line elsewhere is damage
  from outside and raises WorkdirError naming the file and the line.
  """
  with open(path, "rb") as f:
    raw = f.read()
  lines = raw.split(b"\n")
  # A file written by complete appends ends with "\n": the last piece is b"".
  tail = lines.pop()
  rows, torn = [], bool(tail.strip())
  for i, ln in enumerate(lines):
    if not ln.strip():
      continue
    try:
      rows.append(json.loads(ln))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      if i == len(lines) - 1 and not tail.strip():
        torn = True  # a complete-looking last line that does not parse
        continue
      raise WorkdirError(f"{path}, line {i + 1}, is not valid JSON ({e}); only a torn last line "
                       "is repaired automatically: fix or remove that line") from None
  return rows, torn


def read_jsonl(path: str) -> list[dict]:
  """Reads a metrics.jsonl file into a list of dicts (a torn last line is skipped)."""
  return _parse_jsonl(path)[0]


class MetricsLogger:
  """Appends one JSON object per logged step to `workdir/metrics.jsonl`.

  Each row is written whole, flushed and fsynced before the caller goes on
  (the train loop saves the checkpoint of a step only after its row).
  `resume_from(step)` keeps the rows up to `step` and drops later ones (work
  a kill threw away) and a torn last line, replacing the file atomically, so
  a kill during a resume loses nothing.

  In a multi-process run only process 0 writes; on the others `write` and
  `reset` do nothing and `resume_from` reads the rows without trimming the file.
  """

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.writer = multihost.is_primary()
    if self.writer:
      os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)

  def resume_from(self, step: int) -> list[dict]:
    """Trims the file to the rows with `step ≤ step`; returns those rows."""
    if not os.path.exists(self.path):
      return []
    rows, torn = _parse_jsonl(self.path)
    kept = [r for r in rows if r.get("step", -1) <= step]
    if not self.writer:  # process 0 trims the file (atomically) while this one reads
      return kept
    if torn:
      log.warning("%s: dropped a torn last line (a write interrupted by a kill or a full "
                  "disk); the run resumes from step %d", self.path, step)
    if torn or len(kept) != len(rows):
      text = "".join(json.dumps(r) + "\n" for r in kept)
      half = len(text) // 2

      def writer(f):
        f.write(text[:half].encode())
        if faults_enabled():
          f.flush()
          fault_point("metrics.rewrite.mid")
        f.write(text[half:].encode())

      atomic_write(self.path, b"", writer=writer)
    return kept

  def reset(self) -> None:
    """Starts the file afresh (atomically empty)."""
    if self.writer and os.path.exists(self.path):
      atomic_write(self.path, b"")

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.writer:
      return
    row = {"step": int(step), **to_python(dict(metrics))}
    raw = (json.dumps(row) + "\n").encode()
    with open(self.path, "ab") as f:
      if faults_enabled():
        f.write(raw[:len(raw) // 2])
        f.flush()
        fault_point("metrics.append.mid")
        raw = raw[len(raw) // 2:]
      f.write(raw)
      f.flush()
      os.fsync(f.fileno())
    fault_point("metrics.append.after")


def save_figure(fig, workdir: str, name: str) -> str:
  """Saves a matplotlib figure as `workdir/plots/NAME.png` (atomically) and closes it."""
  import matplotlib.pyplot as plt

  path = os.path.join(workdir, "plots", name if name.endswith(".png") else name + ".png")
  if not multihost.is_primary():
    plt.close(fig)
    return path
  try:
    atomic_write(path, b"", writer=lambda f: fig.savefig(f, format="png", dpi=110,
                                                         bbox_inches="tight"))
  finally:
    plt.close(fig)
  return path
