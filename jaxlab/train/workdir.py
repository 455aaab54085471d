"""One process per workdir, and the config that made it.

`lock(workdir)` makes sure one process at a time writes a workdir: a second
process stops at once with `WorkdirBusyError` naming the holder's pid. The
lock is an advisory `flock` on `workdir/.lock`, which the kernel releases when
its holder dies, so a lock left by a killed run (a dead pid in the file) is
simply taken over. The lock is re-entrant within one process (a study locks
its workdir and the train loop locks its sub-workdirs or the same one).

A multi-process run (`jaxlab.train.multihost`) writes one workdir from all its
processes: process 0 locks `.lock` (so a second run, of one process or many,
stops at once), process N > 0 locks its own `.lock.N` (so a process left over
from an earlier run of the same workdir stops the new one instead of writing
beside it), and the processes agree before the block starts: if any one of
them cannot lock, every one raises that WorkdirBusyError. Only process 0
writes config.json and config_changes.jsonl.

`check_config(workdir, config)` compares a run's config with the one recorded
in `workdir/config.json` and refuses a different one, listing the changed keys
with their old and new values; keys whose last part is in `VOLATILE_KEYS`
(display only, e.g. progress bars) may change freely.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
from typing import Any, Iterator, Mapping

from jaxlab.train import io, multihost
from jaxlab.train.errors import ConfigChangedError, WorkdirBusyError, WorkdirError

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
CHANGES_NAME = "config_changes.jsonl"
VOLATILE_KEYS = frozenset({"progress"})
# Keys added to the study configs after workdirs already existed, with the value
# that reproduces the behaviour before them: an older config.json that lacks such
# a key is resumed when the new config holds this value (anything else is a change).
ADDED_KEY_DEFAULTS = {"mesh.data": -1, "mesh.fsdp": 1, "model.compute_dtype": "float32"}
_held: dict[str, list] = {}  # realpath -> [fd, depth]


def ensure_dir(path: str, what: str = "workdir") -> str:
  """Makes `path` a writable directory, or raises WorkdirError naming it."""
  if os.path.lexists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{what} {path!r} exists and is not a directory; allowed: a directory "
                       "or a path that does not exist yet")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"{what} {path!r} cannot be created: {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"{what} {path!r} is not writable by this user")
  return path


_DIRS = ("checkpoints", "plots")
_FILES = (CONFIG_NAME, "metrics.jsonl", "summary.json", CHANGES_NAME)


def check_layout(workdir: str) -> None:
  """Raises WorkdirError if a record of the workdir has the wrong kind (e.g.
  `checkpoints` is a file), before a run reads or writes anything."""
  for name in _DIRS:
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and not os.path.isdir(path):
      raise WorkdirError(f"{path!r} exists and is not a directory; a run keeps its {name} "
                         "there: move that file away or use another workdir")
  for name in _FILES:
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and not os.path.isfile(path):
      raise WorkdirError(f"{path!r} exists and is not a regular file: move it away or use "
                         "another workdir")


def _acquire(workdir: str, path: str) -> int:
  """An open fd holding the flock of `path`, or WorkdirBusyError/WorkdirError."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"cannot open the lock file {path!r}: {e.strerror}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise WorkdirBusyError(
          f"workdir {workdir!r} is in use by another process ({holder}; lock file {path}); "
          "wait for it to finish, stop it, or use another --workdir") from None
    raise WorkdirError(f"cannot lock {path!r}: {e.strerror}") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
  return fd


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[str]:
  """Holds `workdir`'s lock for the `with` block (creating the directory)."""
  key = os.path.realpath(workdir)
  if key in _held:
    _held[key][1] += 1
    try:
      yield workdir
    finally:
      _held[key][1] -= 1
    return
  index = multihost.process_index()
  name = LOCK_NAME if index == 0 else f"{LOCK_NAME}.{index}"
  fd, error = None, None
  try:
    ensure_dir(workdir)
    fd = _acquire(workdir, os.path.join(workdir, name))
  except WorkdirError as e:
    error = e
  try:
    multihost.agree(error)  # one process: raises `error`; several: all raise, or none
  except BaseException:
    if fd is not None:
      os.close(fd)
    raise
  _held[key] = [fd, 1]
  try:
    yield workdir
  finally:
    _held[key][1] -= 1
    if not _held[key][1]:
      del _held[key]
      os.close(fd)  # releases the flock; the file stays (it names the last holder)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _comparable(config: Any) -> dict[str, Any]:
  flat = _flatten(io.to_python(config))
  return {k: v for k, v in flat.items() if k.rpartition(".")[2] not in VOLATILE_KEYS}


def fingerprint(config: Any) -> str:
  """A short hash of the config without its volatile keys (same config ⇒ same hash)."""
  text = json.dumps(_comparable(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_changes(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
  """`{key: (old, new)}` for every non-volatile key that differs ("<absent>" if missing).

  A key of `ADDED_KEY_DEFAULTS` (matched on its last two parts) absent from
  `old` and at its default in `new` is no change: the old run behaved so.
  """
  a, b = _comparable(old), _comparable(new)
  missing = "<absent>"

  def added_at_default(k: str) -> bool:
    tail = ".".join(k.split(".")[-2:])
    return k not in a and tail in ADDED_KEY_DEFAULTS and b.get(k) == ADDED_KEY_DEFAULTS[tail]

  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing) and not added_at_default(k)}


def check_config(workdir: str, config: Any, *, allow_change: bool = False,
                 flag: str = "--allow_config_change") -> dict[str, tuple[Any, Any]]:
  """Records `config` in `workdir/config.json`, refusing a changed one.

  A workdir without config.json takes the config. One with the same config
  (volatile keys aside) is resumed. A different one raises ConfigChangedError
  listing each changed key, its old and its new value, before anything is
  written, unless `allow_change`: then the change is appended to
  `config_changes.jsonl` (time, fingerprints, keys) and config.json holds the
  new config. Returns the changes.
  """
  path = os.path.join(workdir, CONFIG_NAME)
  changes: dict[str, tuple[Any, Any]] = {}
  old = io.read_json(path) if os.path.exists(path) else None
  if old is not None:
    changes = config_changes(old, config)
    if changes and not allow_change:
      lines = "\n".join(f"  {k}: {o!r} -> {n!r}" for k, (o, n) in changes.items())
      raise ConfigChangedError(
          f"workdir {workdir!r} was made by a different config ({len(changes)} key"
          f"{'s' if len(changes) > 1 else ''} changed, old -> new):\n{lines}\n"
          f"Use another --workdir to start fresh, or pass {flag} to continue this "
          "run from its last checkpoint under the new config (recorded in "
          f"{CHANGES_NAME}).")
    if changes:
      rows = []
      log_path = os.path.join(workdir, CHANGES_NAME)
      if os.path.exists(log_path):
        rows = io.read_jsonl(log_path)
      rows.append({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   "old_fingerprint": fingerprint(old), "new_fingerprint": fingerprint(config),
                   "changes": {k: list(v) for k, v in changes.items()}})
      io.atomic_write(log_path, "".join(json.dumps(io.to_python(r)) + "\n" for r in rows))
  if old != io.to_python(config):  # new, changed, or only a volatile key differs
    io.write_json(path, config)
  return changes
