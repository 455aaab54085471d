"""Training: jitted step with donation, loop, metrics, orbax checkpoints, sharding."""
from jaxlab.train import io, restarts, sharding, workdir
from jaxlab.train.checkpoint import Checkpointer, load_params, load_state
from jaxlab.train.errors import CheckpointError, ConfigChangedError, WorkdirBusyError, WorkdirError
from jaxlab.train.loop import Hook, NonFiniteError, TrainResult, train
from jaxlab.train.step import TrainState, init_state, make_train_step

__all__ = ["CheckpointError", "Checkpointer", "ConfigChangedError", "Hook", "NonFiniteError",
           "TrainResult", "TrainState", "WorkdirBusyError", "WorkdirError", "init_state", "io",
           "load_params", "load_state", "make_train_step", "restarts", "sharding", "train", "workdir"]
