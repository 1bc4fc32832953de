# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which vLLM releases the planner models, and the terms that change between them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_releases import (
    cuda_graph_capture_sizes,
    cuda_graph_count,
    extrapolates_cuda_graphs,
    parse_release,
    release_terms,
    unmodelled_release_reason,
)

DOCUMENT = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "fixtures" / "planner" / "vllm_kv_observations.yaml").read_text()
)


@pytest.mark.parametrize("entry", DOCUMENT["refused_releases"], ids=lambda entry: str(entry["version"]))
def test_releases_outside_the_modelled_range_are_refused_naming_the_variable(entry):
    reason = unmodelled_release_reason(str(entry["version"]))
    assert reason is not None
    assert "llmserve_vllm_version" in reason
    assert "0.9 to 0.32" in reason


@pytest.mark.parametrize("version", [None, "", "0.9.2", "v0.11.0", "0.19.1", "0.27.1", "0.32.0", "0.32.1rc1.dev5+g0"])
def test_modelled_releases_are_accepted(version):
    assert unmodelled_release_reason(version) is None


def test_text_that_is_no_release_is_an_error():
    with pytest.raises(ValueError, match="llmserve_vllm_version"):
        parse_release("latest")


@pytest.mark.parametrize(
    "version, utilization, subtracts_graphs, nccl_first, large_gpu_batch",
    [
        (None, 0.9, False, False, False),
        ("0.10.1.1", 0.9, False, False, False),
        ("0.11.0", 0.9, False, True, False),
        ("0.19.1", 0.9, False, True, False),
        ("0.20.0", 0.92, True, True, False),
        ("0.27.1", 0.92, True, True, False),
        ("0.28.0", 0.92, True, True, True),
        ("0.32.0", 0.92, True, True, True),
    ],
)
def test_terms_follow_the_release(version, utilization, subtracts_graphs, nccl_first, large_gpu_batch):
    terms = release_terms(version)
    assert terms.default_gpu_memory_utilization == utilization
    assert terms.subtracts_cuda_graph_estimate is subtracts_graphs
    assert terms.nccl_before_snapshot is nccl_first
    assert terms.large_gpu_batch is large_gpu_batch


def test_capture_list_matches_what_vllm_logs_for_the_default_batch():
    # "cudagraph_capture_sizes: [1, 2, 4, 8, 16, ..., 496, 512]" and "PIECEWISE=51 (largest=512), FULL=35
    # (largest=256)" for max_num_seqs 256 and 2048 batched tokens (vLLM 0.19.1 and 0.22 logs).
    sizes = cuda_graph_capture_sizes(256, 2048)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-3:] == [480, 496, 512]
    assert len(sizes) == 51
    assert cuda_graph_count(256, 2048) == 51 + 35
    # max_num_seqs 6 captures up to 12; an eight-token batch limit caps it there.
    assert cuda_graph_capture_sizes(6, 8192) == [1, 2, 4, 6, 8]
    assert cuda_graph_capture_sizes(256, 8) == [1, 2, 4, 8]


def test_model_runner_v2_measures_its_graphs_from_0_25_for_dense_models_only():
    assert extrapolates_cuda_graphs("0.24.0", moe=False)
    assert not extrapolates_cuda_graphs("0.25.0", moe=False)
    assert extrapolates_cuda_graphs("0.27.1", moe=True)
