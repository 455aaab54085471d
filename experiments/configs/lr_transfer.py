"""Learning-rate transfer across width: µP vs standard parametrization (Noci et al. 2024).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/lr_transfer.py:quick \
      --workdir=runs/lr_transfer_quick
  python -m experiments.run --config=experiments/configs/lr_transfer.py --workdir=runs/lr_transfer
Re-running on the same workdir with the same config resumes: each finished
(parametrization, width) grid and sharpness run is kept in workdir/cells.

Setup: ReLU MLPs with `model.depth` hidden layers of equal width on MNIST-1D,
Adam (β = 0.9, 0.999) with a constant learning rate on a grid of powers of 2,
mini-batches of 128, same initialization and batches for every learning rate.
µP per Tensor Programs V, Table 3, with Adam's per-layer learning-rate factors
(experiments/lr_transfer.py); SP = He init and one global learning rate. The
optimum is the grid point with the lowest final training loss; the sharpness
runs use, per parametrization, the learning rate tuned at the narrowest width.

Expected (measured, seed 0). quick: depth 3, widths 32/64/128/256 (8×), 500
Adam steps, η = 2^-14 … 2^-4; 9 min 44 s wall on a 2-core machine shared with
other jobs (load average 12-14); 4 min 44 s as the repro test at lighter load:
  optimal log2 η per width — µP: -6 / -6 / -6 / -6 (shift 0 grid steps);
  SP: -7 / -7 / -8 / -9 (shift 2; ∝ 1/width from 64 on, as Adam-SP theory says).
  Best final train loss (from ≈ 2.3 at init): µP 0.81 / 0.37 / 0.17 / 0.036,
  SP 0.70 / 0.29 / 0.048 / 0.012. Margins are thin at the narrowest width: µP
  at 32 has 0.814 (2^-6) vs 0.824 (2^-7), SP 0.702 (2^-7) vs 0.711 (2^-6); an
  earlier run differing only in init round-off gave µP -7/-6/-6/-6 (shift 1).
  Adaptive sharpness (median over the last half) at the η tuned at width 32:
  µP (η = 2^-6) 232 / 325 / 302 / 361 (×1.56 over 8×, noisy, no trend after
  64), SP (η = 2^-7) 361 / 488 / 757 / 929 (×2.57, rising with width); all
  far below Adam's threshold 38/η (2,432 and 4,864).
  seed 1 (4 min 6 s): µP -7 / -6 / -6 / -6 (shift 1), SP -6 / -7 / -8 / -9
  (shift 3); sharpness µP 410 → 515 (×1.26), SP 202 → 420 (×2.08).
  full (widths 64-1024, 16×, 2,000 steps, with ntk): not measured yet. A
  started run finished the standard parametrization (13-rate grids and
  sharpness runs at all five widths) in about 50 CPU-minutes, partly beside
  other jobs; the three parametrizations need ≈ 2.5 CPU-hours on a 2-core CPU,
  most of it at width 1024 (2.1M parameters × 13 rates); it resumes by cell.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("lr_transfer", quick=opts.quick)
  c.data = dict(num_samples=5000, num_train=4000, data_seed=42)
  c.model = dict(depth=3, activation="relu")
  c.widths = (64, 128, 256, 512, 1024)
  c.parametrizations = ("standard", "ntk", "mup")
  c.optimizer = "adam"
  c.loss = "cross_entropy"
  c.lr_grid = dict(log2_learning_rates=tuple(range(-16, -3)))
  c.train = dict(num_steps=2000, batch_size=128)
  c.sharpness = dict(every_steps=100, lanczos_iters=20, num_examples=1000)
  if opts.quick:
    c.widths = (32, 64, 128, 256)
    c.parametrizations = ("standard", "mup")
    c.lr_grid.log2_learning_rates = tuple(range(-14, -3))
    c.train.num_steps = 500
    c.sharpness.every_steps = 50
    c.sharpness.lanczos_iters = 15
    c.sharpness.num_examples = 500
  return c
