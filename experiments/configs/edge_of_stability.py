"""Edge of stability: full-batch GD on an MNIST-1D subset (Cohen et al. 2021).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/edge_of_stability.py:quick \
      --workdir=runs/eos_quick
  python -m experiments.run --config=experiments/configs/edge_of_stability.py --workdir=runs/eos

Setup (Cohen et al. §3): full-batch gradient descent, square loss on one-hot
targets, a tanh MLP, one run per step size η; the sharpness λ_max(∇²L) of the
whole training-set loss is logged by 20 Lanczos steps every few steps.

Expected (measured, seed 0, MNIST-1D 1,000 training signals, 2×200 tanh, MSE):
  quick (η ∈ {0.06, 0.08, 0.10}, 3,000 GD steps each; about 2 min of CPU
  time, 5-7 min wall on a 2-core machine shared with other jobs): median
  λ_max·η/2 over the last half = 1.003 / 1.023 / 1.026. η = 0.06 shows
  progressive sharpening (λ_max 23.2 → 33.3 = 2/η, 0.9 of it at step 1,620);
  for η = 0.08 and 0.10 the initial sharpness (22.5, 18.8) already sits near
  2/η (25, 20). The loss falls to 9% / 7% / 5% of its start while rising on
  17% / 45% / 45% of the logged intervals of the last half (non-monotone).
  Seeds 1 and 2 (init seed, data seed 42 + seed): 0.968 / 1.020 / 1.026 and
  1.002 / 1.019 / 1.024; η = 0.06 reaches 0.9·2/η at step 1,900 and 1,500
  (seed 1's last half starts before it is at the edge, hence 0.968, and its
  loss rises on only 2% of the last half's intervals); after first reaching
  2/η every run's median ratio is 1.01-1.03. Seeds 3 and 4: 1.007 / 1.021 /
  1.024 and 1.012 / 1.025 / 1.026.
  full (4,000 training signals, 16,000 steps each, sharpness every 40 steps;
  11 min 3 s wall on an idle 2-core machine, OPENBLAS_NUM_THREADS=1): median
  λ_max·η/2 over the last half = 1.007 / 1.012 / 1.013 (max 1.026 / 1.025 /
  1.032; re-run at commit c6d9a32, 13 min wall, 1,323 s CPU, idle machine;
  first run 1.014 for η = 0.10, max 1.023 / 1.033). All three sharpen to 2/η
  and hover there: η = 0.10 from step ~840,
  η = 0.08 after a plateau near 23.5 from step ~3,900, η = 0.06 after the same
  plateau, climbing 23.5 → 33.3 between steps ~4,500 and ~8,900. Loss falls
  to 14% / 14% / 10% of its start while rising on 37% / 49% / 47% of the
  logged intervals of the last half. An earlier 8,000-step full run gave
  0.81 for η = 0.06 (still sharpening, 31.5 of 33.3 at the end) and 1.010 /
  1.015 for the others.
  Plot: docs/figures/edge_of_stability_full_sharpness.png.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("edge_of_stability", quick=opts.quick)
  c.data = dict(num_samples=5000, num_train=4000, data_seed=42)
  # compute_dtype "bfloat16": mixed precision, float32 master weights.
  c.model = dict(hidden_sizes=(200, 200), activation="tanh", parametrization="standard",
                 compute_dtype="float32")
  c.loss = "mse"
  c.learning_rates = (0.06, 0.08, 0.10)
  c.train = dict(num_steps=16000, log_every_steps=10, sharpness_every_steps=40, progress=False)
  c.mesh = common.mesh_config()
  c.sharpness = dict(lanczos_iters=20)
  if opts.quick:
    c.data.num_train = 1000
    c.train.num_steps = 3000
    c.train.log_every_steps = 5
    c.train.sharpness_every_steps = 20
  return c
