"""TrAct (Petersen, Borgelt & Ermon 2024) vs the plain first-layer gradient: steps to target.

SmallCNN on sklearn digits and the MLP on MNIST-1D, SGD-momentum and Adam, at
full and reduced input contrast; TrAct and plain arms share seeds, learning
rate and batches. The paper reports 1.25–4× fewer steps to the baseline's
accuracy, most for low-contrast inputs.

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/tract.py:quick --workdir=runs/tract_quick
  python -m experiments.run --config=experiments/configs/tract.py --workdir=runs/tract_full

Options after the colon: `quick`, `tiny` (seconds; the tests).

Expected (quick, measured on a loaded 2-core CPU, 12.5 min wall for 5 seeds
with OPENBLAS_NUM_THREADS=1; speed-up = plain steps / TrAct steps to 0.98 ×
plain's final accuracy, geometric mean over seeds 0-2, [seeds 1-3, 2-4]):
  MLP on MNIST-1D, contrast 0.1: momentum ×2.10 [2.13, 1.86], Adam ×1.53
    [1.51, 1.52]; final accuracy 0.46 → 0.57 (momentum), 0.48 → 0.57 (Adam).
  MLP, full contrast: momentum ×0.96 [0.97, 1.05], Adam ×0.81 [0.88, 0.87].
  SmallCNN (BatchNorm) on digits: momentum ×1.06 / ×0.90 (contrast 1 / 0.1),
    Adam ×1.30 / ×1.45 at seeds 0-2 but ×1.16 / ×1.04 and ×1.17 / ×0.99 at
    seeds 1-3 and 2-4: no robust speed-up.
  A pilot without BatchNorm (2 seeds, 400 steps, momentum 0.1, contrast 0.1):
  plain stays at 0.13 test accuracy, TrAct reaches 0.52.
The full config has not been run.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False, tiny=False)
  c = common.base_config("tract", quick=opts.quick or opts.tiny)
  c.workloads = ("cnn_digits", "mlp_mnist1d")
  c.optimizers = ("momentum", "adam")
  # One learning rate per (workload, optimizer), the same for both methods: the
  # best of a small pilot grid for the *plain* arm at full contrast (CNN:
  # momentum 0.03/0.1, Adam 3e-3/1e-2, 400 steps; MLP: momentum 3e-3..0.1,
  # Adam 3e-4..3e-3, 1,000 steps; 1-2 seeds), as the paper keeps the baseline's.
  c.learning_rates = dict(cnn_digits=dict(momentum=0.1, adam=1e-2),
                          mlp_mnist1d=dict(momentum=0.1, adam=3e-3))
  c.momentum = 0.9
  c.contrasts = (1.0, 0.2, 0.1)
  c.lam = 0.1
  c.num_seeds = 5
  c.num_steps = 1500
  c.batch_size = 64
  c.eval_every_steps = 50
  c.target_fraction = 0.98
  c.final_window = 3
  c.smooth_window = 3
  c.data = dict(num_samples=5000, data_seed=42, digits_seed=0)
  # (8, 16): 10 ms per step on one CPU core at batch 64; (16, 32) costs 38 ms.
  c.cnn = dict(features=(8, 16), batch_norm=True, dropout_rate=0.0)
  c.mlp = dict(hidden_sizes=(256, 256))
  c.mesh = common.mesh_config()  # each run's batches (and with mesh.fsdp > 1 its state)
  if opts.quick:
    c.contrasts = (1.0, 0.1)
    c.num_seeds = 3
    c.num_steps = 600
    c.eval_every_steps = 20
  if opts.tiny:  # one compiled program per method: the conv + BatchNorm path
    c.workloads = ("cnn_digits",)
    c.optimizers = ("momentum",)
    c.contrasts = (1.0, 0.1)
    c.num_seeds = 2
    c.num_steps = 40
    c.eval_every_steps = 10
    c.final_window = 2
    c.cnn.features = (4, 8)
  return c
