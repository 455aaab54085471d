"""In-context linear regression: a transformer vs least squares, ridge, GD and iterative Newton.

Command:
  python -m experiments.run --config=experiments/configs/icl_linreg.py:quick --workdir=runs/icl_linreg_quick
  python -m experiments.run --config=experiments/configs/icl_linreg.py --workdir=runs/icl_full

Options after the colon: `quick`. Overrides, e.g. `--config.arms.noisy=0` (skip
an arm), `--config.task.dim=8`.

Three arms, each a model trained from scratch on its own prompt distribution:
  noiseless        x ~ N(0, I_d), w ~ N(0, I_d), y = w^T x (Garg et al. 2022,
                   arXiv:2208.01066, Sec. 3);
  noisy            y = w^T x + N(0, sigma^2): the Bayes-optimal predictor is
                   ridge with lambda = sigma^2, not least squares (Akyuerek et
                   al. 2022, arXiv:2211.15661, Sec. 4.1);
  ill_conditioned  x ~ N(0, Sigma), cond(Sigma) = kappa = 100 with a random
                   rotation per prompt: GD slows by kappa, iterative Newton does
                   not (Fu et al. 2023, arXiv:2310.17086, Sec. 4).

Full scale = Garg et al.'s setup (their Sec. 3 and reference configs): d = 20,
41 points (40 in-context examples + query), GPT-2 with 12 layers, 8 heads,
width 256; batch 64, Adam 1e-4, 500k steps, curriculum d 5 -> 20 (+1) and points
11 -> 41 (+2) every 2,000 steps. (REFERENCES.md's "n 11 -> 41" is right; the
steps are +1 dimension and +2 points per 2,000 iterations.) Layer probes and the
Newton/GD matches follow Fu et al. Sec. 3 (their GPT-2: 12 layers, 8 heads,
256 wide, d = 20, 40 examples).

Quick scale (the `make run` default): d = 5, 11 points, 6 layers, 4 heads,
width 48 (the cost of the 4-layer, 64-wide model of the issue's calibration, but
deeper: near n = d + 1 least squares needs ~10 Newton iterations), batch 64, Adam
with warmup + cosine decay (peak 2e-3) and gradient clipping at 1 instead of
Garg's constant 1e-4, which needs ~100x more steps. The noiseless arm trains
4,500 steps from scratch; the noisy and ill-conditioned arms fine-tune the
trained noiseless model for 750 steps each (`arms_init = "noiseless"`; the full
config trains every arm from scratch).

Runtime and expected results:
  quick, 2-core CPU: 6,000 steps in all plus evaluation; measured 9 min 40 s
    on the idle machine (~11.8 steps/s) with earlier code; now 8.3 min of CPU,
    23 min wall at load 15-20. Measured (seed 0, the repro test's numbers):
    noiseless: max error / d over n >= d + 1 = 6 examples 0.058 (bar 0.1), >= 16.1x
      below averaging; closer to least squares than to 3-NN at every n; layer ->
      Newton iterations 0, 0, 2, 6, 10, 13, 13 (non-decreasing, Spearman 0.99);
      layer -> GD steps 0, 0, 2, 8, 32, 64, 64.
    noisy (sigma = 0.1): tracks ridge (lambda = sigma^2) more closely than least
      squares: mean squared prediction difference 0.025 vs 0.37 (0.020 vs
      0.056 was measured before least squares was solved by SVD instead of
      X^T X; which change moved it was not isolated).
    ill_conditioned (kappa = 100): error / d 0.017 mean over n >= 6; plain GD needs
      128 steps and iterative Newton 14 iterations to match it at every n; layer ->
      Newton iterations 0, 0, 3, 8, 12, 14, 14.
    Seed 1 does not reproduce: its noiseless model stays on the loss plateau
    (training loss 3-4 after 4,500 steps vs 1.5 for seed 0; error / d 0.55-0.66
    for n >= 6, 0.89x averaging); the quick setting is not seed-robust. Seed 2:
    see below; seed 3 fails (error / d 0.121, 8.1x
    below averaging) and seed 4 passes (10.9x): 2 of seeds 0-4 pass. Tried on seed 1's
    noiseless arm alone (its init, 4,500 steps; max error / d over n >= 6 on
    512 fresh prompts): Garg et al.'s
    curriculum scaled to d = 5 (dims 2 -> 5 by 1, points 5 -> 11 by 2) every
    400 steps: 0.37 at step 3,500 (stopped there); every 250 steps: 0.49 at
    4,500; every 400 steps at peak rate 3e-3: 0.51, at 1e-3: 0.50; no
    curriculum at peak rate 1e-3: 0.52 (all at 4,500). None leaves the
    plateau, so the quick config keeps no curriculum. (Seed 2 with the 400-step
    curriculum: 0.11 at step 2,500, off the plateau; without it, as the repro
    test: 0.098 at 4,500, but 9.6x below averaging.)
    Tried and not adopted: width 32 (a step costs ~0.77x the CPU) with a 9,000-step
    noiseless arm (fine-tunes unchanged). Seed 1 then passes every assertion of
    the repro test (pytest --repro-seed 1: max error / d 0.048, 19.4x below
    averaging, layer -> Newton 0, 0, 3, 8, 12, 13, 13; noisy 0.023 vs 0.37;
    ill-conditioned GD 128 vs Newton 14; 572 s CPU, 663 s wall at load 4-6), but
    seed 2 stays on the plateau (0.45, 1.5x averaging, training loss 2.6 after
    9,000 steps; 572 s CPU) and seed 0 leaves it too late (0.27, 3.5x; layer ->
    Newton 0, 0, 1, 4, 6, 7, 7; ill-conditioned GD 8 vs Newton 7; 562 s CPU):
    a new width draws new inits, and which seeds stick moves with them.
    Noiseless arm alone at width 32, max error / d at step 2,000 of a
    9,000-step schedule: seed 0 0.48, seed 1 0.22 (8,000-step schedule), seed 3
    0.19, seed 4 0.71; on seed 2's init batch 128 gives 0.67 and 15 points 0.68
    (still on the plateau). Peak rate 1e-3 with 500 warmup steps: seeds 0-4
    0.58, 0.21, 0.35, 0.22, 0.47 at step 2,000; seed 2 run on to 9,000 steps
    ends at 0.136 (bar 0.1). No setting was found that passes on seeds 0-4.
    bfloat16 (`--config.model.compute_dtype=bfloat16`, float32 master weights),
    seed 0, the same bar: noiseless max error / d 0.052, 18.0x below averaging,
    closer to least squares than 3-NN, layer -> Newton 0, 0, 3, 8, 11, 13, 13;
    noisy 0.021 vs 0.36 (ridge vs least squares); ill-conditioned GD 128 steps
    vs Newton 14. Run in resumable pieces under 10 min (checkpoints every 250
    steps), ~67 min wall at load 20-24; other seeds not run in bfloat16.
  full, one GPU (not run here; expected from the papers): ~1 day on one A100 for
    500k steps per arm (Garg et al. report this scale); error / d within ~1e-2 of
    least squares for n >= 20 examples and near 0 once n > d (Garg et al. Fig.
    2); layers 4..10 match ~3 Newton iterations per layer and exponentially more
    GD steps (Fu et al. Fig. 1, Sec. 3); noisy arm tracks ridge at n ~ d where
    least squares peaks; ill-conditioned arm stays close to least squares
    while GD with 2^k steps lags.
"""
from experiments.configs import common


