# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How an offline batch job splits the cluster into vLLM instances, from the serving plan.

vLLM's Ray Data example runs ``num_instances`` copies of ``vllm.LLM``, each on TP x PP GPUs, with one
placement group per instance when an instance needs more than one GPU. This module decides those
numbers and the job settings that come from the plan (engine arguments, environment), so the job
script only executes them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

DEVICES = ("auto", "gpu", "cpu")
# Plan arguments the batch job decides itself (it may override the plan's sizes, and has no DP).
PARALLEL_ARGUMENTS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


class BatchPlanError(ValueError):
    """A batch layout that cannot run, with the option to change."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def cluster_device(cluster: Sequence[Mapping[str, Any]]) -> str:
    """``cpu`` when every node describes CPU workers (gpu_name ``cpu``, the sandbox), else ``gpu``."""
    if cluster and all(str(node.get("gpu_name", "")).lower() == "cpu" for node in cluster):
        return "cpu"
    return "gpu"


def plan_engine_arguments(vllm_args: Sequence[str]) -> Dict[str, Any]:
    """The plan's ``vllm serve`` flags as ``vllm.LLM`` keyword arguments, without the parallel sizes.

    ``--max-model-len 4096`` becomes ``max_model_len=4096``; a flag without a value becomes ``True``.
    """
    arguments: Dict[str, Any] = {}
    index = 0
    while index < len(vllm_args):
        flag = str(vllm_args[index])
        if not flag.startswith("--"):
            raise BatchPlanError(f"Unexpected plan argument {flag!r} (expected a --flag).", "plan")
        name = flag[2:].replace("-", "_")
        following = vllm_args[index + 1] if index + 1 < len(vllm_args) else None
        if following is None or str(following).startswith("--"):
            value: Any = True
            index += 1
        else:
            value = _number_or_text(str(following))
            index += 2
        if name not in PARALLEL_ARGUMENTS:
            arguments[name] = value
    return arguments


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def placement(
    gpus_per_instance: int, gpus_per_node: Sequence[int], device: str, cpus_per_instance: float
) -> Dict[str, Any]:
    """Placement-group bundles and strategy for one instance; empty bundles when none is needed.

    One bundle per GPU worker, as in vLLM's example. STRICT_PACK keeps a TP group on one node (NVLink);
    an instance larger than every node can only PACK across nodes (pipeline stages over the network).
    """
    if device == "cpu" or gpus_per_instance == 1:
        return {"bundles": [], "strategy": ""}
    bundles = [{"GPU": 1.0, "CPU": 1.0} for _worker in range(gpus_per_instance)]
    # The driver-side vLLM process (the actor itself) needs its CPUs in the first bundle too.
    bundles[0]["CPU"] = max(1.0, float(cpus_per_instance))
    fits_one_node = any(gpus >= gpus_per_instance for gpus in gpus_per_node)
    return {"bundles": bundles, "strategy": "STRICT_PACK" if fits_one_node else "PACK"}


def batch_layout(
    cluster: Sequence[Mapping[str, Any]],
    plan: Optional[Mapping[str, Any]] = None,
    tensor_parallel_size: int = 0,
    pipeline_parallel_size: int = 0,
    num_instances: int = 0,
    device: str = "auto",
    cpus_per_instance: float = 1.0,
) -> Dict[str, Any]:
    """Instances, their sizes, placement, engine arguments and environment for a batch job.

    Sizes left at 0 come from the plan (``llmserve_plan``), else 1. ``num_instances`` left at 0 is
    every GPU of the cluster divided by the GPUs of one instance (TP x PP).
    """
    plan = plan or {}
    if device not in DEVICES:
        raise BatchPlanError("device must be one of {}, got {!r}.".format(", ".join(DEVICES), device), "device")
    if not cluster:
        raise BatchPlanError("The cluster has no nodes.", "cluster")
    resolved_device = cluster_device(cluster) if device == "auto" else device
    tensor = int(tensor_parallel_size or plan.get("tensor_parallel_size") or 1)
    pipeline = int(pipeline_parallel_size or plan.get("pipeline_parallel_size") or 1)
    if tensor < 1 or pipeline < 1:
        raise BatchPlanError("Parallel sizes must be positive.", "tensor_parallel_size")
    gpus_per_instance = tensor * pipeline
    if resolved_device == "cpu" and gpus_per_instance > 1:
        raise BatchPlanError(
            'vLLM on CPU refuses the Ray executor ("current platform cpu does not support ray"), so an '
            "instance inside Ray Data can only use one worker: set tensor_parallel_size and "
            f"pipeline_parallel_size to 1 (got {tensor} x {pipeline}).",
            "tensor_parallel_size",
        )
    gpus_per_node = [int(node.get("gpus") or 0) for node in cluster]
    total_gpus = sum(gpus_per_node)
    possible = total_gpus // gpus_per_instance
    if possible < 1:
        raise BatchPlanError(
            f"One instance needs {gpus_per_instance} GPUs (TP {tensor} x PP {pipeline}) "
            f"but the cluster has {total_gpus}.",
            "tensor_parallel_size",
        )
    if num_instances < 0:
        raise BatchPlanError("num_instances must be 0 (derive) or positive.", "num_instances")
    if num_instances > possible:
        raise BatchPlanError(
            f"{num_instances} instances of {gpus_per_instance} GPUs need {num_instances * gpus_per_instance} GPUs; "
            f"the cluster has {total_gpus} (at most {possible} instances).",
            "num_instances",
        )
    engine_arguments = plan_engine_arguments(plan.get("vllm_args") or [])
    environment = dict(plan.get("env") or {})
    # The plan's layer split belongs to the plan's pipeline; a different PP must let vLLM split again.
    if pipeline != int(plan.get("pipeline_parallel_size") or 1):
        environment.pop("VLLM_PP_LAYER_PARTITION", None)
    return {
        "device": resolved_device,
        "num_instances": num_instances or possible,
        "tensor_parallel_size": tensor,
        "pipeline_parallel_size": pipeline,
        "gpus_per_instance": gpus_per_instance,
        "total_gpus": total_gpus,
        "cpus_per_instance": float(cpus_per_instance),
        "placement": placement(gpus_per_instance, gpus_per_node, resolved_device, cpus_per_instance),
        "engine_arguments": engine_arguments,
        "environment": environment,
    }


def describe(layout: Mapping[str, Any]) -> str:
    """One line for the play's output."""
    unit = "CPU worker" if layout["device"] == "cpu" else "GPU"
    text = (
        f"{layout['num_instances']} instance(s) of vLLM, each TP {layout['tensor_parallel_size']} x "
        f"PP {layout['pipeline_parallel_size']} = {layout['gpus_per_instance']} {unit}(s), "
        f"over {layout['total_gpus']} {unit}(s) in the cluster"
    )
    if layout["placement"]["bundles"]:
        text += "; one {} placement group per instance".format(layout["placement"]["strategy"])
    return text


def layout_warnings(layout: Mapping[str, Any]) -> List[str]:
    """Cluster GPUs the layout leaves idle."""
    idle = layout["total_gpus"] - layout["num_instances"] * layout["gpus_per_instance"]
    if idle > 0:
        return [f"{idle} GPU(s) of the cluster stay idle with this layout."]
    return []
