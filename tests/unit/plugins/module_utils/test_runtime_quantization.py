# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Weights after vLLM's --quantization at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    ModelSpecError,
    load_model_spec_from_dir,
    with_runtime_quantization,
)

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


def test_online_fp8_keeps_one_byte_per_linear_weight_and_the_embeddings_in_bf16():
    spec = load_model_spec_from_dir(str(MODELS / "Llama-3.1-70B-Instruct"))
    fp8 = with_runtime_quantization(spec, "fp8")
    # RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic has this layout (per-channel FP8 linear weights, bf16 embeddings
    # and head) and the Llama-3.1-70B shapes; vLLM 0.11.0 logs "Model loading took 67.72 GiB" for it on one H100
    # (llm-d/llm-d-benchmark config_explorer/empirical-vllm-memory-results.md).
    assert fp8.loaded_weights_bytes / GIB == pytest.approx(67.72, rel=0.005)
    assert fp8.quantization.method == "fp8"
    assert spec.loaded_weights_bytes / GIB == pytest.approx(131.42, abs=0.01)


def test_no_flag_or_the_checkpoints_own_method_changes_nothing():
    spec = load_model_spec_from_dir(str(MODELS / "Qwen2-72B-Instruct-AWQ"))
    assert with_runtime_quantization(spec, None) is spec
    assert with_runtime_quantization(spec, "awq") is spec


def test_a_second_method_on_a_quantized_checkpoint_is_refused_like_vllm_does():
    spec = load_model_spec_from_dir(str(MODELS / "Qwen2-72B-Instruct-AWQ"))
    with pytest.raises(ModelSpecError) as error:
        with_runtime_quantization(spec, "fp8")
    assert error.value.field == "vllm_serve_extra_args"


def test_methods_the_planner_cannot_size_are_refused():
    spec = load_model_spec_from_dir(str(MODELS / "Qwen3-8B"))
    with pytest.raises(ModelSpecError, match="bitsandbytes"):
        with_runtime_quantization(spec, "bitsandbytes")
