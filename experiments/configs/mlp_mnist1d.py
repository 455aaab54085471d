"""MLP on MNIST-1D with any registered optimizer (the foundation study).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/mlp_mnist1d.py:quick --workdir=runs/mlp_quick
  python -m experiments.run --config=experiments/configs/mlp_mnist1d.py --workdir=runs/mlp_full

Options after the colon: `quick`; overrides: `--config.optimizer.name=lion
--config.optimizer.learning_rate=3e-4`.

Expected (measured on a 2-core CPU, Adam 1e-3 with cosine decay, 2×256 ReLU):
  quick (1,500 steps, ~25 s): test accuracy 0.61, train accuracy 0.99.
  full (8,000 steps, ~1 min): test accuracy 0.63, train loss 8e-4 (the MLP
  memorizes MNIST-1D's 4,000 training signals; the MNIST-1D paper reports
  ~0.68 for its MLP with a different budget).
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("mlp_mnist1d", quick=opts.quick)

  c.data = dict(num_samples=5000, data_seed=42)
  # compute_dtype "bfloat16": mixed precision, float32 master weights (jaxlab.models.precision).
  c.model = dict(hidden_sizes=(256, 256), parametrization="standard", normalize=False,
                 activation="relu", compute_dtype="float32")
  c.optimizer = dict(name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=0)
  c.train = dict(num_steps=8000, batch_size=128, log_every_steps=100, eval_every_steps=500,
                 checkpoint_every_steps=1000, inject_nan_at_step=-1, progress=True)
  c.mesh = common.mesh_config()
  if opts.quick:
    c.train.num_steps = 1500
    c.train.eval_every_steps = 250
    c.train.checkpoint_every_steps = 500
  return c
