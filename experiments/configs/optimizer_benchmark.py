"""AlgoPerf in miniature: every optimizer × schedule on an MLP on MNIST-1D.

Each (optimizer, schedule) pair trains at a small learning-rate sweep (base
LR × `lr_factors`) with the same step budget; the sweep's best validation
accuracy and its fastest steps-to-target are recorded. Workloads for the
performance profile are the schedules. Also: the LR-annealing loss law
(Tissue et al. 2024) fitted on constant and cosine runs predicts WSD and
multistep runs of a teacher-student stream (`law.*`), and a schedule refined
(Defazio et al. 2023) from momentum-SGD's linear run's gradient norms is
re-run and compared with linear decay.

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/optimizer_benchmark.py:quick --workdir=runs/optbench_quick
  python -m experiments.run --config=experiments/configs/optimizer_benchmark.py --workdir=runs/optbench_full

Expected (measured, seed 0, 2-core CPU). Time to target is AlgoPerf's: the
fastest trial of the learning-rate sweep that reaches the target validation
accuracy (a diverged trial never does), linear in steps between the last
evaluation below the target and the first at or above it (every curve starts
with the evaluation of the initial parameters at step 0); schedule-free AdamW
is evaluated at its averaged point. The best accuracy is the sweep's best.
  quick (momentum, adam, diffgrad, lion × 5 schedules × LR ×(1, 3, 10), 400
  steps; the law arm 4 schedules × 2 replicas × 3,000 steps; 2 min 36 s CPU,
  14 min wall on a machine at load 20): best validation accuracy 0.62–0.71
  (momentum + cosine 0.706, adam + wsd 0.667); AlgoPerf-style score at target
  0.55: diffgrad 1.00, adam 0.97, lion 0.94, momentum 0.93 (scored at
  evaluations: 1.00 / 0.96 / 0.89 / 0.89, Lion and momentum tied to one
  40-step interval). Annealing law (λ = 0.997), fitted on constant + cosine
  from step 300: WSD predicted to 0.22% mean relative error (2.5% of the
  reducible loss L − floor), multistep to 0.19% (2.3%); cooldown drop
  predicted / measured 1.01 (WSD) and 1.05 (multistep); over seeds 0–4 the
  errors are 0.13–0.23% and the drop ratios 0.90–1.02 (WSD), 1.03–1.11
  (multistep). The refined schedule from momentum's linear run: 0.622 vs
  linear 0.632. Adam's sweep picks ×3 and momentum's ×1-×3, but diffGrad's and
  Lion's still pick their largest LR (×10) at this budget.
  full (13 optimizers × 5 schedules × LR ×(0.3, 1, 3, 10, 30), 3,000 steps,
  330 runs; 32 min wall on an idle 2-core machine with OPENBLAS_NUM_THREADS=1
  for M-FAC's Cholesky: 25.5 min for the first four factors, 7 min for ×30,
  most of it M-FAC), measured before time to target was interpolated, before
  schedule-free AdamW was evaluated at its averaged point and with the old
  law arm (not re-run since): best validation accuracy 0.66–0.76 (SGD + REX
  0.763, SGD + WSD, momentum + cosine and LARS + linear 0.735, DCT low-rank +
  cosine 0.718, LAMB + WSD 0.712; Adam 0.67–0.68, schedule-free AdamW
  0.66–0.67 at its training point). Every sweep's best factor is inside the
  sweep (×1 to ×10; none chose ×30); LAMB diverged at ×3 and above on most
  schedules. AlgoPerf-style score at target 0.67 (at evaluations): sgd 0.96,
  dct_lowrank 0.94, momentum 0.86, nadamw 0.69, hypergradient 0.67, diffgrad
  0.54, adam 0.31, adamw 0.29, mfac 0.28, lars 0.13, lion 0.10, lamb 0.08,
  schedule_free_adamw 0.00 (its best is 0.669). The old law arm fitted Adam's
  MNIST-1D training loss, which the MLP memorises (→ 1e-3 by step 3,000): the
  law predicted WSD to 37% with L0 at its bound. Refined schedule from
  momentum's linear run: best validation accuracy 0.661 vs linear 0.680
  (final train loss 0.0007 vs 0.0021). An earlier full run with ×(0.3, 1, 3)
  and target 0.55 met the target at the first evaluation for most pairs
  (score 1.00 for 8 of 13) and chose the top of most sweeps. Plots:
  docs/figures/optimizer_benchmark_full_*.png,
  docs/figures/optimizer_benchmark_quick_annealing_law.png.
"""
from experiments.configs import common

# Centre of each optimizer's sweep (× lr_factors). A first quick run with the
# usual defaults (Adam 1e-3, momentum 0.03, Lion 1e-4) chose the top of every
# sweep, so the centres sit one step higher.
BASE_LRS = dict(sgd=0.3, momentum=0.1, adam=3e-3, adamw=3e-3, nadamw=3e-3, lamb=1e-2,
                lars=1.0, lion=3e-4, diffgrad=3e-3, dct_lowrank=3e-3, mfac=1e-3,
                hypergradient=3e-3, schedule_free_adamw=3e-3)


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("optimizer_benchmark", quick=opts.quick)
  c.data = dict(num_samples=5000, data_seed=42)
  # compute_dtype "bfloat16": mixed precision, float32 master weights (the sweep's model).
  c.model = dict(hidden_sizes=(128, 128), compute_dtype="float32")
  c.optimizers = tuple(BASE_LRS)
  c.base_lrs = dict(BASE_LRS)
  # A first full run with ×(0.3, 1, 3) chose the top of most sweeps and met the
  # target 0.55 at the first evaluation; with ×10 added, SGD, Lion, diffGrad and
  # schedule-free AdamW still chose the top. The sweep now reaches ×30, and the
  # target is about the median best accuracy of the first run.
  c.lr_factors = (0.3, 1.0, 3.0, 10.0, 30.0)
  c.schedules = ("constant", "cosine", "linear", "wsd", "rex")
  c.wsd_decay_fraction = 0.2
  c.num_steps = 3000
  c.batch_size = 128
  c.eval_every_steps = 150
  c.target_accuracy = 0.67
  # The LR-annealing law (Tissue et al. 2024) on a stream of fresh teacher-labelled
  # samples (see experiments/optimizer_benchmark.py:teacher_task): the loss tends
  # to the teacher's entropy, not to 0. decay (the paper's lambda) is not
  # identified by the constant + cosine fit (its objective falls as lambda falls);
  # it was set once from calibration seeds 100-102, not the asserted seeds 0-4.
  c.law = dict(optimizer="adam", learning_rate=3e-3, num_steps=3000, batch_size=128,
               eval_every_steps=10, input_dim=32, num_classes=10, teacher_hidden_sizes=(64, 64),
               teacher_temperature=2.0, hidden_sizes=(128, 128), val_samples=8192, replicas=2,
               decay=0.997, wsd_decay_fraction=0.2, fit_start_fraction=0.1,
               drop_window_fraction=0.05)
  c.refine_optimizer = "momentum"
  c.progress = False
  c.mesh = common.mesh_config()  # every run (sweep, law, refinement) trains on this mesh
  if opts.quick:
    c.optimizers = ("momentum", "adam", "diffgrad", "lion")
    c.num_steps = 400
    c.eval_every_steps = 40
    # A 400-step budget prefers larger steps: with ×(0.3, 1, 3) every Adam-type
    # sweep chose its top value; the target 0.4 was met by all at step 80.
    c.lr_factors = (1.0, 3.0, 10.0)
    c.target_accuracy = 0.55
  return c
