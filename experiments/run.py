"""The one launcher for every jaxlab study.

    python -m experiments.run --config=experiments/configs/NAME.py[:arg] \
        --workdir=DIR [--config.key=value ...]

The config's `study` key names the module `experiments/<study>.py`, whose
`main(config, workdir)` runs the study and returns its summary. Overrides are
checked against the config before anything is imported or compiled: an
unknown key, a value of the wrong type, or a value the study's `validate`
rejects raises `ValueError` naming the key, the value and what is allowed.
Re-running on the same workdir resumes from its last checkpoint; a workdir
made by a different config is refused with the changed keys listed (continue
it anyway with --allow_config_change). Without --workdir the run writes to
runs/NAME[_ARG]. Every expected failure prints one `error: …` line and exits
with its own code (see `cli`).

Several processes (one per host, or several on one machine) run one study
when each is started with the same arguments plus `--coordinator_address`
(process 0's HOST:PORT), `--num_processes` and its own `--process_id`, the
arguments of `jax.distributed.initialize`; with none of them the run is one
process, unless a launcher that started several is detected (SLURM, Open MPI,
a Cloud TPU slice), where JAX reads the job from the environment. See
`jaxlab.train.multihost` for who writes what, how the workdir is locked and
how a failure stops every process; `--heartbeat_timeout_seconds` bounds how
long the others wait for a process that died.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import re
import sys
import traceback
from typing import Any, Mapping, Sequence

import ml_collections

from jaxlab.train import checks, host_memory, multihost
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.errors import WorkdirError

# glibc's malloc keeps freed memory (jaxlab.train.host_memory): ~20% less wall time on a
# CPU, same results. Here, at import, because it must come before JAX's backend starts.
host_memory.retain_freed_memory()

_HERE = os.path.dirname(os.path.abspath(__file__))
_NOT_STUDIES = {"run", "__init__"}


def studies() -> tuple[str, ...]:
  """Names of the studies: the modules in experiments/ that define `main`."""
  names = []
  for fname in sorted(os.listdir(_HERE)):
    stem, ext = os.path.splitext(fname)
    if ext == ".py" and stem not in _NOT_STUDIES:
      names.append(stem)
  return tuple(names)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/NAME.py[:arg]` (or just `NAME[:arg]`) and calls get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py"):
    path = os.path.join(_HERE, "configs", path + ".py")
  if not os.path.exists(path):
    configs = sorted(f[:-3] for f in os.listdir(os.path.join(_HERE, "configs"))
                     if f.endswith(".py") and f not in ("__init__.py", "common.py"))
    raise ValueError(f"--config: no config file {path!r}; available configs: {configs}")
  name = "jaxlab_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"--config: config file {path!r} defines no get_config(arg=None); allowed: "
                     "a file like experiments/configs/mlp_mnist1d.py whose get_config returns "
                     "a ConfigDict")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ValueError(f"--config: get_config in {path!r} returned a {type(config).__name__}; "
                     "allowed: an ml_collections.ConfigDict")
  if "study" not in config:
    raise ValueError(f"config {path!r} has no 'study' key")
  return config


def _config_file(study: str) -> str:
  """The config file that goes with a study (relative to the repository root)."""
  return f"experiments/configs/{study}.py"


_NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
               "-infinity"}


def _parse_value(key: str, text: str, old: Any) -> Any:
  if isinstance(old, str) or old is None:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
    return value if old is None else text
  if isinstance(old, float) and text.strip().lower() in _NON_FINITE:
    return float(text)  # parsed, so that the finiteness check names it
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(
        f"config key {key!r}: cannot parse {text!r}; expected a "
        f"{type(old).__name__} like {old!r}") from None
  return value


def _check_elements(key: str, value: tuple, old: tuple) -> tuple:
  """Tuple elements must have the types of the default's elements (ints stand in for floats).

  An empty default accepts anything.
  """
  if not old:
    return value
  allowed = {type(v) for v in old}
  out = []
  for i, v in enumerate(value):
    if type(v) not in allowed:
      if float in allowed and type(v) is int:
        v = float(v) if int not in allowed else v
      else:
        names = " or ".join(sorted(t.__name__ for t in allowed))
        raise ValueError(
            f"config key {key!r}: element {i} of {value!r} is {v!r} ({type(v).__name__}); "
            f"allowed: a tuple of {names} like the default {old!r}")
    out.append(v)
  return tuple(out)


def _check_study(old: str, value: Any) -> None:
  """A config's `study` is fixed: its other keys are the ones that study reads."""
  names = studies()
  if value in names:
    raise ValueError(
        f"config key 'study': {value!r} cannot replace {old!r} by an override (the config's "
        f"other keys are {old}'s, not {value}'s); allowed: {old!r}; to run {value}, use "
        f"--config={_config_file(value)}")
  raise ValueError(f"config key 'study': unknown study {value!r}; allowed: {old!r} (this config's "
                   f"study; the studies are {list(names)}, each with its config file "
                   f"{_config_file('NAME')})")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any] | Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `{"a.b": value}` or `["a.b=value", ...]` to a copy of `config`.

  Raises ValueError for an unknown key (listing the allowed keys), a value
  whose type differs from the default's (ints are accepted for floats), a
  tuple element whose type is not among the default tuple's element types, or
  a different `study` (each study has its own config file).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if not isinstance(overrides, Mapping):
    pairs = {}
    for item in overrides:
      key, sep, text = item.partition("=")
      if not sep:
        raise ValueError(f"override {item!r} must look like key=value")
      pairs[key.removeprefix("--config.").removeprefix("config.")] = text
    overrides = {k: (v, True) for k, v in pairs.items()}
  else:
    overrides = {k: (v, False) for k, v in overrides.items()}
  allowed = sorted(flat_keys(config))
  for key, (value, from_text) in overrides.items():
    if key not in allowed:
      raise ValueError(f"unknown config key {key!r}; allowed keys: {allowed}")
    parent, _, leaf = key.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
      node = node[part]
    old = node[leaf]
    if from_text:
      value = _parse_value(key, value, old)
    if old is not None:
      if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
      if isinstance(old, list) and isinstance(value, tuple):
        value = list(value)
      if type(value) is not type(old):
        hint = " (a one-element tuple is written (x,))" if isinstance(old, tuple) else ""
        raise ValueError(
            f"config key {key!r}: got {value!r} ({type(value).__name__}), "
            f"expected {type(old).__name__} (default {old!r}){hint}")
      if isinstance(old, (tuple, list)):
        value = type(old)(_check_elements(key, tuple(value), tuple(old)))
      if key == "study" and value != old:
        _check_study(old, value)
    with node.unlocked():
      node[leaf] = value
  return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += flat_keys(v, prefix + k + ".")
    else:
      keys.append(prefix + k)
  return keys