def get_config(arg=None):
  opts = common.parse_arg(arg, quick=False)
  c = common.base_config("icl_linreg", quick=opts.quick)

  c.task = dict(dim=20, n_points=41, noise_std=0.1, condition_number=100.0,
                curriculum=True, dims_start=5, dims_inc=1, points_start=11, points_inc=2,
                curriculum_interval=2000)
  # compute_dtype "bfloat16": mixed precision, float32 master weights (jaxlab.models.precision).
  c.model = dict(num_layers=12, num_heads=8, width=256, normalize=True, compute_dtype="float32")
  c.optimizer = dict(name="adam", learning_rate=1e-4, schedule="constant", warmup_steps=0)
  # Steps per arm; 0 skips the arm.
  c.arms = dict(noiseless=500_000, noisy=500_000, ill_conditioned=500_000)
  # "scratch": every arm trains its own model from initialization; "noiseless":
  # the noisy and ill-conditioned arms fine-tune the trained noiseless model.
  c.arms_init = "scratch"
  # Best-of-k restarts (jaxlab.train.restarts) for arms trained from scratch:
  # `candidates` inits train together for `candidate_steps` updates, and the one
  # with the lowest loss on `candidate_eval_prompts` held-out prompts trains on.
  c.train = dict(batch_size=64, clip_norm=0.0, log_every_steps=500,
                 checkpoint_every_steps=10_000, progress=True, candidates=1,
                 candidate_steps=0, candidate_eval_prompts=1024)
  c.mesh = common.mesh_config()
  c.eval = dict(num_prompts=1000, probe_prompts=2000, newton_steps=tuple(range(13)),
                gd_steps=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                weight_contexts=(5, 10, 20, 30), weight_prompts=64, knn_k=3)

  if opts.quick:
    c.task.update(dim=5, n_points=11, curriculum=False)
    c.model.update(num_layers=6, num_heads=4, width=48)
    c.optimizer.update(learning_rate=2e-3, schedule="cosine", warmup_steps=200)
    c.arms = dict(noiseless=6000, noisy=750, ill_conditioned=750)
    c.arms_init = "noiseless"
    c.train.update(clip_norm=1.0, log_every_steps=250, checkpoint_every_steps=1000,
                   candidates=6, candidate_steps=750)
    c.eval.update(num_prompts=1000, probe_prompts=1000, newton_steps=tuple(range(17)),
                  gd_steps=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
                  weight_contexts=(2, 5, 8), weight_prompts=32)
  return c
