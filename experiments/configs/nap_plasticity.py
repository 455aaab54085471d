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

Runtime (quick: 10 tasks × 1,500 steps, 4 arms + 2 long-horizon arms): 280 s of
CPU in all (≈ 45 s per arm), about 5 min on an idle 2-core CPU; measured 11.8
min wall on a 2-core machine shared with ~5 agents (load ≈ 14). Full (20
tasks; long horizon 30 tasks): about twice that.

Expected (quick, measured, seed 0; end-of-task train accuracy per task;
η/‖θ‖² of the hidden layers relative to its initial value):
  plain  1.00 1.00 1.00 1.00 0.95 0.45 0.25 0.17 0.15 0.12   (drop 88 points;
         η/‖θ‖² falls to 0.27×; ‖θ‖ ×2.0; 49% dead ReLUs)
  norm   1.00 × 10   (‖θ‖ ×1.55, dense_0 ×1.13, dense_1 ×1.72; η/‖θ‖² falls
         task by task 0.98 → 0.56×; 0 dead)
  nap    1.00 × 10   (projected layers on their sphere: η/‖θ‖² constant to 2e-7;
         0 dead; LayerNorm scale/offset free, readout free: ‖θ‖ ×1.25)
  wd     1.00 … 0.83 0.52 0.35 0.19 0.15   (AdamW λ = 0.1 does not prevent it)
  long horizon, η = 1e-2: norm keeps every task ≥ 0.99 for 9 tasks but slows
  down (steps to 90% of a task, mean of first vs last three tasks: 333 → 917;
  task 10 ends at 0.80) as dense_1 grows ×20 and η/‖θ‖² falls to 0.02×; nap
  at the same constant η collapses to chance (0.12) from task 6 with 77% dead
  ReLUs (its LayerNorm offsets are free): at this η the implicit decay is
  doing necessary work, which NaP must replace with an explicit schedule
  (see nap_stationary).
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("nap_plasticity", quick=opts.quick)

  c.data = dict(num_samples=5000, num_train=1000, data_seed=42)
  c.tasks = dict(kind="random_labels", num_tasks=20, steps_per_task=1500)
  c.model = dict(hidden_sizes=(256, 256))
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
