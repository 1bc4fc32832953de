# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which llama.cpp build a node gets: CUDA or CPU, the cmake flags, and the key its binaries are cached under.

The key names everything that makes two builds differ: the source's sha256, the cmake flags, and the node's
architecture, CPU model and distribution release (GGML_NATIVE tunes for the build node's CPU, so a node with
another CPU model gets its own build). Nodes with the same key share one build.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Mapping, Sequence, Union

# Static binaries: two files to ship, no libllama/libggml search path on the nodes.
BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_RPC=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def cuda_architectures(gpu: Mapping[str, Any]) -> str:
    """CMAKE_CUDA_ARCHITECTURES for the node's GPUs (``"86;90"``), ``""`` when NVML saw none."""
    capabilities = {str(card.get("compute_capability") or "").replace(".", "") for card in gpu.get("gpus") or []}
    return ";".join(sorted(capability for capability in capabilities if capability))


def uses_cuda(gpu: Mapping[str, Any], cuda: Union[str, bool]) -> bool:
    """``cuda`` is auto (a CUDA build where NVML sees GPUs), or true/false to force one."""
    if str(cuda).lower() == "auto":
        return bool(gpu.get("available"))
    return str(cuda).lower() in ("true", "yes", "1", "on")


def llama_cpp_build(
    facts: Mapping[str, Any], cuda: Union[str, bool], cmake_args: Sequence[str], source_sha256: str
) -> Dict[str, Any]:
    """``{use_cuda, cuda_architectures, flags, key}`` for a node, from its ``ansible_facts``."""
    gpu = facts.get("llmserve_gpu") or {}
    use_cuda = uses_cuda(gpu, cuda)
    architectures = cuda_architectures(gpu)
    flags = list(BASE_FLAGS)
    if use_cuda:
        flags += ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=" + (architectures or "native")]
    flags += [str(arg) for arg in cmake_args]
    processor = facts.get("processor") or []
    cpu_model = str(processor[2]) if len(processor) > 2 else ""
    release = "{}{}".format(facts.get("distribution", ""), facts.get("distribution_major_version", ""))
    identity = " ".join([source_sha256, str(facts.get("architecture", "")), cpu_model, release, *flags])
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return {
        "use_cuda": use_cuda,
        "cuda_architectures": architectures,
        "flags": flags,
        "key": "{}-{}".format("cuda" if use_cuda else "cpu", digest),
        "cpu_model": cpu_model,
    }
