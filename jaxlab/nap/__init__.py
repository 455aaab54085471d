"""Normalize-and-Project (Lyle et al. 2024): projection, diagnostics, explicit schedules."""
from jaxlab.nap import tasks  # noqa: E402  (the module, for tasks.KINDS)
from jaxlab.nap.diagnostics import NormsHook, dead_unit_fraction, norms_hook
from jaxlab.nap.labels import check_scale_invariance, default_labels, flax_labels
from jaxlab.nap.projection import (
    DRIFT_RTOL,
    NapProjection,
    NapProjectState,
    PerChannel,
    chain,
    check_projected,
    group_norms,
    layer_labels,
    nap_mask,
    nap_project,
    resolve_groups,
    with_projection,
)
from jaxlab.nap.schedules import (
    ScaleByImplicitScheduleState,
    implicit_schedule,
    norms_from_metrics,
    scale_by_implicit_schedule,
)
from jaxlab.nap.tasks import TaskSequence

__all__ = ["DRIFT_RTOL", "NapProjectState", "NapProjection", "NormsHook", "PerChannel", "chain",
           "check_projected", "check_scale_invariance", "dead_unit_fraction", "default_labels",
           "flax_labels", "group_norms", "implicit_schedule", "layer_labels", "nap_mask",
           "nap_project", "norms_from_metrics", "norms_hook", "resolve_groups",
           "ScaleByImplicitScheduleState", "scale_by_implicit_schedule", "TaskSequence", "tasks",
           "with_projection"]
