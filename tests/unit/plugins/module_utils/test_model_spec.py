# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    ModelSpecError,
    layer_weight_bytes,
    load_model_spec_from_dir,
    load_model_spec_from_hub,
    parse_config,
    read_safetensors_header,
    safetensors_header_bytes,
)

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"


def load(name):
    return load_model_spec_from_dir(str(MODELS / name))


def write_safetensors_header(path: Path, tensors: dict) -> None:
    """A safetensors file cut after its header: the planner must never need the tensor data."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, bits) in tensors.items():
        size = bits
        for dimension in shape:
            size *= dimension
        size //= 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_qwen3_8b_shape_and_size_come_from_config_and_index():
    spec = load("Qwen3-8B")
    assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads) == (36, 4096, 32, 8)
    assert (spec.head_dim, spec.vocab_size, spec.intermediate_size) == (128, 151936, 12288)
    assert spec.weights_bytes == 16_381_470_720
    assert spec.weights_source == "model.safetensors.index.json metadata.total_size"
    assert spec.max_model_len == 40960
    assert spec.dtype == "bfloat16" and not spec.tie_word_embeddings
    assert spec.mla is None and spec.moe is None and spec.quantization is None


def test_llama3_rope_scaling_does_not_stretch_the_context():
    spec = load("Llama-3.1-70B-Instruct")
    assert spec.max_model_len == 131072
    assert spec.weights_bytes == 141_107_412_992


def test_qwen_v1_keys_are_understood():
    spec = load("Qwen-14B-Chat")
    assert spec.architecture == "QWenLMHeadModel"
    assert spec.head_dim == 128  # kv_channels
    assert spec.num_kv_heads == 40  # no GQA in QWen v1
    assert spec.intermediate_size == 13696  # QWen stores twice the width of w1/w2
    # vLLM takes the smallest length key: seq_length 2048 beats max_position_embeddings 8192.
    assert spec.max_model_len == 2048


def test_deepseek_r1_mla_moe_and_fp8_blocks():
    spec = load("DeepSeek-R1")
    assert spec.mla is not None and spec.mla.latent_size == 512 + 64
    assert spec.mla.q_lora_rank == 1536
    assert spec.moe is not None and spec.moe.num_experts == 256 and spec.moe.experts_per_token == 8
    assert spec.moe.moe_layers == tuple(range(3, 61))  # first_k_dense_replace = 3
    assert spec.moe.shared_expert_intermediate_size == 2048
    assert spec.quantization is not None and spec.quantization.method == "fp8"
    assert spec.quantization.weight_block_size == (128, 128)
    # yarn: original 4096 positions x factor 40
    assert spec.max_model_len == 163840


def test_deepseek_r1_mtp_layer_is_not_counted_as_loaded_weights():
    spec = load("DeepSeek-R1")
    assert spec.mtp_layers == 1
    assert spec.weights_bytes == 688_586_727_753
    # The main model is about 673.15e9 bytes in FP8; the MTP layer (with its own embedding and head) is the rest.
    assert abs(spec.loaded_weights_bytes - 673.15e9) / 673.15e9 < 0.005
    # The BF16 upcast ships no MTP tensors, so nothing is taken off.
    bf16 = load("DeepSeek-R1-BF16")
    assert bf16.mtp_bytes == 0 and bf16.quantization is None
    assert bf16.weights_bytes == 1_342_052_838_400


def test_layer_split_follows_dense_and_moe_layers():
    spec = load("DeepSeek-R1-BF16")
    layers = layer_weight_bytes(spec)
    assert len(layers) == 61
    assert sum(layers) == spec.loaded_weights_bytes - 2 * spec.embedding_bytes
    # A dense layer (index 0) is about twenty times smaller than a mixture-of-experts layer.
    assert layers[3] > 15 * layers[0]
    assert layers[3] == pytest.approx(layers[60], rel=1e-6)


def test_awq_quantization_config():
    spec = load("Qwen2-72B-Instruct-AWQ")
    assert spec.quantization is not None
    assert (spec.quantization.method, spec.quantization.bits, spec.quantization.group_size) == ("awq", 4, 128)
    assert spec.quantization.is_grouped_int
    assert spec.dtype == "float16"


def test_mixtral_experts_use_intermediate_size_on_every_layer():
    spec = load("Mixtral-8x7B-Instruct-v0.1")
    assert spec.moe is not None
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.expert_intermediate_size) == (8, 2, 14336)
    assert spec.moe.moe_layers == tuple(range(32))
    assert spec.weights_bytes == 93_405_585_408


def test_single_file_model_is_sized_from_its_safetensors_header():
    spec = load("Qwen2.5-0.5B-Instruct")
    assert spec.weights_bytes == 988_065_536
    assert spec.weights_source == "safetensors headers"
    assert spec.tie_word_embeddings
    header = read_safetensors_header(str(MODELS / "Qwen2.5-0.5B-Instruct" / "model.safetensors"))
    assert header["model.layers.23.mlp.down_proj.weight"]["shape"] == [896, 4864]


def test_nested_text_config_is_read_like_a_flat_one():
    flat = json.loads((MODELS / "Qwen3-8B" / "config.json").read_text())
    nested = {
        "architectures": ["Qwen3ForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "text_config": {key: value for key, value in flat.items() if key != "architectures"},
        "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27},
    }
    spec = parse_config(nested, name="nested", weights_bytes=1)
    assert (spec.num_layers, spec.hidden_size, spec.num_kv_heads, spec.head_dim) == (36, 4096, 8, 128)
    assert spec.architecture == "Qwen3ForConditionalGeneration"


def test_index_without_total_size_falls_back_to_shard_headers(tmp_path):
    shutil.copy(MODELS / "Qwen3-8B" / "config.json", tmp_path / "config.json")
    write_safetensors_header(
        tmp_path / "model-00001-of-00002.safetensors",
        {"model.embed_tokens.weight": ("BF16", [151936, 4096], 16)},
    )
    write_safetensors_header(
        tmp_path / "model-00002-of-00002.safetensors",
        {"lm_head.weight": ("BF16", [151936, 4096], 16), "model.norm.weight": ("F32", [4096], 32)},
    )
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    spec = load_model_spec_from_dir(str(tmp_path))
    assert spec.weights_bytes == 2 * 151936 * 4096 * 2 + 4096 * 4
    assert spec.weights_source == "safetensors headers"


def test_sub_byte_dtypes_are_counted_in_bits():
    header = {"w": {"dtype": "F4", "shape": [4096, 4096]}, "s": {"dtype": "F8_E8M0", "shape": [4096, 128]}}
    assert safetensors_header_bytes(header) == 4096 * 4096 // 2 + 4096 * 128


def test_model_dir_without_config_names_the_field(tmp_path):
    with pytest.raises(ModelSpecError) as error:
        load_model_spec_from_dir(str(tmp_path))
    assert error.value.field == "model_dir"
    assert "no config.json" in str(error.value)


def test_missing_shards_without_total_size_is_an_error(tmp_path):
    shutil.copy(MODELS / "Qwen3-8B" / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}})
    )
    with pytest.raises(ModelSpecError, match=r"has no metadata\.total_size and the shards"):
        load_model_spec_from_dir(str(tmp_path))


def test_config_without_layer_count_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4096, "num_attention_heads": 32}))
    with pytest.raises(ModelSpecError, match="layer count"):
        load_model_spec_from_dir(str(tmp_path))


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(ModelSpecError, match="not a safetensors file"):
        read_safetensors_header(str(path))


class FakeHub:
    """Serves a fixture directory the way hf_hub_download would: a local path per file, None when absent."""

    def __init__(self, directory: Path, parameter_count=None):
        self.directory = directory
        self.parameter_count = parameter_count
        self.fetched = []

    def fetch(self, filename):
        self.fetched.append(filename)
        path = self.directory / filename
        return str(path) if path.is_file() else None

    def count(self):
        return self.parameter_count


def test_hub_reads_config_and_index_only():
    hub = FakeHub(MODELS / "Llama-3.1-70B-Instruct")
    spec = load_model_spec_from_hub("meta-llama/Llama-3.1-70B-Instruct", "main", fetch_file=hub.fetch)
    assert spec.name == "meta-llama/Llama-3.1-70B-Instruct"
    assert spec.weights_bytes == load("Llama-3.1-70B-Instruct").weights_bytes
    assert not any(name.endswith(".safetensors") for name in hub.fetched)
    assert "config.json" in hub.fetched and "model.safetensors.index.json" in hub.fetched


def test_hub_without_index_uses_the_safetensors_metadata():
    # Qwen2.5-0.5B-Instruct has a single model.safetensors: 494,032,768 bf16 parameters.
    hub = FakeHub(MODELS / "Qwen2.5-0.5B-Instruct", parameter_count={"BF16": 494_032_768})
    spec = load_model_spec_from_hub("Qwen/Qwen2.5-0.5B-Instruct", fetch_file=hub.fetch, fetch_parameter_count=hub.count)
    assert spec.weights_bytes == 988_065_536
    assert spec.weights_source == "safetensors metadata on the Hub"


def test_hub_errors_name_the_model_field(tmp_path):
    with pytest.raises(ModelSpecError) as error:
        load_model_spec_from_hub("not a repo id", fetch_file=FakeHub(tmp_path).fetch)
    assert error.value.field == "model"
    with pytest.raises(ModelSpecError, match=r"has no config\.json") as error:
        load_model_spec_from_hub("org/empty", fetch_file=FakeHub(tmp_path).fetch)
    assert error.value.field == "model"


def test_hub_metadata_failure_is_reported(tmp_path):
    shutil.copy(MODELS / "Qwen3-8B" / "config.json", tmp_path / "config.json")

    def broken():
        raise OSError("connection reset")

    with pytest.raises(ModelSpecError, match="connection reset"):
        load_model_spec_from_hub("Qwen/Qwen3-8B", fetch_file=FakeHub(tmp_path).fetch, fetch_parameter_count=broken)


def test_fixture_configs_are_valid_json():
    for directory in sorted(MODELS.iterdir()):
        if directory.is_dir():
            config = json.loads((directory / "config.json").read_text())
            assert config["architectures"], directory.name
            assert os.path.getsize(directory / "config.json") > 100
