"""NTK toolkit: analytic kernels of fully connected nets of any depth,
empirical NTK and Monte Carlo NNGP of any model (the model contract: params,
state, (y, aux)), infinite-width GD prediction with analytic or user kernels
(`gp_predict`, `kernel_gp`), vmapped ensembles of two-layer
nets, and the permutation-learning study's library (Giapitzakis, Back de Luca,
Fountoulakis 2025, arXiv:2502.16763)."""
from jaxlab.ntk.empirical import auto_choices, choose_method, empirical_nngp, empirical_ntk
from jaxlab.ntk.ensembles import (
    EnsembleResult,
    apply_two_layer,
    ensemble_average,
    gd_settings,
    init_two_layer,
    train_ensemble,
)
from jaxlab.ntk.kernels import (
    Kernels,
    fc_kernels,
    kernels_from_products,
    two_layer_kernels,
    two_layer_nngp,
    two_layer_ntk,
)
from jaxlab.ntk.permutations import (
    BitStatistics,
    PermutationTask,
    bit_statistics,
    critical_ensemble_sizes,
    exact_recovery,
    fit_power_law,
    grouped_ensemble_success,
    hardest_input,
    make_task,
    nonzero_binary_inputs,
    one_input_success,
    required_ensemble_size,
    required_size_from_critical,
    round_bits,
    success_curves,
)
from jaxlab.ntk.predict import (
    GPPrediction,
    gp_predict,
    kernel_gp,
    kernel_regression,
    two_layer_gp,
)

__all__ = [
    "BitStatistics", "EnsembleResult", "GPPrediction", "Kernels", "PermutationTask",
    "apply_two_layer", "auto_choices", "bit_statistics", "choose_method", "critical_ensemble_sizes",
    "empirical_nngp", "empirical_ntk", "ensemble_average", "fc_kernels", "gd_settings", "exact_recovery", "fit_power_law", "gp_predict", "grouped_ensemble_success", "hardest_input",
    "init_two_layer", "kernel_gp", "kernel_regression", "kernels_from_products", "make_task",
    "nonzero_binary_inputs", "one_input_success", "required_ensemble_size",
    "required_size_from_critical", "round_bits", "success_curves", "train_ensemble",
    "two_layer_gp", "two_layer_kernels", "two_layer_nngp", "two_layer_ntk",
]