def study_module(config: ml_collections.ConfigDict):
  names = studies()
  if config.study not in names:
    raise ValueError(f"config key 'study': unknown study {config.study!r}; allowed: {list(names)}")
  return importlib.import_module(f"experiments.{config.study}")


def _missing_key_error(config: ml_collections.ConfigDict, error: Exception) -> ValueError | None:
  """A ValueError naming the keys the study reads but the config lacks (None: not that)."""
  cause = error.args[0] if isinstance(error, AttributeError) and error.args else error
  if not isinstance(cause, KeyError) or not cause.args:
    return None
  quoted = re.search(r"'([^']+)'", str(cause.args[0]))
  name = quoted.group(1) if quoted else str(cause.args[0])
  have = set(flat_keys(config))
  if os.path.exists(os.path.join(_HERE, "configs", f"{config.study}.py")):
    # The study's own config file has every key it reads: report what this one lacks.
    missing = sorted(set(flat_keys(load_config(config.study))) - have)
    if not missing:
      return None  # not a missing key: some other lookup failed
  else:
    missing = []
    if name in have or any(k.startswith(name + ".") for k in have):
      return None
  name = next((k for k in missing if k == name or k.endswith("." + name)), name)
  also = f" (keys of {_config_file(config.study)} missing here: {missing})" if missing else ""
  return ValueError(
      f"config key {name!r}: missing; study {config.study!r} reads it{also}; allowed: a config "
      f"with the study's keys, e.g. --config={_config_file(config.study)}")


def _study_checks(module, config: ml_collections.ConfigDict) -> None:
  """The study's `validate`, then the parameter-memory estimate from its `param_shapes`."""
  try:
    if hasattr(module, "validate"):
      module.validate(config)
    shapes = module.param_shapes(config) if hasattr(module, "param_shapes") else None
  except (AttributeError, KeyError) as e:
    error = _missing_key_error(config, e)
    if error is None:
      raise
    raise error from e
  if shapes:
    checks.param_memory(config, shapes)


def prepare(spec: str | ml_collections.ConfigDict,
            overrides: Mapping[str, Any] | Sequence[str] = ()
            ) -> tuple[ml_collections.ConfigDict, Any]:
  """Every check of a run, writing nothing: returns (locked config, study module).

  Loads the config (`spec` is `path/NAME.py[:arg]` or a ConfigDict), applies the
  overrides (known keys, the default's type, tuple element types, the same
  study), checks every leaf (floats finite, seeds in checks.SEED_RANGE), runs
  the study's `validate` (a key it reads but the config lacks is a ValueError
  naming it), and, if the study has `param_shapes(config)`, refuses a model
  whose parameters, gradients and optimizer state would not fit in memory
  (`checks.param_memory`; shapes from `jax.eval_shape`, so nothing is
  allocated or compiled). Raises ValueError naming the key, the value and
  what is allowed.
  """
  config = load_config(spec) if isinstance(spec, str) else spec
  if "study" not in config:
    raise ValueError("config key 'study': missing; allowed: a config with a 'study' key naming "
                     f"one of {list(studies())}")
  config = apply_overrides(config, overrides)
  checks.config_leaves(config)
  module = study_module(config)
  _study_checks(module, config)
  config.lock()
  return config, module


