"""Exact learning of permutations by ensembles of wide two-layer ReLU nets.

Command:
    python -m experiments.run --config=experiments/configs/ntk_permutations.py:quick \
        --workdir=/tmp/ntk_permutations

Runtime: quick ~2 min of CPU time (measured: 1m48s user, 7 min wall on a
2-core machine shared with other jobs; infinite-width arm k = 3..12 with 1000
simulated ensembles per k <= 8 and 150 above, finite-width arm k = 4, widths
64..1024, 512 nets each); full (no `:quick`) ~20-30 min on a 2-core CPU.

Expected result (summary.json, quick, seed 0): with the sub-Gaussian
union-bound ensemble size M*(k) (13 at k=3 ... 49 at k=8 ... 81 at k=12) the
GP-sampled ensemble recovers all 2^k - 1 outputs in >= 99.7% of trials for
every k <= 8, while a single net (M = 1) does so in <= 39% (k=3) and 0% for
k >= 7. M needed for 95% success on all inputs (Monte Carlo): 7 (k=3) -> 38
(k=12), fitted exponent ~1.26; hardest single input: exponent ~1.16; the
bound's exponent ~1.29 (k log k fits better than k^2 over k = 3..12).
Finite width (k=4): mean error vs the GP 0.12 / 0.080 / 0.048 (x the GP std)
at widths 64 / 256 / 1024; success-vs-M curves match the GP's.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("ntk_permutations", quick=opts.quick)
  # The two-layer net f(x) = s_a/sqrt(n) relu(s_w x W/sqrt(d) + s_b b) A (NTK parametrization).
  c.weight_std = 1.0
  c.bias_std = 1.0
  c.output_std = 1.0
  # Infinite-width arm: ensembles sampled from the limiting GP.
  c.ks = tuple(range(3, 13))
  c.n_trials = 1000 if opts.quick else 4000  # simulated ensembles per k <= exact_max_k
  c.n_trials_large = 150 if opts.quick else 2000  # per k > exact_max_k (cost ~ 4^k)
  c.delta = 0.05
  c.ensemble_sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256)
  c.exact_max_k = 8  # the acceptance check (paper's M recovers everything) runs for k <= this
  # Finite-width arm: real nets trained by full-batch GD, vmapped over members.
  c.finite_ks = (4,) if opts.quick else (4, 6)
  c.widths = (64, 256, 1024) if opts.quick else (64, 256, 1024, 4096)
  c.finite_members = 512 if opts.quick else 2048
  c.lr_fraction = 1.0  # eta = lr_fraction / lambda_max(Theta(X, X))
  c.gd_tolerance = 1e-4  # steps so every residual mode shrinks by this factor
  c.member_chunk = 512
  # The finite-width members are split over the devices (jaxlab.train.mesh);
  # mesh.fsdp must stay 1: a member is never split.
  c.mesh = common.mesh_config()
  return c
