# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import itertools

import gguf
import pytest
from gguf_files import write_llama31_8b_q4_k_m, write_qwen25_72b_q2_k, write_tiny_llama_f16

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import read_gguf_model
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import (
    KV_CACHE_TYPES,
    GGUFPlanError,
    kv_cache_layer_bytes,
    layer_placement,
    order_devices,
    plan_gguf,
)

MIB = 1024 * 1024
# The seed (GPUStack's tutorial): two nodes with one Tesla P40 each, about 22,000 MiB free per GPU. The head's
# GPU is local to llama-server, the worker's is reached through rpc-server.
HEAD_P40 = {"name": "head P40", "node": "node1", "kind": "gpu", "memory_free_mib": 22000}
WORKER_P40 = {"name": "10.0.0.12:50052", "node": "node2", "kind": "rpc", "memory_free_mib": 22000}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return read_gguf_model([str(write_qwen25_72b_q2_k(tmp_path_factory.mktemp("qwen"))[0])])


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    return read_gguf_model([str(write_llama31_8b_q4_k_m(tmp_path_factory.mktemp("llama"))[0])])


def per_device_layers(placement, devices):
    return [sum(1 for device in placement if device == index) for index in range(devices)]


def test_equal_devices_split_81_layers_as_llama_cpp_does():
    # upper_bound over split points [0.5, 1.0] of (il / 81): layers 0-40 on the first device, 41-80 on the second,
    # the output layer (il 80) among them.
    placement = layer_placement(80, 81, [22000, 22000])

    assert per_device_layers(placement, 2) == [41, 40]
    assert placement[-1] == 1 and None not in placement


@pytest.mark.parametrize("counts", [[41, 40], [31, 31, 19], [1, 0, 80], [0, 81], [27, 27, 27]])
def test_layer_counts_given_as_tensor_split_place_exactly_those_layers(counts):
    assert per_device_layers(layer_placement(80, 81, counts), len(counts)) == counts


def test_layer_counts_survive_float32_split_points_on_every_small_split():
    # llama.cpp computes the split points and positions in float32; counts must still round-trip exactly.
    for blocks, devices in ((32, 3), (61, 4), (80, 3)):
        for counts in itertools.product(range(0, blocks + 2, 7), repeat=devices - 1):
            rest = blocks + 1 - sum(counts)
            if rest < 0:
                continue
            wanted = [*list(counts), rest]
            assert per_device_layers(layer_placement(blocks, blocks + 1, wanted), devices) == wanted


def test_fewer_gpu_layers_leave_the_first_layers_on_the_cpu():
    placement = layer_placement(80, 41, [1, 1])

    assert placement[:40] == [None] * 40
    assert per_device_layers(placement, 2) == [21, 20] and placement[-1] == 1
    assert layer_placement(80, 0, [1, 1]) == [None] * 81


def test_rpc_devices_come_first_as_llama_cpp_lists_them():
    devices, head = order_devices(
        [
            {"name": "local0", "kind": "gpu", "memory_free_mib": 1},
            {"name": "a:50052", "kind": "rpc", "memory_free_mib": 1},
            {"name": "ram", "kind": "cpu", "memory_free_mib": 64000},
            {"name": "b:50052", "kind": "rpc", "memory_free_mib": 1},
        ]
    )

    assert [(device.name, device.llama_name) for device in devices] == [
        ("a:50052", "RPC0"),
        ("b:50052", "RPC1"),
        ("local0", "CUDA0"),
    ]
    assert head.name == "ram"


def test_kv_cache_sizes_follow_ggml_block_sizes(qwen):
    # 80 layers x 8192 cells x (8 KV heads x 128) values, K and V: 2.50 GiB in f16.
    assert sum(kv_cache_layer_bytes(qwen, 8192, "f16", "f16")) == 80 * 8192 * 1024 * 2 * 2
    for cache_type in ("q8_0", "q4_0"):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]]
        assert KV_CACHE_TYPES[cache_type] == (block, size)
        assert sum(kv_cache_layer_bytes(qwen, 8192, cache_type, cache_type)) == 80 * 8192 * 2 * 1024 // block * size


