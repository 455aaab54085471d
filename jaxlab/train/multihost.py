"""Several processes running one job: start-up, who writes, agreement on errors.

A multi-process run is one program started once per process (one per host, or
several on one machine), each with `initialize(coordinator_address,
num_processes, process_id)` before anything else touches JAX. Afterwards
`jax.devices()` lists every process's devices, the train loop's mesh spans
them, and each process feeds the rows of the batch its own devices hold
(`jaxlab.train.sharding.put_batch`).

Who does what (the rest of jaxlab.train follows these rules):

* Process 0 writes the workdir's records: `config.json`, `metrics.jsonl`,
  `summary.json`, `plots/`, every file that goes through `jaxlab.train.io`
  (`is_primary`). The other processes compute the same values and skip the
  writes.
* Checkpoints are written and restored by every process through orbax's
  multi-process support (process 0 commits each step; each process writes and
  reads the array shards it owns). The workdir must be one directory that every
  process sees (a shared file system on several hosts).
* Workdir locks: each process holds its own lock file (`.lock` for process 0,
  `.lock.N` for process N; see `jaxlab.train.workdir.lock`), and the processes
  agree before going on: if any one cannot lock, every one stops with that
  error.
* Errors that every process meets at the same point (a bad config, a changed
  workdir, a non-finite loss: the metrics are replicated, so every process
  sees the same values at the same step) stop every process by themselves.
  Where only some processes might fail (locking, the workdir's records,
  restoring a checkpoint) the processes `agree` first, so all raise together.
  Anything else that stops one process alone leaves the others waiting in a
  collective; they do not wait forever: a peer's exit closes its collective
  connections (gloo on CPU reports it at once), and JAX's coordination service
  ends every process whose peer stopped sending heartbeats for
  `heartbeat_timeout_seconds` (default 100 s). `experiments.run` exits a
  failed process after a bounded shutdown (`exit_after_error`).
"""
from __future__ import annotations

import os
import re
import sys
import threading
from typing import Mapping

import jax
import numpy as np

from jaxlab.train.errors import CheckpointError, ConfigChangedError, WorkdirBusyError, WorkdirError

# Error kinds that keep their class when one process reports another's failure.
_KINDS = {c.__name__: c for c in (ValueError, WorkdirError, WorkdirBusyError, ConfigChangedError,
                                  CheckpointError)}
_MESSAGE_BYTES = 4096


def detected_cluster(environ: Mapping[str, str] | None = None) -> str | None:
  """The multi-process launcher this process runs under, if any: "slurm",
  "openmpi" or "tpu" (a Cloud TPU slice of several hosts); None otherwise.

  Only environments with more than one process count: a SLURM job of one task
  or a single-host TPU VM runs as one process without `jax.distributed`.
  """
  env = os.environ if environ is None else environ

  def count(name: str) -> int:
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1

  if "SLURM_JOB_ID" in env and count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
  if "," in hosts or "MEGASCALE_COORDINATOR_ADDRESS" in env:
    return "tpu"
  return None


