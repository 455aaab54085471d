"""jaxlab.optim: optimizers and learning-rate schedules as optax transforms.

Transforms (``scale_by_X`` without learning rate, ``X(learning_rate, ...)``):
diffgrad, mfac, dct_lowrank, normalized_gd (ExtraArgs: ``margins=``),
hypergradient. AutoLRS train-loop hook: ``autolrs_hook``. Registry:
``get(name, **hyperparams)``, ``NAMES``, ``hyperparameters(name)``. Schedules:
``jaxlab.optim.schedules``; loss law: ``jaxlab.optim.annealing_law``.
"""
from jaxlab.optim import annealing_law, autolrs, schedules
from jaxlab.optim.annealing_law import AnnealingLaw
from jaxlab.optim.autolrs import AutoLRSHook, autolrs_hook
from jaxlab.optim.dct_lowrank import ScaleByDCTLowRankState, dct_lowrank, scale_by_dct_lowrank
from jaxlab.optim.diffgrad import ScaleByDiffGradState, diffgrad, scale_by_diffgrad
from jaxlab.optim.hypergradient import HypergradientState, hypergradient, scale_by_hypergradient
from jaxlab.optim.mfac import ScaleByMFACState, mfac, scale_by_mfac
from jaxlab.optim.normalized_gd import (
    ScaleByNormalizedGDState,
    normalized_gd,
    scale_by_normalized_gd,
)
from jaxlab.optim.registry import NAMES, STATIC_ARGS, factory, get, hyperparameters, validate
from jaxlab.optim.schedules import infinite, linear_decay, power, refined, rex, with_warmup, wsd

__all__ = [
    "NAMES",
    "STATIC_ARGS",
    "AnnealingLaw",
    "AutoLRSHook",
    "HypergradientState",
    "ScaleByDCTLowRankState",
    "ScaleByDiffGradState",
    "ScaleByMFACState",
    "ScaleByNormalizedGDState",
    "annealing_law",
    "autolrs",
    "autolrs_hook",
    "dct_lowrank",
    "diffgrad",
    "factory",
    "get",
    "hypergradient",
    "hyperparameters",
    "infinite",
    "linear_decay",
    "mfac",
    "normalized_gd",
    "power",
    "refined",
    "rex",
    "scale_by_dct_lowrank",
    "scale_by_diffgrad",
    "scale_by_hypergradient",
    "scale_by_mfac",
    "scale_by_normalized_gd",
    "schedules",
    "validate",
    "with_warmup",
    "wsd",
]


def __getattr__(name):
  # NaP's projection lives in jaxlab.nap; offered here too, since it is an optax
  # transform chained after any optimizer (imported lazily: nap imports optim).
  if name in ("nap_project", "nap_mask"):
    from jaxlab.nap import projection

    return getattr(projection, name)
  raise AttributeError(f"module 'jaxlab.optim' has no attribute {name!r}")
