"""Batch size, the mini-batch Hessian's sharpness and the maximal learning rate (Granziol et al. 2022).

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/batch_hessian.py:quick \
      --workdir=runs/batch_hessian_quick
  python -m experiments.run --config=experiments/configs/batch_hessian.py --workdir=runs/batch_hessian

Setup: a ReLU MLP trained with SGD on MNIST-1D; at its parameters, λ_max of
the Hessian of `draws` random batches for each B (Lanczos) and of the whole
training set; fit of λ_max(B) = λ + Pσ²(1/B − 1/N)/λ (2√(Pσ²(1/B − 1/N))
below the BBP threshold); predicted maximal rates (SGD 2/λ_max(B), Adam from
the preconditioned batch sharpness); SGD and Adam trained from the same point
over a learning-rate grid for each B in `stability.batch_sizes`, the measured
largest stable rate and its exponent in B; an SGD arm from scratch with the
SLQ on-the-fly learning-rate hook beside the same run at a fixed rate.

Expected (measured, seed 0): see the README's study table; quick numbers are
filled in below when measured.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("batch_hessian", quick=opts.quick)
  c.data = dict(num_samples=5000, num_train=4000, data_seed=42)
  c.model = dict(hidden_sizes=(128, 128), activation="relu")
  c.pretrain = dict(learning_rate=0.05, batch_size=64, num_steps=2000)
  c.sharpness = dict(batch_sizes=(2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), draws=8,
                     grad_draws=32, lanczos_iters=30, full_batch_size=500)
  c.adam = dict(b1=0.9, b2=0.999, eps=1e-8)
  c.stability = dict(batch_sizes=(2, 4, 8, 16, 32, 64), num_steps=400, eval_every_steps=20,
                     points_per_octave=4, lr_range_sgd=(1e-3, 20.0), lr_range_adam=(1e-5, 0.3),
                     factors=(0.5, 2.0), divergence_fraction=0.5,
                     adam_warmup_steps=100)
  c.onthefly = dict(enabled=True, every_steps=50, lanczos_iters=20, num_batches=2, fraction=0.5)
  if opts.quick:
    c.data.num_samples = 1250
    c.data.num_train = 1000
    c.model.hidden_sizes = (64, 64)
    c.pretrain.num_steps = 500
    c.sharpness.batch_sizes = (2, 4, 8, 16, 32, 64, 128, 256, 512)
    c.sharpness.draws = 4
    c.sharpness.grad_draws = 16
    c.sharpness.lanczos_iters = 20
    c.sharpness.full_batch_size = 250
    c.stability.batch_sizes = (2, 4, 8, 16, 32)
    c.stability.num_steps = 200
    c.stability.points_per_octave = 3
    c.onthefly.every_steps = 25
    c.onthefly.num_batches = 1
  return c