def check_args(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, heartbeat_timeout_seconds: int | None = None) -> None:
  """Raises ValueError naming the argument unless the three are all set
  (`host:port`, an int ≥ 1, an int in [0, num_processes)) or all None."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    raise ValueError(f"--{missing[0]}: missing (got {given}); allowed: all three of "
                     "--coordinator_address, --num_processes, --process_id, or none of them "
                     "(one process, or detected under SLURM / Open MPI / a TPU slice)")
  if coordinator_address is None:
    return
  if not re.fullmatch(r"\[?[A-Za-z0-9_.:-]+\]?:\d{1,5}", coordinator_address):
    raise ValueError(f"--coordinator_address: {coordinator_address!r}; allowed: HOST:PORT of "
                     "process 0's machine, e.g. 10.0.0.1:1234 or localhost:1234")
  if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
    raise ValueError(f"--num_processes: {num_processes!r}; allowed: an integer ≥ 1")
  if (isinstance(process_id, bool) or not isinstance(process_id, int)
      or not 0 <= process_id < num_processes):
    raise ValueError(f"--process_id: {process_id!r}; allowed: an integer in "
                     f"[0, {num_processes - 1}] (0 .. num_processes - 1)")
  if heartbeat_timeout_seconds is not None and (
      isinstance(heartbeat_timeout_seconds, bool)
      or not isinstance(heartbeat_timeout_seconds, int) or heartbeat_timeout_seconds < 1):
    raise ValueError(f"--heartbeat_timeout_seconds: {heartbeat_timeout_seconds!r}; allowed: an "
                     "integer ≥ 1")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout_seconds: int | None = None) -> int:
  """Joins this process to a multi-process job; returns the number of processes.

  With the three arguments (`jax.distributed.initialize`'s names) the job is
  the one they describe. With none: under a launcher that starts several
  processes (`detected_cluster`) JAX reads the job from the environment;
  otherwise this is a one-process run and nothing is initialized. Call it
  before anything else uses JAX. On CPU the cross-process collectives use
  gloo. A peer that stops sending heartbeats for `heartbeat_timeout_seconds`
  (default JAX's, 100 s) ends this process too, instead of a collective
  waiting for it forever.
  """
  check_args(coordinator_address, num_processes, process_id, heartbeat_timeout_seconds)
  if coordinator_address is None and detected_cluster() is None:
    return 1
  if jax.distributed.is_initialized():
    return jax.process_count()
  if num_processes == 1:
    return 1
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if heartbeat_timeout_seconds is not None:
    kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_seconds
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id, **kwargs)
  return jax.process_count()


def process_count() -> int:
  """The number of processes in the job (1 without `jax.distributed`; no backend start-up)."""
  return jax.process_count() if jax.distributed.is_initialized() else 1


def process_index() -> int:
  """This process's index in the job (0 without `jax.distributed`; no backend start-up)."""
  return jax.process_index() if jax.distributed.is_initialized() else 0


def is_primary() -> bool:
  """True on process 0, the one that writes the workdir's records (and in a
  one-process run)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier `name` (no-op for one)."""
  if process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _encode(error: BaseException | None) -> np.ndarray:
  out = np.zeros(_MESSAGE_BYTES, np.uint8)
  if error is not None:
    raw = f"{type(error).__name__}\n{error}".encode(errors="replace")[:_MESSAGE_BYTES - 1]
    out[0] = 1
    out[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
  return out


def agree(error: BaseException | None) -> None:
  """Every process passes its error (or None); if any process has one, every
  process raises: its own error, or the first failing process's error kind
  (ValueError, WorkdirError and its subclasses; RuntimeError otherwise) with
  that process's message. A collective: every process must call it at the
  same point. With one process, raises `error` if given.
  """
  if process_count() == 1:
    if error is not None:
      raise error
    return
  from jax.experimental import multihost_utils
  rows = np.asarray(multihost_utils.process_allgather(_encode(error)))
  failed = [p for p in range(rows.shape[0]) if rows[p, 0]]
  if error is not None:
    raise error
  if failed:
    p = failed[0]
    text = bytes(rows[p, 1:]).rstrip(b"\0").decode(errors="replace")
    name, _, message = text.partition("\n")
    raise _KINDS.get(name, RuntimeError)(f"process {p} failed ({name}): {message}")


def exit_after_error(code: int, shutdown_timeout_s: float = 10.0) -> None:
  """Ends a process of a multi-process job that stopped with an error.

  Tries `jax.distributed.shutdown` for at most `shutdown_timeout_s` seconds:
  when every process failed the same way (a bad config, a non-finite loss)
  they all shut down together and exit with the error's code. A process that
  failed alone does not wait for peers that are still computing: it exits
  after the timeout, which closes its collective connections and ends them
  too. Never returns.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  if jax.distributed.is_initialized():
    done = threading.Thread(target=jax.distributed.shutdown, daemon=True)
    done.start()
    done.join(shutdown_timeout_s)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
