# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The GGUF planner's per-device estimate against real llama-server logs, one per configuration.

Each log under fixtures/llama_cpp/captured/ was captured with the sandbox's CPU build of llama.cpp (the command
is in its header): two tiny Llama shapes, context 1024-4096, micro-batch 128-512, flash attention on and off,
two RPC devices (pipelined), one RPC device, everything on the CPU, and a partial offload. The test writes a
GGUF with the captured model's exact tensors (no weights) and plans the same flags.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
from gguf_files import TINY_LLAMA_METADATA, llama_style_tensors, write_sparse_gguf

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import read_gguf_model
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import plan_gguf
from ansible_collections.llmserve.cluster.plugins.module_utils._llama_server_log import compare, parse_memory

CAPTURED = Path(__file__).resolve().parents[2] / "fixtures" / "llama_cpp" / "captured"
TOLERANCE = 0.10
# llama-server prints MiB with two decimals.
PRINT_ROUNDING_MIB = 0.02

# tests/sandbox/make_tiny_model.py's two shapes as convert_hf_to_gguf.py writes them (untied output, f16
# matrices, f32 norms): the default tiny-llama and tiny-llama-300mb (--size-mb 300).
SHAPES = {
    "tiny-llama": dict(block_count=4, embedding_length=256, feed_forward_length=512, head_count=4, head_count_kv=2),
    "tiny-llama-300mb": dict(
        block_count=18, embedding_length=1024, feed_forward_length=2048, head_count=16, head_count_kv=4
    ),
}
F16_LAYERS = {name: "F16" for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}

# (log, model, rpc devices, planner options matching the command line)
CASES = [
    ("base2rpc", "tiny-llama", 2, dict(ctx_size=2048, tensor_split=[3, 2])),
    ("ctx4096", "tiny-llama", 2, dict(ctx_size=4096, tensor_split=[3, 2])),
    ("ctx1024", "tiny-llama", 2, dict(ctx_size=1024, tensor_split=[3, 2])),
    ("ub256", "tiny-llama", 2, dict(ctx_size=2048, ubatch_size=256, tensor_split=[3, 2])),
    ("faoff", "tiny-llama", 2, dict(ctx_size=2048, flash_attention=False, tensor_split=[3, 2])),
    (
        "faoff-ub128-ctx1024",
        "tiny-llama",
        2,
        dict(ctx_size=1024, ubatch_size=128, flash_attention=False, tensor_split=[3, 2]),
    ),
    ("np1", "tiny-llama", 2, dict(ctx_size=2048, tensor_split=[3, 2], parallel=1)),
    ("one-rpc", "tiny-llama", 1, dict(ctx_size=2048)),
    ("cpu-only", "tiny-llama", 0, dict(ctx_size=2048, n_gpu_layers=0)),
    ("partial", "tiny-llama", 2, dict(ctx_size=2048, n_gpu_layers=3)),
    ("m300-2rpc", "tiny-llama-300mb", 2, dict(ctx_size=2048)),
    ("m300-2rpc-faoff", "tiny-llama-300mb", 2, dict(ctx_size=1024, flash_attention=False)),
    ("m300-2rpc-ub256", "tiny-llama-300mb", 2, dict(ctx_size=4096, ubatch_size=256)),
    ("m300-cpu", "tiny-llama-300mb", 0, dict(ctx_size=2048, n_gpu_layers=0)),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("captured-shapes")
    built = {}
    for name, shape in SHAPES.items():
        metadata = dict(
            TINY_LLAMA_METADATA,
            **{
                "general.name": name,
                "llama.block_count": shape["block_count"],
                "llama.embedding_length": shape["embedding_length"],
                "llama.feed_forward_length": shape["feed_forward_length"],
                "llama.attention.head_count": shape["head_count"],
                "llama.attention.head_count_kv": shape["head_count_kv"],
            },
        )
        tensors = llama_style_tensors(
            vocab_size=512, layer_types=F16_LAYERS, embedding_type="F16", output_type="F16", **shape
        )
        path = write_sparse_gguf(directory / f"{name}-f16.gguf", "llama", metadata, tensors)[0]
        built[name] = read_gguf_model([str(path)])
    return built


def rpc_devices(count):
    return [
        {"name": f"127.0.0.1:{50160 + index}", "node": f"worker{index}", "kind": "rpc", "memory_free_mib": 24105}
        for index in range(count)
    ]


def estimate_and_log(models, case):
    log_name, model_name, rpc_count, options = case
    plan = plan_gguf(models[model_name], rpc_devices(rpc_count), **options)
    return plan, parse_memory((CAPTURED / f"{log_name}.log").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_every_device_is_within_ten_percent_of_what_llama_server_allocated(models, case):
    plan, logged = estimate_and_log(models, case)
    comparison = compare(plan, logged, tolerance=TOLERANCE)

    assert comparison["within"], comparison
    assert set(comparison["devices"]) == {device["llama_device"] for device in plan["devices"]} | {"Host"}
    for device, row in comparison["devices"].items():
        # compare() forgives 1 MiB, more than some whole compute buffers here: hold compute to 10% itself.
        compute = row["compute_mib"]
        allowed = max(TOLERANCE * compute["actual"], PRINT_ROUNDING_MIB)
        assert abs(compute["estimate"] - compute["actual"]) <= allowed, (device, compute)


def test_the_pipelined_two_device_case_matches_to_the_printed_digit(models):
    """The sandbox's configuration (issue 9): the scheduler's four input copies and ggml-alloc's placement of the
    intermediate tensors add up to exactly what llama-server printed."""
    plan, logged = estimate_and_log(models, CASES[0])
    estimate = {device["llama_device"]: device["compute_buffer_mib"] for device in plan["devices"]}
    estimate["Host"] = plan["head"]["compute_buffer_mib"]

    assert (
        estimate
        == {name: logged[name]["compute_mib"] for name in estimate}
        == {
            "RPC0": 14.04,
            "RPC1": 11.54,
            "Host": 10.55,
        }
    )


def test_without_flash_attention_the_kq_scores_dominate_and_are_counted(models):
    with_fa, _unused = estimate_and_log(models, CASES[0])
    without, logged = estimate_and_log(models, CASES[4])

    # 4 heads x 2048 cells x 512 tokens in f32 is 16 MiB on each device; the f32 mask (4 copies of 4 MiB) on all.
    for fast, slow in zip(with_fa["devices"], without["devices"]):
        assert slow["compute_buffer_mib"] - fast["compute_buffer_mib"] >= 16 + 4 * 2 - 1
    assert without["head"]["compute_buffer_mib"] == pytest.approx(logged["Host"]["compute_mib"], abs=0.02)


def test_the_captured_models_are_the_shapes_the_tests_write():
    for log_name, model_name, _count, _options in CASES:
        text = (CAPTURED / f"{log_name}.log").read_text(encoding="utf-8")
        assert f"/models/{model_name}-gguf/{model_name}-f16.gguf" in text.splitlines()[3], log_name
    assert gguf.GGMLQuantizationType["F16"]  # the writer's type names are gguf's
