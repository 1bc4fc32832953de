# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Weights per GPU under --enable-expert-parallel."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._expert_parallel import (
    expert_parallel_problem,
    expert_parallel_stage_weight_bytes,
    experts_on_busiest_rank,
    routed_expert_parameters,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    layer_parameters,
    layer_weight_bytes,
    load_model_spec_from_dir,
)

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


@pytest.fixture(scope="module")
def r1():
    return load_model_spec_from_dir(str(MODELS / "DeepSeek-R1"))


def test_experts_are_split_evenly_and_the_last_rank_takes_the_rest():
    assert experts_on_busiest_rank(256, 16) == 16
    assert experts_on_busiest_rank(256, 24) == 10 + 16
    assert experts_on_busiest_rank(8, 8) == 1


def test_every_expert_byte_lands_once_across_the_group(r1):
    per_layer = layer_weight_bytes(r1)
    experts = sum(
        per_layer[index] * routed_expert_parameters(r1, index) / layer_parameters(r1, index) for index in range(61)
    )
    # Growing the group from 16 to 64 ranks takes 3/4 of each rank's expert share off it, and nothing else.
    sixteen = expert_parallel_stage_weight_bytes(r1, 0, 61, 8, 2, 0, 1)
    sixty_four = expert_parallel_stage_weight_bytes(r1, 0, 61, 8, 8, 0, 1)
    assert sixteen - sixty_four == pytest.approx(experts / 16 - experts / 64, rel=1e-6)


@pytest.mark.parametrize(
    "tp, dp, low, high",
    [
        # DeepSeek R1 (641 GiB FP8 checkpoint, 627 GiB loaded without the MTP layer): 2x8 H100, 4x8 A800, 8x8 A100-40GB.
        (8, 2, 40.0, 42.5),
        (8, 4, 21.0, 23.0),
        (8, 8, 11.5, 13.5),
    ],
)
def test_r1_weights_per_gpu_on_the_seed_deployments(r1, tp, dp, low, high):
    assert low <= expert_parallel_stage_weight_bytes(r1, 0, 61, tp, dp, 0, 1) / GIB <= high


def test_problems_name_what_vllm_needs(r1):
    dense = load_model_spec_from_dir(str(MODELS / "Qwen3-8B"))
    assert "mixture-of-experts" in expert_parallel_problem(dense, 8, 2)
    assert "at least 2" in expert_parallel_problem(r1, 1, 1)
    assert "larger than the 256 routed experts" in expert_parallel_problem(r1, 8, 64)
    assert expert_parallel_problem(r1, 8, 8) is None
