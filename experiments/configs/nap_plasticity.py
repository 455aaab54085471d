"""NaP keeps plasticity: a sequence of random-label memorization tasks on MNIST-1D.

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/nap_plasticity.py:quick --workdir=runs/nap_plasticity_quick
  python -m experiments.run --config=experiments/configs/nap_plasticity.py --workdir=runs/nap_plasticity

Options after the colon: `quick`; overrides such as `--config.tasks.kind=permute_inputs`
or `--config.arms="('plain', 'nap')"`.

A 2×256 ReLU MLP learns 1,000 MNIST-1D inputs whose labels are re-drawn at
random at every task boundary (Lyle et al. 2024, arXiv:2407.01800: the
iterated random-label memorization benchmark), for a fixed number of Adam
steps per task, never reset. Arms: plain MLP; + LayerNorm before each ReLU;
+ LayerNorm + NaP projection; plain MLP + decoupled weight decay (AdamW). The
long-horizon arms repeat norm and nap with a 10× learning rate and more tasks.

Runtime (quick: 10 tasks × 1,500 steps, 4 arms + 2 long-horizon arms): 167 s of
CPU in all (user + sys; 30-70 s per arm), 5 min 22 s wall on a 2-core machine
shared with other jobs (load ≈ 20, OPENBLAS_NUM_THREADS=1, niced). Full (20
tasks; long horizon 30 tasks): about twice that.

Expected (quick, measured, seed 0, re-run at commit c6d9a32; end-of-task train
accuracy per task; η/‖θ‖² of the hidden layers relative to its initial value):
  plain  1.00 1.00 1.00 1.00 0.97 0.54 0.27 0.15 0.16 0.14   (drop 86.5 points;
         η/‖θ‖² falls to 0.26×; ‖θ‖ ×2.07; 49% dead ReLUs)
  norm   1.00 × 10   (‖θ‖ ×1.54, dense_0 ×1.13, dense_1 ×1.70; η/‖θ‖² falls
         task by task 0.98 → 0.56×; 0 dead)
  nap    1.00 × 10   (projected layers on their sphere: η/‖θ‖² constant to 2e-7;
         0 dead; LayerNorm scale/offset free, readout free: ‖θ‖ ×1.24)
  wd     1.00 1.00 1.00 1.00 1.00 0.89 0.51 0.22 0.17 0.23   (AdamW λ = 0.1 does
         not prevent it)
  long horizon, η = 1e-2: norm keeps every task ≥ 0.99 for 9 tasks but slows
  down (steps to 90% of a task, read at the evaluations every 250 steps, a
  task that never gets there counted as 1,500; mean of first vs last three
  tasks: 250 → 1,000) and task 10 ends at 0.13, as dense_1 grows ×20 and
  η/‖θ‖² falls to 0.02×; nap at the same constant η collapses to chance
  (0.11-0.13) from task 5 with 71% dead ReLUs (its LayerNorm offsets are free):
  at this η the implicit decay is doing necessary work, which NaP must replace
  with an explicit schedule (see nap_stationary).
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("nap_plasticity", quick=opts.quick)

  c.data = dict(num_samples=5000, num_train=1000, data_seed=42)
  c.tasks = dict(kind="random_labels", num_tasks=20, steps_per_task=1500)
  # compute_dtype "bfloat16": mixed precision, float32 master weights.
  c.model = dict(hidden_sizes=(256, 256), compute_dtype="float32")
  c.optimizer = dict(name="adam", learning_rate=1e-3, weight_decay=0.1)
  c.arms = ("plain", "norm", "nap", "wd")
  c.long_horizon = dict(arms=("norm", "nap"), num_tasks=30, learning_rate=1e-2)
  c.diagnostics = dict(elr_power=2.0)
  c.train = dict(batch_size=128, log_every_steps=100, eval_every_steps=100,
                 checkpoint_every_steps=1500, progress=False)
  c.mesh = common.mesh_config()
  if opts.quick:
    c.tasks.num_tasks = 10
    c.long_horizon.num_tasks = 10
    c.train.log_every_steps = 250
    c.train.eval_every_steps = 250
    c.train.checkpoint_every_steps = 0
  return c
