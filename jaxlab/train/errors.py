"""The errors a run can stop with, each with its own exit code in `experiments.run`.

A config error is a plain `ValueError` (exit 2). The rest concern the workdir
or the run itself; each message names the path or the step, and none of the
error paths deletes an existing file.
"""
from __future__ import annotations


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not a directory, not writable, a damaged record."""

  exit_code = 3


class WorkdirBusyError(WorkdirError):
  """Another live process holds the workdir's lock; the message names its pid."""

  exit_code = 4


class ConfigChangedError(WorkdirError):
  """The workdir was made by a different config; the message lists the changed keys."""

  exit_code = 5


class CheckpointError(WorkdirError):
  """No checkpoint of the workdir restores (each failing step is named), or a
  checkpoint holds a model of another structure than the run's."""

  exit_code = 6