def test_the_context_is_padded_to_256_cells(qwen):
    plan = plan_gguf(qwen, [WORKER_P40, HEAD_P40], ctx_size=8000)

    assert plan["ctx_cells"] == 8192
    assert sum(device["kv_cache_mib"] for device in plan["devices"]) == 2560.0


def test_seed_case_does_not_fit_one_p40(qwen):
    plan = plan_gguf(qwen, [HEAD_P40], ctx_size=8192)

    assert plan["fits"] is False
    assert "head P40 (CUDA0) needs" in plan["advice"]
    assert "1 more device(s)" in plan["advice"]


def test_seed_case_fits_two_nodes(qwen):
    plan = plan_gguf(qwen, [HEAD_P40, WORKER_P40], ctx_size=8192)

    assert plan["fits"] is True and plan["advice"] is None
    assert plan["n_gpu_layers"] == 81
    assert plan["tensor_split_arg"] == "41,40"
    assert [(d["llama_device"], d["layers"], d["output_layer"]) for d in plan["devices"]] == [
        ("RPC0", 41, False),
        ("CUDA0", 39, True),
    ]
    assert plan["layers"] == {"input": 1, "transformer": 80, "output": 1, "on_head": 0}
    for device in plan["devices"]:
        assert device["total_mib"] + device["reserve_mib"] <= 22000


def test_seed_case_is_close_to_gguf_parser(qwen):
    """The seed's gguf-parser table for the same file at ctx 8192 on one device (80 + 1 layers offloaded):

    RAM    LAYERS (I + T + O) 1 + 0 + 0, UMA 259.89 MiB, NONUMA 409.89 MiB
    VRAM 0 LAYERS (T + O) 80 + 1,        UMA 2.50 GiB,   NONUMA 28.89 GiB

    UMA VRAM is the KV cache alone (weights are mapped), so it must match exactly. NONUMA adds weights, compute and
    a 250 MiB platform footprint, as this plan's total plus reserve does; NONUMA RAM (footprint, the input
    embedding and host buffers) compares with the head's RAM. gguf-parser's release of the time counted the
    weights and the compute graph differently from today's llama.cpp, which this planner follows, so the
    totals agree within 10%, not exactly.
    """
    plan = plan_gguf(qwen, [HEAD_P40], ctx_size=8192)
    device = plan["devices"][0]
    table = plan["table"]

    assert device["kv_cache_mib"] == 2.50 * 1024
    assert (device["total_mib"] + device["reserve_mib"]) / (28.89 * 1024) == pytest.approx(1.0, abs=0.10)
    assert plan["head_ram_mib"] / 409.89 == pytest.approx(1.0, abs=0.10)
    assert "LAYERS (I + T + O)" in table and "1 + 0 + 0" in table and "0 + 80 + 1" in table


def test_free_memory_that_would_overfill_a_device_is_rebalanced_by_layers(qwen):
    devices = [
        {"name": "w1", "node": "w1", "kind": "rpc", "memory_free_mib": 12000},
        {"name": "w2", "node": "w2", "kind": "rpc", "memory_free_mib": 12000},
        {"name": "gpu", "node": "head", "kind": "gpu", "memory_free_mib": 9000},
    ]
    naive = plan_gguf(qwen, devices, ctx_size=8192, tensor_split=[12000, 12000, 9000])
    planned = plan_gguf(qwen, devices, ctx_size=8192)

    assert naive["fits"] is False
    assert planned["fits"] is True
    assert sum(planned["tensor_split"]) == 81
    # Feeding the printed split back (as llama-server would get it) gives the same placement and memory.
    again = plan_gguf(qwen, devices, ctx_size=8192, tensor_split=planned["tensor_split"])
    assert [d["total_mib"] for d in again["devices"]] == [d["total_mib"] for d in planned["devices"]]


