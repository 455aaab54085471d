"""Study: exact learning of permutations by ensembles (arXiv:2502.16763).

Infinite-width arm: for each k, the limiting GP of a GD-trained two-layer net
on the k basis vectors; ensembles of every size are simulated at once
(`jaxlab.ntk.critical_ensemble_sizes`); success vs M on one input and on all
2^k - 1 inputs; the M needed for 1 - delta, fitted against k.
Finite-width arm: real nets of increasing width trained by full-batch GD
(`jaxlab.ntk.train_ensemble`), their ensembles compared with the GP.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import ntk
from jaxlab.train import io
from jaxlab.train import mesh as mesh_lib


def validate(config) -> None:
  def bad(key, value, allowed):
    raise ValueError(f"config key {key!r}: got {value!r}; allowed: {allowed}")

  ks = tuple(config.ks)
  if len(ks) < 2 or any(not isinstance(k, int) or not 2 <= k <= 14 for k in ks):
    bad("ks", ks, "at least two ints in [2, 14]")
  if not 0 < config.delta < 1:
    bad("delta", config.delta, "a float in (0, 1)")
  for key in ("n_trials", "n_trials_large"):
    if config[key] < 10:
      bad(key, config[key], "an int >= 10")
  if config.exact_max_k < min(ks):
    bad("exact_max_k", config.exact_max_k, f"an int >= min(ks) = {min(ks)}")
  if not config.ensemble_sizes or min(config.ensemble_sizes) < 1:
    bad("ensemble_sizes", config.ensemble_sizes, "non-empty ints >= 1")
  if any(not isinstance(k, int) or not 2 <= k <= 10 for k in config.finite_ks):
    bad("finite_ks", config.finite_ks, "ints in [2, 10]")
  if not config.widths or min(config.widths) < 1:
    bad("widths", config.widths, "non-empty ints >= 1")
  if config.finite_members < 2:
    bad("finite_members", config.finite_members, "an int >= 2")
  if not 0 < config.lr_fraction < 2:
    bad("lr_fraction", config.lr_fraction, "a float in (0, 2)")
  if not 0 < config.gd_tolerance < 1:
    bad("gd_tolerance", config.gd_tolerance, "a float in (0, 1)")
  if config.member_chunk < 1:
    bad("member_chunk", config.member_chunk, "an int >= 1")
  for key in ("weight_std", "bias_std", "output_std"):
    if not config[key] >= 0:
      bad(key, config[key], "a float >= 0")
  mesh_lib.resolve(config.mesh.data, config.mesh.fsdp)
  if config.mesh.fsdp != 1:
    bad("mesh.fsdp", config.mesh.fsdp, "1 (the ensemble's members are split whole over the "
        "devices, mesh.data; no member's parameters are sharded)")


def param_shapes(config) -> dict:
  """{keys: abstract params} of the largest finite-width chunk (see checks.param_memory).

  `ntk.train_ensemble` trains `member_chunk` nets (at most finite_members,
  rounded up to the device count) side by side, one (k, width) at a time; the
  members are split over the mesh's devices (`mesh.data`), so a device holds
  1/mesh.data of them.
  """
  from jaxlab.train import checks

  if not config.finite_ks or not config.widths:
    return {}
  k, width = max(config.finite_ks), max(config.widths)
  n_dev = jax.device_count()
  chunk = -(-min(config.member_chunk, config.finite_members) // n_dev) * n_dev
  shapes = jax.eval_shape(lambda: ntk.init_two_layer(jax.random.key(0), k, width, k))
  return {"widths, finite_ks, member_chunk": checks.stacked(shapes, chunk)}


def _scales(config):
  return dict(weight_std=config.weight_std, bias_std=config.bias_std,
              output_std=config.output_std)


def infinite_width_arm(config, key, logger):
  rows = {}
  sizes = np.asarray(config.ensemble_sizes)
  for i, k in enumerate(config.ks):
    t0 = time.time()
    task = ntk.make_task(k, seed=config.seed + k)
    gp = ntk.two_layer_gp(task.x_train, task.y_train, task.x_test, dtype=jnp.float64,
                          **_scales(config))
    st = ntk.bit_statistics(k, **_scales(config))
    crit = ntk.critical_ensemble_sizes(jax.random.fold_in(key, k), np.asarray(gp.mean),
                                       np.asarray(gp.cov), task.y_test,
                                       st.threshold[task.ones - 1],
                                       n_trials=config.n_trials if k <= config.exact_max_k
                                       else config.n_trials_large)
    hard = ntk.hardest_input(task, st)
    s_hard = int(task.ones[hard])
    one, every = ntk.success_curves(crit, sizes, hard)
    m_one, m_all = ntk.required_size_from_critical(crit, config.delta, hard)
    bound_one = ntk.required_ensemble_size(k, config.delta, "one", **_scales(config))
    bound_all = ntk.required_ensemble_size(k, config.delta, "all", **_scales(config))
    at_bound, single = ntk.success_curves(crit, [bound_all, 1], hard)[1]
    # Rounding to the nearest integer instead of the midpoint: right in the M -> inf limit?
    nearest = ntk.round_bits(jnp.asarray(np.asarray(gp.mean), jnp.float32), task.x_test, st.threshold, rule="nearest")
    row = dict(
        k=k, n_test=int(task.x_test.shape[0]), n_trials=int(crit.shape[0]),
        hardest_input_ones=s_hard,
        success_one=one, success_all=every,
        success_one_closed_form=ntk.one_input_success(st, k, sizes, s_hard),
        m_needed_one=m_one, m_needed_all=m_all, m_bound_one=bound_one, m_bound_all=bound_all,
        success_all_at_bound=float(at_bound), success_all_single_net=float(single),
        max_var_over_gap2=float(np.max((st.std / st.gap) ** 2)),
        nearest_rounding_limit_exact=float(np.mean(ntk.exact_recovery(nearest, task.y_test))),
        seconds=time.time() - t0)
    logger.write(i, {f"inf/{n}": v for n, v in row.items() if np.ndim(v) == 0})
    rows[k] = row
  return rows


def finite_width_arm(config, key, logger, step0):
  out = {}
  mesh = mesh_lib.from_config(config)  # the members split over its devices
  sizes = np.asarray(config.ensemble_sizes)
  step = step0
  for k in config.finite_ks:
    task = ntk.make_task(k, seed=config.seed + k)
    gp = ntk.two_layer_gp(task.x_train, task.y_train, task.x_test, dtype=jnp.float64,
                          **_scales(config))
    theta = ntk.two_layer_ntk(task.x_train, dtype=jnp.float64, **_scales(config))
    lr, steps = ntk.gd_settings(theta, lr_fraction=config.lr_fraction,
                                tolerance=config.gd_tolerance)
    st = ntk.bit_statistics(k, **_scales(config))
    bound_all = ntk.required_ensemble_size(k, config.delta, "all", **_scales(config))
    mean_gp, var_gp = np.asarray(gp.mean), np.clip(np.diag(np.asarray(gp.cov)), 0, None)
    per_width = {}
    for width in config.widths:
      t0 = time.time()
      res = ntk.train_ensemble(jax.random.fold_in(key, 1000 * k + width), task.x_train,
                               task.y_train, task.x_test, n_members=config.finite_members,
                               width=width, steps=steps, learning_rate=lr,
                               chunk_size=config.member_chunk, mesh=mesh,
                               **_scales(config))
      outs, train_loss = mesh_lib.to_host((res.outputs, res.train_loss))
      scale = np.sqrt(np.mean(var_gp))
      mean_err = float(np.sqrt(np.mean((outs.mean(0) - mean_gp) ** 2)) / scale)
      var_err = float(np.mean(np.abs(outs.var(0) - var_gp[:, None])) / np.mean(var_gp))

      success = lambda m: ntk.grouped_ensemble_success(outs, int(m), task.x_test,  # noqa: B023
                                                       task.y_test, st.threshold)  # noqa: B023
      curve = [success(m) for m in sizes if m <= len(outs) // 2]
      at_bound = success(bound_all) if bound_all <= len(outs) // 2 else (None, None, 0)
      row = dict(width=width, lr=lr, steps=steps,
                 train_loss=float(np.mean(train_loss)),
                 mean_rel_err=mean_err, var_rel_err=var_err,
                 success_one=[c[0] for c in curve], success_all=[c[1] for c in curve],
                 groups=[c[2] for c in curve], success_all_at_bound=at_bound[1],
                 groups_at_bound=at_bound[2], seconds=time.time() - t0)
      logger.write(step, {f"fin/k{k}/{n}": v for n, v in row.items()
                          if np.ndim(v) == 0 and v is not None})
      step += 1
      per_width[width] = row
    out[k] = dict(m_bound_all=bound_all, widths=per_width)
  return out


def _plots(config, inf, fin, workdir):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  sizes = np.asarray(config.ensemble_sizes)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  cmap = plt.get_cmap("viridis")
  for i, (k, row) in enumerate(inf.items()):
    color = cmap(i / max(len(inf) - 1, 1))
    axes[0].plot(sizes, row["success_one"], "o-", color=color, label=f"k={k}")
    axes[0].plot(sizes, row["success_one_closed_form"], ":", color=color)
    axes[1].plot(sizes, row["success_all"], "o-", color=color, label=f"k={k}")
  for ax, title in zip(axes, ("hardest single input (dotted: closed form)", "all 2^k - 1 inputs"), strict=True):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ensemble size M")
    ax.set_title(title)
    ax.axhline(1 - config.delta, color="gray", lw=0.5)
  axes[0].set_ylabel("P(exact recovery), infinite width")
  axes[1].legend(fontsize=7, ncol=2)
  io.save_figure(fig, workdir, "success_vs_M")

  ks = np.asarray(list(inf))
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for key, label, marker in (("m_needed_one", "needed, hardest input (MC)", "o"),
                             ("m_needed_all", "needed, all inputs (MC)", "s"),
                             ("m_bound_all", "union bound, all inputs", "^")):
    ax.plot(ks, [inf[k][key] for k in ks], marker + "-", label=label)
  # Reference shapes c k log k and c k^2 for the all-inputs curve, each with its slope
  # fixed and c fitted by least squares in log space over all k (not through one point).
  fit = ntk.fit_power_law(ks, [inf[k]["m_needed_all"] for k in ks])
  for name, basis, style, shape in (("klogk", ks * np.log(ks), "k--", "k log k"),
                                    ("k2", ks.astype(float) ** 2, "k:", "k²")):
    ax.plot(ks, fit[f"{name}_coef"] * basis, style,
            label=f"{fit[name + '_coef']:.2g}·{shape}, fit to all inputs "
                  f"(rms log error {fit[name + '_rel_rms']:.2f})")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xticks(ks, [str(k) for k in ks])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
  ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("k")
  ax.set_ylabel(f"M for success ≥ {1 - config.delta:g}")
  ax.set_title(f"all inputs: M ∝ $k^{{{fit['exponent']:.2f}}}$ (free log-log fit)", fontsize=9)
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize=7)
  io.save_figure(fig, workdir, "m_vs_k")

  for k, entry in fin.items():
    fig, ax = plt.subplots(figsize=(5.5, 4))
    m_inf = sizes
    if k in inf:
      ax.plot(m_inf, inf[k]["success_all"], "k-", lw=2, label="infinite width (GP)")
    for width, row in entry["widths"].items():
      ax.plot(sizes[: len(row["success_all"])], row["success_all"], "o-", label=f"width {width}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ensemble size M")
    ax.set_ylabel("P(all inputs exactly right)")
    ax.set_title(f"finite-width arm, k={k}")
    ax.legend(fontsize=7)
    io.save_figure(fig, workdir, f"finite_width_k{k}")


def main(config, workdir) -> dict:
  key = jax.random.key(config.seed)
  k_inf, k_fin = jax.random.split(key)
  logger = io.MetricsLogger(workdir)
  logger.reset()
  t0 = time.time()
  inf = infinite_width_arm(config, k_inf, logger)
  fin = finite_width_arm(config, k_fin, logger, step0=len(inf))
  ks = list(inf)
  fit_one = ntk.fit_power_law(ks, [inf[k]["m_needed_one"] for k in ks])
  fit_all = ntk.fit_power_law(ks, [inf[k]["m_needed_all"] for k in ks])
  fit_bound = ntk.fit_power_law(ks, [inf[k]["m_bound_all"] for k in ks])
  small = [k for k in ks if k <= config.exact_max_k]
  summary = dict(
      table=[{n: inf[k][n] for n in ("k", "m_needed_one", "m_needed_all", "m_bound_one",
                                     "m_bound_all", "success_all_at_bound",
                                     "success_all_single_net", "max_var_over_gap2",
                                     "nearest_rounding_limit_exact")} for k in ks],
      fit_one_input=fit_one, fit_all_inputs=fit_all, fit_bound_all=fit_bound,
      exponent_one_input=fit_one["exponent"], exponent_all_inputs=fit_all["exponent"],
      exact_k_max=config.exact_max_k,
      min_success_all_at_bound_small_k=min(inf[k]["success_all_at_bound"] for k in small),
      max_success_all_single_net_small_k=max(inf[k]["success_all_single_net"] for k in small),
      infinite_width=inf, finite_width=fin, seconds=time.time() - t0)
  _plots(config, inf, fin, workdir)
  io.write_json(f"{workdir}/summary.json", summary)
  return io.to_python(summary)
