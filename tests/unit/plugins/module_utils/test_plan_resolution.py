# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""From the planner's options to what vLLM runs with: releases, extra arguments, release defaults, quantization."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB, load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_resolution import resolve_run

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


@pytest.fixture(scope="module")
def qwen3_8b():
    return load_model_spec_from_dir(str(MODELS / "Qwen3-8B"))


@pytest.mark.parametrize("version", ["0.6.4", "0.8.5", "0.33.0", "0.34.0"])
def test_unmodelled_releases_are_refused_before_anything_is_sized(qwen3_8b, version):
    with pytest.raises(PlanError) as error:
        resolve_run(qwen3_8b, PlanOptions(vllm_version=version))
    assert error.value.field == "vllm_version"
    assert "llmserve_vllm_version" in str(error.value) and "0.9 to 0.32" in str(error.value)


@pytest.mark.parametrize("version, utilization", [(None, 0.9), ("0.19.1", 0.9), ("0.20.0", 0.92), ("0.32.0", 0.92)])
def test_unset_utilization_is_the_releases_default(qwen3_8b, version, utilization):
    assert resolve_run(qwen3_8b, PlanOptions(vllm_version=version)).options.gpu_memory_utilization == utilization
    set_explicitly = PlanOptions(vllm_version=version, gpu_memory_utilization=0.8)
    assert resolve_run(qwen3_8b, set_explicitly).options.gpu_memory_utilization == 0.8


def test_extra_arguments_replace_vllms_defaults(qwen3_8b):
    run = resolve_run(
        qwen3_8b,
        PlanOptions(
            vllm_version="0.19.1",
            extra_args=("--max-num-seqs", "64", "--kv-cache-dtype=fp8", "--enforce-eager", "--quantization", "fp8"),
        ),
    )
    assert run.options.max_num_seqs == 64
    assert run.options.kv_cache_dtype == "fp8"
    assert run.options.enforce_eager is True
    assert run.spec.quantization.method == "fp8"
    assert run.spec.loaded_weights_bytes < 0.6 * qwen3_8b.loaded_weights_bytes
    assert run.from_extra_args["max_num_seqs"] == "--max-num-seqs 64"


def test_an_extra_argument_that_contradicts_an_option_is_an_error(qwen3_8b):
    with pytest.raises(PlanError) as error:
        resolve_run(qwen3_8b, PlanOptions(max_num_seqs=128, extra_args=("--max-num-seqs", "64")))
    assert error.value.field == "vllm_serve_extra_args"
    assert "--max-num-seqs 64" in str(error.value) and "128" in str(error.value)
    # The same value twice is fine.
    assert (
        resolve_run(qwen3_8b, PlanOptions(max_num_seqs=64, extra_args=("--max-num-seqs", "64"))).options.max_num_seqs
        == 64
    )


def test_unreadable_extra_arguments_name_the_variable(qwen3_8b):
    with pytest.raises(PlanError) as error:
        resolve_run(qwen3_8b, PlanOptions(extra_args=("--cpu-offload-gb", "lots")))
    assert error.value.field == "vllm_serve_extra_args"


def test_cpu_offload_is_read_as_gib(qwen3_8b):
    run = resolve_run(qwen3_8b, PlanOptions(extra_args=("--cpu-offload-gb", "4")))
    assert run.options.cpu_offload_gb * GIB == 4 * GIB
