"""Keep freed host memory in the process (glibc's malloc), so buffers are not faulted in again.

On a CPU, every XLA execution allocates its output and temporary buffers with
the C library's ``malloc`` and frees them after. glibc's defaults serve
blocks above a threshold (128 KiB at start, adapted upward to at most 32 MiB)
with ``mmap`` and hand them back with ``munmap``, and trim the heap when more
than twice that threshold is free at its top, so the next step's buffers are
new pages that the kernel must zero and map one 4 KiB page at a time. Measured
on the ICL quick study (2-core CPU, idle): 142 million minor page faults and
258 s of system time in a 535 s run; on its first 1,500 steps, 84.7 s wall
(34 s system, 18.6 M faults) by default against 68.0 s (7 s system, 2.6 M
faults) with the settings below, and the same numbers bit for bit (the
allocator decides where buffers live, never what is computed).

:func:`retain_freed_memory` sets, through ``mallopt(3)`` (``M_MMAP_THRESHOLD``
32 MiB, ``M_TRIM_THRESHOLD`` 256 MiB, ``M_TOP_PAD`` 64 MiB), what the
environment variables ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_TOP_PAD_`` would set at start-up: blocks below 32 MiB come from the
heap and freed ones are reused. The cost is memory the process keeps after
freeing it: up to 256 MiB per malloc arena above what it uses. It must run
before JAX starts its backend (the first array or computation): called after,
the same settings left the page faults and the time as they were (measured),
so it then changes nothing and returns False. The study launcher
(``experiments/run.py``, at import) and the test suite (``tests/conftest.py``)
call it; a library import does not (it changes the whole process). In your own
script, call it first, or set the three variables in the shell::

    from jaxlab.train import host_memory
    host_memory.retain_freed_memory()   # before any jax computation

It does nothing where the C library
is not glibc, where any of those variables (or their ``glibc.malloc``
tunables among ``GLIBC_TUNABLES``) is already set (the user's choice wins), or
with ``JAXLAB_MALLOC_DEFAULTS=1`` in the environment.

Blocks of 32 MiB and more are still mapped and unmapped on every use (glibc
allows no higher threshold). XLA:CPU gives each execution one temporary
buffer for all its intermediates, which passes 32 MiB for larger steps (the
ICL study's six vmapped candidates: 24 M faults in 300 steps, the same with
or without the settings). For those, transparent huge pages cut the faults
512-fold per mapping: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in the
environment at start-up (only there: glibc reads it once), which ``make run``
and ``make repro`` set (300 candidate steps: 0.37 M faults, 21 s of system
time instead of 41 s). It needs the kernel's transparent huge pages in
``madvise`` or ``always`` mode (``/sys/kernel/mm/transparent_hugepage/enabled``).
The whole ``make run`` (ICL quick study, idle 2-core CPU) went from 9 min 3 s
wall, 645 s user and 258 s system time to 7 min 45 s, 648 s and 107 s with
both, with the same numbers; its peak memory from 1.55 to 1.67 GB.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_TUNABLES = ("mmap_threshold", "trim_threshold", "top_pad")  # GLIBC_TUNABLES names of the same
_done: list[bool] = []


def retain_freed_memory() -> bool:
  """Applies the malloc settings above once per process; True if they are in effect.

  Returns False (and changes nothing) once JAX's backend is started, on a C
  library other than glibc, when the user set any of ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or their ``glibc.malloc``
  tunables (``hugetlb`` is not one of them), or with ``JAXLAB_MALLOC_DEFAULTS=1``.
  """
  if _done:
    return _done[0]
  if _backend_started():
    return False  # too late to matter; a later call in a fresh process is not affected
  ok = _applies() and _set()
  _done.append(ok)
  return ok


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a jax without the check: assume not yet
    return False


def _applies() -> bool:
  if os.environ.get("JAXLAB_MALLOC_DEFAULTS", "") not in ("", "0"):
    return False
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if any(v in os.environ for v in _ENV) or any(f"glibc.malloc.{t}" in tunables for t in _TUNABLES):
    return False
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _set() -> bool:
  try:
    # glibc's soname on every Linux; not ctypes.util.find_library, which runs ldconfig
    # in a subprocess (and opens /dev/null for writing) in every process that calls this
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
