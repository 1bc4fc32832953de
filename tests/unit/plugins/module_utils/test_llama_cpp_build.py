# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A node's llama.cpp build and its cache key, from ansible_facts with the llmserve_gpu fact of captured NVML
sessions. The keys are pinned to the ones the role computed in Jinja before, so existing caches stay found."""

from __future__ import annotations

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus
from ansible_collections.llmserve.cluster.plugins.module_utils._llama_cpp_build import BASE_FLAGS, llama_cpp_build

SOURCE = "eaf2a570d19aa19334856589153ac6fe0405a673451c8e1dc88b0f5add5ffc4c"
XEON = ("0", "GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+")


def facts(gpu, processor=XEON, distribution_major_version="12"):
    return {
        "llmserve_gpu": gpu,
        "architecture": "x86_64",
        "processor": list(processor),
        "distribution": "Debian",
        "distribution_major_version": distribution_major_version,
    }


def test_a_host_without_nvml_gets_a_cpu_build(nvml_replay):
    build = llama_cpp_build(facts(probe_gpus(nvml_replay("no_library.json"))), "auto", [], SOURCE)
    assert build == {
        "use_cuda": False,
        "cuda_architectures": "",
        "flags": list(BASE_FLAGS),
        "key": "cpu-61a7b08491d5e209",
        "cpu_model": XEON[2],
    }


def test_an_h100_board_gets_a_cuda_build_for_sm90_with_the_extra_flags(nvml_replay):
    build = llama_cpp_build(
        facts(probe_gpus(nvml_replay("h100_sxm_8x.json"))), "auto", ["-DGGML_CUDA_FA_ALL_QUANTS=ON"], SOURCE
    )
    assert build["use_cuda"] and build["cuda_architectures"] == "90"
    assert build["flags"][len(BASE_FLAGS) :] == [
        "-DGGML_CUDA=ON",
        "-DCMAKE_CUDA_ARCHITECTURES=90",
        "-DGGML_CUDA_FA_ALL_QUANTS=ON",
    ]
    assert build["key"] == "cuda-da32980658201347"


def test_forcing_cpu_on_a_gpu_host_shares_the_cpu_hosts_build(nvml_replay):
    a10 = probe_gpus(nvml_replay("a10_1x.json", strings_as_bytes=True))
    forced = llama_cpp_build(facts(a10), False, [], SOURCE)
    assert forced["cuda_architectures"] == "86" and not forced["use_cuda"]
    assert forced["key"] == "cpu-61a7b08491d5e209"
    assert llama_cpp_build(facts(a10), "true", [], SOURCE)["use_cuda"]


@pytest.mark.parametrize(
    "change",
    [
        {"processor": ["0", "AuthenticAMD", "AMD EPYC 9654 96-Core Processor"]},
        {"distribution_major_version": "13"},
    ],
)
def test_another_cpu_model_or_release_gets_its_own_key(nvml_replay, change):
    no_gpu = probe_gpus(nvml_replay("no_library.json"))
    assert llama_cpp_build({**facts(no_gpu), **change}, "auto", [], SOURCE)["key"] != "cpu-61a7b08491d5e209"
    assert llama_cpp_build(facts(no_gpu), "auto", [], "0" * 64)["key"] != "cpu-61a7b08491d5e209"


def test_a_host_without_a_cpu_model_fact_still_gets_a_key(nvml_replay):
    build = llama_cpp_build(facts(probe_gpus(nvml_replay("no_library.json")), processor=[]), "auto", [], SOURCE)
    assert build["cpu_model"] == "" and build["key"].startswith("cpu-") and len(build["key"]) == 20