def default_workdir(spec: str) -> str:
  """`runs/NAME[_ARG]` for a config spec `path/NAME.py[:ARG]` (commas become `_`)."""
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + re.sub(r"[^A-Za-z0-9.=+-]+", "_", arg).strip("_")
  return os.path.join("runs", name)


def run(spec: str | ml_collections.ConfigDict, workdir: str,
        overrides: Mapping[str, Any] | Sequence[str] = (), *,
        allow_config_change: bool = False) -> dict:
  """Runs a study: checks the config, locks the workdir, checks it against the
  workdir's config.json, calls the study's main.

  Nothing is written before every config check has passed. A workdir made by a
  different config raises ConfigChangedError listing the changed keys, unless
  `allow_config_change` (the run then continues from its last checkpoint under
  the new config, and the change is recorded in config_changes.jsonl).
  In a multi-process run every process calls it; the workdir checks are agreed
  (one process's failure stops all) and only process 0 writes.
  """
  config, module = prepare(spec, overrides)
  with workdir_lib.lock(workdir):
    error = None
    try:
      workdir_lib.check_layout(workdir)
      workdir_lib.check_config(workdir, config, allow_change=allow_config_change)
    except (ValueError, WorkdirError) as e:
      error = e
    multihost.agree(error)  # one process: raises `error`; several: all raise, or none
    return module.main(config, workdir)


def _epilog() -> str:
  configs = sorted(f[:-3] for f in os.listdir(os.path.join(_HERE, "configs"))
                   if f.endswith(".py") and f not in ("__init__.py", "common.py"))
  return ("configs (experiments/configs/NAME.py; their keys: see each file, or pass an unknown "
          f"--config.KEY to list them): {', '.join(configs)}. Exit codes: 2 bad config, "
          "3 unusable workdir, 4 workdir in use, 5 workdir made by another config, "
          "6 no checkpoint restores, 7 non-finite loss. Several processes: start each with "
          "--coordinator_address, --num_processes and its --process_id (README, 'Scaling "
          "out').")


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=_epilog())
  parser.add_argument("--config", required=True, help="experiments/configs/NAME.py[:arg]")
  parser.add_argument("--workdir", default=None,
                      help="where the run writes (default: runs/NAME[_ARG])")
  parser.add_argument("--allow_config_change", action="store_true",
                      help="continue a workdir made by a different config from its last "
                           "checkpoint (recorded in config_changes.jsonl)")
  parser.add_argument("--coordinator_address", default=None,
                      help="several processes: HOST:PORT of process 0 (all three flags, or none)")
  parser.add_argument("--num_processes", default=None, type=int,
                      help="several processes: how many take part")
  parser.add_argument("--process_id", default=None, type=int,
                      help="several processes: this one's index, 0 .. num_processes - 1")
  parser.add_argument("--heartbeat_timeout_seconds", default=None, type=int,
                      help="several processes: a process that stops answering for this long "
                           "ends the others (default: JAX's, 100)")
  args, rest = parser.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    raise ValueError(f"unknown arguments {bad}; allowed: --config, --workdir, "
                     "--allow_config_change, --coordinator_address, --num_processes, "
                     "--process_id, --heartbeat_timeout_seconds, --config.KEY=VALUE")
  multihost.check_args(args.coordinator_address, args.num_processes, args.process_id,
                       args.heartbeat_timeout_seconds)
  workdir = args.workdir or default_workdir(args.config)
  multihost.initialize(args.coordinator_address, args.num_processes, args.process_id,
                       heartbeat_timeout_seconds=args.heartbeat_timeout_seconds)
  summary = run(args.config, workdir, rest, allow_config_change=args.allow_config_change)
  if not multihost.is_primary():
    return summary
  print(f"summary ({os.path.join(workdir, 'summary.json')}):")
  for k, v in (summary or {}).items():
    if not isinstance(v, (dict, list)):
      print(f"  {k}: {v}")
  return summary


def cli(argv: Sequence[str]) -> int:
  """`main` with every expected failure as one `error: …` line and its exit code.

  A process of a multi-process run that fails exits after a bounded shutdown
  (`multihost.exit_after_error`), also on an unexpected error (exit code 1,
  with its traceback), so that it never waits forever for its peers.
  """
  from jaxlab.train import NonFiniteError

  try:
    main(argv)
  except ValueError as e:
    code, message = 2, str(e)
  except (WorkdirError, NonFiniteError) as e:
    code, message = e.exit_code, str(e)
  except Exception:
    if multihost.process_count() == 1:
      raise
    traceback.print_exc()
    code, message = 1, None
  else:
    return 0
  if multihost.process_count() == 1:
    print(f"error: {message}", file=sys.stderr)
    return code
  if message is not None:
    print(f"error: (process {multihost.process_index()}) {message}", file=sys.stderr)
  multihost.exit_after_error(code)
  return code  # not reached


if __name__ == "__main__":
  sys.exit(cli(sys.argv[1:]))
