# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading the memory-relevant vLLM flags from vllm_serve_extra_args."""

from __future__ import annotations

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._engine_flags import (
    EngineFlagError,
    parse_engine_flags,
)


def test_flags_in_both_spellings_and_forms_are_read():
    flags = parse_engine_flags(
        [
            "--trust-remote-code",
            "--quantization",
            "fp8",
            "--kv_cache_dtype=fp8_e4m3",
            "--block-size",
            "32",
            "--enforce-eager",
            "--max-num-seqs=64",
            "--max_num_batched_tokens",
            "4096",
            "--cpu-offload-gb",
            "2.5",
            "--no-enable-prefix-caching",
            "--kv-transfer-config",
            '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}',
        ]
    )
    assert flags.values == {
        "quantization": "fp8",
        "kv_cache_dtype": "fp8_e4m3",
        "block_size": 32,
        "enforce_eager": True,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "cpu_offload_gb": 2.5,
        "enable_prefix_caching": False,
        "kv_transfer_config": {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"},
    }
    assert flags.sources["max_num_seqs"] == "--max-num-seqs 64"


def test_the_last_occurrence_wins_as_in_argparse():
    assert parse_engine_flags(["--max-num-seqs", "8", "--max-num-seqs", "16"]).get("max_num_seqs") == 16


def test_flags_that_do_not_touch_memory_are_ignored():
    assert parse_engine_flags(["--dtype", "bfloat16", "--served-model-name", "x", "--trust-remote-code"]).values == {}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-num-seqs", "many"], "--max-num-seqs 'many' is not a valid int"),
        (["--max-num-seqs"], "needs a value"),
        (["--kv-transfer-config", "LMCache"], "--kv-transfer-config 'LMCache' is not a valid json"),
        (["--enforce-eager=true"], "takes no value"),
        ("--enforce-eager", "must be a list of strings"),
    ],
)
def test_unreadable_flags_name_the_variable(args, message):
    with pytest.raises(EngineFlagError) as error:
        parse_engine_flags(args)
    assert "vllm_serve_extra_args" in str(error.value)
    assert message in str(error.value)
