# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Turn the planner's options into the settings vLLM will actually run with, before any memory is sized.

Three things happen here, in this order: a release the planner does not model is refused; the memory-relevant
flags in ``vllm_serve_extra_args`` replace vLLM's defaults (and must agree with the options set explicitly); and
what the release defaults to (gpu_memory_utilization) fills what is still unset. Runtime quantization changes
the model itself, so the model comes back too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict

from ansible_collections.llmserve.cluster.plugins.module_utils._engine_flags import (
    EXTRA_ARGS_VARIABLE,
    EngineFlagError,
    parse_engine_flags,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    ModelSpec,
    ModelSpecError,
    with_runtime_quantization,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_releases import (
    ReleaseTerms,
    release_terms,
    unmodelled_release_reason,
)


@dataclass(frozen=True)
class ResolvedRun:
    """The model and settings vLLM will run with, and the accounting terms of its release."""

    spec: ModelSpec
    options: PlanOptions
    terms: ReleaseTerms
    # Option name -> the extra argument it was read from ("--max-num-seqs 64").
    from_extra_args: Dict[str, str]


def _defaults() -> Dict[str, Any]:
    return {item.name: item.default for item in fields(PlanOptions)}


def resolve_run(spec: ModelSpec, options: PlanOptions) -> ResolvedRun:
    """Refuse unmodelled releases, apply the extra arguments and the release's defaults, quantize the model."""
    try:
        reason = unmodelled_release_reason(options.vllm_version)
    except ValueError as error:
        raise PlanError(str(error), "vllm_version") from error
    if reason:
        raise PlanError(reason, "vllm_version")
    try:
        flags = parse_engine_flags(options.extra_args)
    except EngineFlagError as error:
        raise PlanError(str(error), EXTRA_ARGS_VARIABLE) from error
    defaults = _defaults()
    overrides: Dict[str, Any] = {}
    for name, value in flags.values.items():
        current = getattr(options, name)
        if current != defaults[name] and current != value:
            raise PlanError(
                f"{EXTRA_ARGS_VARIABLE} has {flags.sources[name]} but {name} is {current!r}; vLLM would run with "
                f"the extra argument. Set one of them, or make them equal.",
                EXTRA_ARGS_VARIABLE,
            )
        overrides[name] = value
    resolved = replace(options, **overrides) if overrides else options
    terms = release_terms(resolved.vllm_version)
    if resolved.gpu_memory_utilization is None:
        resolved = replace(resolved, gpu_memory_utilization=terms.default_gpu_memory_utilization)
    try:
        quantized = with_runtime_quantization(spec, resolved.quantization)
    except ModelSpecError as error:
        raise PlanError(str(error), error.field) from error
    return ResolvedRun(quantized, resolved, terms, dict(flags.sources))
