"""One process of the multi-process test (tests/train/multiprocess_test.py).

    python tests/train/multiprocess_worker.py SPEC.json [--coordinator_address=H:P
        --num_processes=N --process_id=I --heartbeat_timeout_seconds=S]

SPEC.json: {"runs": [{"argv": [...experiments.run arguments...],
"fault": "NAME:K" (optional), "fault_process": I (optional)} or
{"sharded_checkpoint": DIR}, ...], "report": DIR}. Each run goes through
`experiments.run.cli` with this process's distributed flags appended (one
`jax.distributed` job serves every run). `fault` sets JAXLAB_FAULT for that run
in process `fault_process` only. An audit hook records every file this process
opens for writing or renames outside checkpoints/; the list goes to
REPORT/writes_I.json when the runs end. A `sharded_checkpoint` item saves a
state with an array sharded across the processes into DIR, restores it and
checks it.
"""
import json
import os
import sys
import time

_WRITES = []


def _audit(event, args):
  if event == "open" and args[0] is not None and isinstance(args[0], str):
    mode, flags = args[1], args[2]
    writes = (mode and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR))
    if writes:
      _WRITES.append(os.path.abspath(args[0]))
  elif event == "os.rename":
    _WRITES.append(os.path.abspath(os.fsdecode(args[1])))


def _report(spec, index):
  with open(os.path.join(spec["report"], f"writes_{index}.json"), "w") as f:
    json.dump(sorted(set(_WRITES)), f)


def _sharded_checkpoint(directory):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxlab.train import Checkpointer, TrainState, sharding

  mesh = sharding.data_mesh()
  w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 7
  w_sharded = sharding.put_batch(w, mesh)  # rows split over every process's devices
  assert not w_sharded.is_fully_addressable and not w_sharded.is_fully_replicated
  rest = sharding.put_replicated({"b": np.ones(3, np.float32), "step": jnp.int32(5),
                                  "key": jax.random.key(1)}, mesh)
  state = TrainState({"w": w_sharded, "b": rest["b"]}, (), rest["step"], rest["key"])
  ckpt = Checkpointer(directory, 1)
  ckpt.save(5, state)
  ckpt.wait()
  got = ckpt.restore_verified(state)
  ckpt.close()
  for shard in got.params["w"].addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), w[shard.index])
  assert got.params["w"].sharding == w_sharded.sharding
  assert int(got.step) == 5


def main():
  spec_path, flags = sys.argv[1], sys.argv[2:]
  with open(spec_path) as f:
    spec = json.load(f)
  index = next((int(a.split("=")[1]) for a in flags if a.startswith("--process_id=")), 0)
  sys.addaudithook(_audit)
  from experiments import run

  try:
    for item in spec["runs"]:
      if "sharded_checkpoint" in item:
        run.multihost.initialize(*_dist_args(flags))
        _sharded_checkpoint(item["sharded_checkpoint"])
        print("sharded checkpoint ok", flush=True)
        continue
      os.environ.pop("JAXLAB_FAULT", None)
      if item.get("fault") and item.get("fault_process", index) == index:
        os.environ["JAXLAB_FAULT"] = item["fault"]
      _report(spec, index)  # a run may end this process (an error, a fault)
      start = time.time()
      code = run.cli(item["argv"] + flags)
      print(f"run {item['argv'][1]} took {time.time() - start:.1f} s", flush=True)
      if code:
        return code
  finally:
    _report(spec, index)
  return 0


def _dist_args(flags):
  vals = {a.split("=")[0][2:]: a.split("=", 1)[1] for a in flags}
  if "coordinator_address" not in vals:
    return None, None, None
  return vals["coordinator_address"], int(vals["num_processes"]), int(vals["process_id"])


if __name__ == "__main__":
  sys.exit(main())