def test_a_given_tensor_split_is_kept_and_blamed_when_it_overflows(qwen):
    plan = plan_gguf(qwen, [WORKER_P40, HEAD_P40], ctx_size=8192, tensor_split=[1, 3])

    # Split points [0.25, 1.0] over 81 layers: il / 81 < 0.25 holds for il 0-20, so 21 layers on RPC0.
    assert plan["tensor_split_arg"] == "21,60"
    assert plan["fits"] is False
    assert "drop tensor_split" in plan["advice"]


def test_a_tensor_split_of_the_wrong_length_names_the_devices(qwen):
    with pytest.raises(GGUFPlanError) as error:
        plan_gguf(qwen, [WORKER_P40, HEAD_P40], tensor_split=[1.0])

    assert error.value.field == "tensor_split"
    assert "RPC0, CUDA0" in str(error.value)


def test_a_long_context_suggests_a_shorter_one_or_a_quantized_cache(llama8b):
    plan = plan_gguf(llama8b, [{"name": "gpu", "kind": "gpu", "memory_free_mib": 11000}], ctx_size=131072)

    assert plan["fits"] is False
    # 32 layers x 131072 cells x 1024 values x 2 (K, V) x 2 bytes = 16 GiB of KV cache.
    assert plan["devices"][0]["kv_cache_mib"] == 16384.0
    assert "ctx_size 32768 (now 131072)" in plan["advice"]
    assert "cache_type_k/cache_type_v q4_0" in plan["advice"]


def test_layers_kept_on_the_head_count_against_its_ram(llama8b):
    devices = [
        {"name": "gpu", "kind": "gpu", "memory_free_mib": 4000},
        {"name": "ram", "node": "head", "kind": "cpu", "memory_free_mib": 1500},
    ]
    plan = plan_gguf(llama8b, devices, ctx_size=4096, n_gpu_layers=20)

    assert plan["layers"] == {"input": 1, "transformer": 19, "output": 1, "on_head": 13}
    assert plan["head"]["free_mib"] == 1500
    assert plan["head"]["fits"] is False and plan["fits"] is False
    assert "the head's RAM needs" in plan["advice"]
    roomy = plan_gguf(llama8b, devices, ctx_size=4096, n_gpu_layers=20, head_ram_free_mib=8000)
    assert roomy["fits"] is True


def test_the_default_context_is_4096_or_the_models_if_smaller(tmp_path, qwen):
    tiny = read_gguf_model([str(write_tiny_llama_f16(tmp_path)[0])])
    device = [{"name": "rpc", "kind": "rpc", "memory_free_mib": 2000}]

    assert plan_gguf(qwen, [WORKER_P40, HEAD_P40])["ctx_size"] == 4096
    assert plan_gguf(tiny, device)["ctx_size"] == 2048


def test_a_quantized_v_cache_needs_flash_attention(qwen):
    with pytest.raises(GGUFPlanError) as error:
        plan_gguf(qwen, [HEAD_P40], cache_type_v="q8_0", flash_attention=False)
    assert error.value.field == "cache_type_v"


def test_without_flash_attention_each_device_holds_the_scores(qwen):
    with_fa = plan_gguf(qwen, [WORKER_P40, HEAD_P40], ctx_size=8192)
    without = plan_gguf(qwen, [WORKER_P40, HEAD_P40], ctx_size=8192, flash_attention=False)

    # KQ of 64 heads over 8192 cells for 512 tokens in f32 is 1 GiB on every device; with flash attention the
    # FFN's projections are the peak instead.
    for fast, slow in zip(with_fa["devices"], without["devices"]):
        assert slow["compute_buffer_mib"] >= 1024 > fast["compute_buffer_mib"]


def test_only_the_head_cpu_means_nothing_is_offloaded(tmp_path):
    tiny = read_gguf_model([str(write_tiny_llama_f16(tmp_path)[0])])
    plan = plan_gguf(tiny, [{"name": "ram", "node": "head", "kind": "cpu", "memory_free_mib": 1000}], ctx_size=256)

    assert plan["n_gpu_layers"] == 0 and plan["devices"] == [] and plan["tensor_split_arg"] == ""
    assert plan["layers"] == {"input": 1, "transformer": 0, "output": 0, "on_head": 4}
    assert plan["fits"] is True
