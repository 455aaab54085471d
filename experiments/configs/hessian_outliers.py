"""Hessian bulk and outliers of a trained MLP (Sagun et al. 2018).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/hessian_outliers.py:quick \
      --workdir=runs/outliers_quick
  python -m experiments.run --config=experiments/configs/hessian_outliers.py --workdir=runs/outliers

Setup (Sagun et al. §3): a ReLU MLP trained with SGD on a Gaussian mixture
with C ∈ {2, 5, 10} classes and on MNIST-1D (C = 10); after training, the top
Hessian eigenvalues of the training loss (Lanczos) and the SLQ density. An
outlier is an eigenvalue above the largest log-ratio gap of the top spectrum
(jaxlab.spectral.studies.count_outliers). The width sweep (C = 10 mixture)
reports the bulk edge and the outliers per width.

Expected (measured, seed 0; quick: 2×64 ReLU MLP, 1,000 training points, SGD
0.05 for 1,000 steps, Hessian on the 1,000 training points, 50 Lanczos steps;
2 min of CPU time, 6 min wall on a 2-core machine shared with other jobs):
  outliers (gap rule): mixture C = 2 → 1, C = 5 → 4, C = 10 → 9 (C − 1, as
  Papyan 2019 predicts for cross-entropy: the softmax removes one class-mean
  direction), MNIST-1D (C = 10) → 8 (train accuracy 0.81; gap 1.6, less clean).
  Width sweep (C = 10, widths 32/64/128/256): 9 outliers at every width; the
  bulk edge falls 0.171 → 0.145 → 0.120 → 0.104 (×0.61 over 8×) while the
  mean outlier stays 0.73 / 0.66 / 0.74 / 0.77 (×1.05).
  Seeds 1 and 2 (init and batch seed, mixture data seed = seed, MNIST-1D data
  seed 42 + seed; about 80 s of CPU each): mixtures 1 / 4 / 9 outliers again
  (gaps ×4.8 / ×2.5 / ×2.3 and ×4.9 / ×1.9 / ×2.5), 9 at every width, bulk
  edge ×0.64 and ×0.56, mean outlier ×1.04 and ×0.84; MNIST-1D 10 and 1
  (gaps ×1.36, ×1.47): its count is not a stable quantity at this scale.
  Seeds 3 and 4: mixtures 1 / 4 / 9 again, 9 at every width, bulk edge ×0.73
  and ×0.55, mean outlier ×1.04 and ×0.87; MNIST-1D 8 and 8.
  full (2×256, 4,000 points, Hessian on all 4,000, 80 Lanczos steps, 3,000
  SGD steps, widths 64-512; 3 min 8 s wall, 4 min 50 s of CPU time, beside
  another job): mixture C = 2 → 1, C = 5 → 4, C = 10 → 9 outliers (C − 1,
  gaps ×9.7 / ×5.3 / ×4.8, train accuracy 1.00); MNIST-1D → 5 (train accuracy
  0.995, gap only ×1.46: no clean class structure in its top spectrum). Width
  sweep (C = 10, 64/128/256/512): 9 outliers at every width; bulk edge 0.113 →
  0.088 → 0.082 → 0.070 (×0.61 over 8×), mean outlier 0.58 / 0.60 / 0.66 /
  0.61 (×1.04). Plots: docs/figures/hessian_outliers_full_*.png.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("hessian_outliers", quick=opts.quick)
  c.mixture = dict(num_classes=(2, 5, 10), dim=40, num_train=4000, separation=4.0, data_seed=0)
  c.mnist1d = dict(enabled=True, num_samples=5000, num_train=4000, data_seed=42)
  # compute_dtype "bfloat16": mixed precision, float32 master weights.
  c.model = dict(hidden_sizes=(256, 256), activation="relu", parametrization="standard",
                 compute_dtype="float32")
  c.widths = (64, 128, 256, 512)
  c.optimizer = dict(name="sgd", learning_rate=0.05, schedule="constant", warmup_steps=0)
  c.train = dict(num_steps=3000, batch_size=128, log_every_steps=100, progress=False)
  c.mesh = common.mesh_config()
  c.spectrum = dict(lanczos_iters=80, top_k=30, hessian_examples=4000, density_iters=60,
                    density_draws=2)
  if opts.quick:
    c.mixture.num_train = 1000
    c.mnist1d.num_train = 1000
    c.mnist1d.num_samples = 1250
    c.model.hidden_sizes = (64, 64)
    c.widths = (32, 64, 128, 256)
    c.train.num_steps = 1000
    c.spectrum.lanczos_iters = 50
    c.spectrum.top_k = 24
    c.spectrum.hessian_examples = 1000
    c.spectrum.density_iters = 40
    c.spectrum.density_draws = 1
  return c
