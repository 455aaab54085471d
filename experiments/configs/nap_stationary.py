"""NaP on a stationary task: the explicit schedule replaces the implicit decay (MNIST-1D).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/nap_stationary.py:quick --workdir=runs/nap_stationary_quick
  python -m experiments.run --config=experiments/configs/nap_stationary.py --workdir=runs/nap_stationary

A 2×256 ReLU MLP with LayerNorm before each ReLU is trained on MNIST-1D with
Adam at a constant learning rate (the baseline: its hidden-layer norms grow,
so its effective learning rate decays on its own). The same network under NaP
(weights projected to their initial norm after every step) is trained (a) at
the same constant rate and (b) with the explicit schedule
η_t = η·(ρ/‖θ_t‖)^p rebuilt from the baseline's logged norms
(`jaxlab.nap.implicit_schedule`, p = 1 for Adam), as in Lyle et al. 2024
(arXiv:2407.01800).

Runtime (quick, 2,000 steps × 3 arms): ≈ 20 s of CPU per arm, about 1 min
on an idle 2-core CPU (measured 2.5 min on a shared machine under load ≈ 13).

Expected (quick, measured, seed 0, Adam 1e-3): test accuracy baseline 0.635,
nap (constant LR) 0.641, nap_schedule 0.635 (0.0 points from the baseline);
the baseline's hidden norms grow only 1-5% here, so its implicit decay is
small. At η = 1e-2 (`--config.optimizer.learning_rate=0.01`) the norms grow
×1.5 / ×2.4 and the runs differ more: baseline 0.703, nap 0.714 (but noisy,
train accuracy 0.96), nap_schedule 0.686 (global, p = 1), 0.686 (per-group,
p = 2), 0.660 (per-group, p = 1), single seed.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("nap_stationary", quick=opts.quick)

  c.data = dict(num_samples=5000, data_seed=42)
  c.model = dict(hidden_sizes=(256, 256))
  c.optimizer = dict(name="adam", learning_rate=1e-2)
  c.arms = ("baseline", "nap", "nap_schedule")
  c.schedule = dict(power=1.0, per_group=False)
  c.num_seeds = 5
  c.train = dict(num_steps=6000, batch_size=128, log_every_steps=100, eval_every_steps=100,
                 checkpoint_every_steps=1000, progress=False)
  if opts.quick:
    c.num_seeds = 3
    c.train.num_steps = 2000
    c.train.checkpoint_every_steps = 0
  return c
