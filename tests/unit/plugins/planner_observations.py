# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner's estimate for each real vLLM startup log in tests/unit/fixtures/planner/vllm_kv_observations.yaml.

Shared by tests/unit/plugins/module_utils/test_planner_observations.py and benchmarks/planner_accuracy.py, so
that the benchmark prints exactly what the tests hold the planner to.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB, load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanOptions, parse_cluster

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = FIXTURES / "models"
DOCUMENT_PATH = FIXTURES / "planner" / "vllm_kv_observations.yaml"

# Release ranges whose accounting differs (tests/unit/fixtures/planner/vllm_kv_observations.yaml explains each).
RELEASE_RANGES = (
    ((0, 0), (0, 10), "up to 0.10 (NCCL after the snapshot)"),
    ((0, 11), (0, 15), "0.11-0.15 (sorting sampler)"),
    ((0, 16), (0, 19), "0.16-0.19 (kernel sampler)"),
    ((0, 20), (0, 24), "0.20-0.24 (CUDA graph estimate subtracted)"),
    ((0, 25), (0, 32), "0.25-0.32 (Model Runner V2)"),
)


def load_document() -> Dict[str, Any]:
    return yaml.safe_load(DOCUMENT_PATH.read_text(encoding="utf-8"))


def options_for(observation: Mapping[str, Any]) -> PlanOptions:
    return PlanOptions(
        max_model_len=observation["max_model_len"],
        gpu_memory_utilization=observation.get("gpu_memory_utilization"),
        kv_cache_dtype=observation.get("kv_cache_dtype") or "auto",
        max_num_batched_tokens=observation.get("max_num_batched_tokens"),
        max_num_seqs=observation.get("max_num_seqs"),
        tensor_parallel_size=observation["tensor_parallel_size"],
        pipeline_parallel_size=observation["pipeline_parallel_size"],
        block_size=observation.get("block_size") or 16,
        vllm_version=observation.get("vllm_version"),
        flashinfer_sampler=observation.get("flashinfer_sampler"),
        extra_args=tuple(observation.get("extra_args") or ()),
    )


def spec_for(observation: Mapping[str, Any]):
    return load_model_spec_from_dir(str(MODELS / observation["model"]))


def predict(observation: Mapping[str, Any]):
    return plan(spec_for(observation), parse_cluster(observation["cluster"]), options_for(observation))


@dataclass
class Row:
    id: str
    release: str
    family: str
    tokens: int
    reported_tokens: int
    gib: float
    reported_gib: float

    @property
    def token_error(self) -> float:
        return self.tokens / self.reported_tokens - 1

    @property
    def gib_error(self) -> float:
        return self.gib / self.reported_gib - 1


def release_range(version: Optional[str]) -> str:
    if not version:
        return RELEASE_RANGES[0][2]
    major, minor = (int(part) for part in str(version).lstrip("v").split(".")[:2])
    for first, last, label in RELEASE_RANGES:
        if first <= (major, minor) <= last:
            return label
    return f"{major}.{minor} (not modelled)"


def row(observation: Mapping[str, Any]) -> Row:
    result = predict(observation)
    return Row(
        id=observation["id"],
        release=release_range(observation.get("vllm_version")),
        family=spec_for(observation).model_type,
        tokens=result.kv_cache_tokens,
        reported_tokens=observation["reported_kv_cache_tokens"],
        gib=result.per_gpu["kv_cache_bytes"] / GIB,
        reported_gib=observation["reported_kv_cache_gib"],
    )


def rows() -> List[Row]:
    return [row(observation) for observation in load_document()["observations"]]


def summary(selected: List[Row]) -> Dict[str, float]:
    errors = [abs(item.token_error) for item in selected]
    return {"count": len(errors), "median": statistics.median(errors), "worst": max(errors)}


def table(selected: List[Row]) -> str:
    lines = [f"{'observation':44} {'planner':>11} {'vLLM':>11} {'error':>7} {'GiB':>7} {'vLLM GiB':>8} {'error':>7}"]
    for item in selected:
        lines.append(
            f"{item.id:44} {item.tokens:>11,} {item.reported_tokens:>11,} {item.token_error:>+7.1%} "
            f"{item.gib:>7.2f} {item.reported_gib:>8.2f} {item.gib_error:>+7.1%}"
        )
    return "\n".join(lines)
