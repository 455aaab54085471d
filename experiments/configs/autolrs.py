"""AutoLRS (Jin et al. 2021) against tuned cosine and WSD schedules, at equal total steps.

The optimizer benchmark's workload (MLP 2×128 on MNIST-1D, batch 128): for
SGD-momentum and Adam, the cosine and WSD schedules train `budget_steps`
steps at each peak rate of a small sweep (the benchmark's centre × `lr_factors`)
and the sweep's best final validation accuracy is kept (the tuned baseline);
AutoLRS (`jaxlab.optim.autolrs_hook`) gets the same budget with its look-ahead
steps counted, so it trains fewer steps, searching rates in
[centre × lr_range_factors[0], centre × lr_range_factors[1]], untuned.

Command (2-core CPU):
  python -m experiments.run --config=experiments/configs/autolrs.py:quick --workdir=runs/autolrs_quick
  python -m experiments.run --config=experiments/configs/autolrs.py --workdir=runs/autolrs_full

Options after the colon: `quick`, `tiny` (seconds; the tests).

Expected (measured, quick, loaded 2-core CPU, 1.5-4.5 min): 1,000 updates per
arm, AutoLRS 500 training + 500 look-ahead; final validation accuracy, seeds
0 / 1 / 2: Adam AutoLRS 0.637 / 0.633 / 0.626 vs tuned WSD 0.671 / 0.681 /
0.682 and cosine 0.662 / 0.648 / 0.669; momentum AutoLRS 0.688 / 0.592 / 0.590
vs tuned cosine 0.716 / 0.719 / 0.672 and WSD 0.705 / 0.702 / 0.708. AutoLRS
is 0.03-0.06 (Adam) and 0.03-0.13 (momentum) below the better tuned schedule:
the paper's claim (AutoLRS matches the tuned schedules; checked as within 0.02)
is not reproduced at this scale. Seeds 1 and 2 of momentum train stages at
0.018x and 0.29x the benchmark's centre rate (the tuned peak is 3x): a slowly
falling 20-step look-ahead extrapolates, with the exponential model, to a low
loss 200 steps on. (Before the rise rule
and the cleaning fix in jaxlab.optim.autolrs, momentum picked a rate near the
top of the range and the network died: 0.089 / 0.102 / 0.102.)
full: not run yet.
"""
from experiments.configs import common
from experiments.configs.optimizer_benchmark import BASE_LRS


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False, tiny=False)
  c = common.base_config("autolrs", quick=opts.quick or opts.tiny)
  c.data = dict(num_samples=5000, data_seed=42)
  # compute_dtype "bfloat16": mixed precision, float32 master weights.
  c.model = dict(hidden_sizes=(128, 128), compute_dtype="float32")
  c.optimizers = ("momentum", "adam")
  c.base_lrs = {k: BASE_LRS[k] for k in c.optimizers}
  c.schedules = ("cosine", "wsd")
  c.lr_factors = (0.3, 1.0, 3.0, 10.0, 30.0)
  c.wsd_decay_fraction = 0.2
  c.budget_steps = 3000
  c.batch_size = 128
  c.mesh = common.mesh_config()
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 200
  c.autolrs = dict(tau=300, tau_max=1200, num_lrs=10, lookahead_fraction=0.1,
                   acquisition="lcb", kappa=1e3, select="observed",
                   lr_range_factors=(0.01, 30.0), loss_floor=0.0)
  c.progress = False
  if opts.quick:
    c.budget_steps = 1000
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 100
    # The benchmark's quick sweep picks ×3 (momentum) and ×10 (Adam): bracketed.
    c.lr_factors = (1.0, 3.0, 10.0, 30.0)
    c.autolrs.tau = 200
    c.autolrs.tau_max = 400
  if opts.tiny:  # seconds (the tests): Adam, one cosine rate, AutoLRS in two stages
    c.data.num_samples = 600
    c.model.hidden_sizes = (16,)
    c.optimizers = ("adam",)
    c.base_lrs = {"adam": BASE_LRS["adam"]}
    c.schedules = ("cosine",)
    c.lr_factors = (1.0,)
    c.budget_steps = 40
    c.batch_size = 32
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.autolrs.tau = 8
    c.autolrs.tau_max = 16
    c.autolrs.num_lrs = 2
    c.autolrs.lookahead_fraction = 0.4
  return c
