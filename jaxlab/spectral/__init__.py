"""Hessian/GGN spectral probes for any JAX model: operators, Lanczos, eigenpairs, trace, density.

Note: the public functions ``lanczos`` and ``trace`` shadow their submodules as
attributes of this package; import helpers as ``from jaxlab.spectral.lanczos import ...``.
"""

from jaxlab.spectral.batch_lr import (
    batch_sharpness,
    fit_batch_sharpness,
    max_stable_lr_adam,
    max_stable_lr_sgd,
    slq_lr_hook,
)
from jaxlab.spectral.callbacks import SharpnessHook, sharpness_callback
from jaxlab.spectral.density import (
    SpectralDensity,
    density_on_grid,
    plot_density,
    spectral_density,
)
from jaxlab.spectral.eigen import Eigenpairs, top_eigenpairs
from jaxlab.spectral.lanczos import LanczosResult, lanczos, tridiagonal
from jaxlab.spectral.operators import (
    BatchOperator,
    DataSetOperator,
    ggn_vp,
    hessian_vp,
    linearized,
    restrict_to_subtree,
)
from jaxlab.spectral.trace import TraceEstimate, trace

__all__ = [
    "BatchOperator",
    "DataSetOperator",
    "Eigenpairs",
    "LanczosResult",
    "SharpnessHook",
    "SpectralDensity",
    "TraceEstimate",
    "density_on_grid",
    "ggn_vp",
    "hessian_vp",
    "lanczos",
    "linearized",
    "plot_density",
    "restrict_to_subtree",
    "sharpness_callback",
    "spectral_density",
    "top_eigenpairs",
    "trace",
    "tridiagonal",
    "batch_sharpness",
    "fit_batch_sharpness",
    "max_stable_lr_adam",
    "max_stable_lr_sgd",
    "slq_lr_hook",
]
