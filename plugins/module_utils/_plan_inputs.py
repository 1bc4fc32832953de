# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the parallel planner is given: the cluster's nodes, the GPU models it knows, and the vLLM options.

A ClusterNode turns the NVML total of a node's smallest GPU into the memory CUDA reports (``cuda_total_bytes``),
from the frame buffer each known GPU model keeps for itself (GPU_KINDS). PlanError, which every part of the
planner raises, names the option the user should change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

MIB = 1024**2

DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class GpuKind:
    """What the planner knows about a GPU model beyond what NVML says."""

    fragment: str
    # NVML total minus the total torch.cuda.mem_get_info() reports: the frame buffer the driver keeps for
    # itself (GSP firmware heap, page tables, ECC bookkeeping). Observed on idle GPUs.
    reserved_mib: int
    bfloat16: bool = True
    # Hopper boards whose GPUs meet in NVSwitches, where NCCL sets up NVLink SHARP buffers (not the PCIe or NVL cards).
    nvswitch: bool = False
    vllm_supported: bool = True
    min_total_mib: int = 0


# Matched against the words of the NVML name, first match wins (so the 80 GB A100 comes before the 40 GB one).
# Each reserve is NVML total minus a CUDA total seen in public logs; the sources are listed in
# tests/unit/fixtures/planner/README.md. Drivers move these by up to ~0.2 GiB (H100 logs show 79.11-79.33 GiB).
GPU_KINDS = (
    GpuKind("gh200", 606, nvswitch=True),
    GpuKind("h200", 606, nvswitch=True),
    GpuKind("h100", 479, nvswitch=True),
    GpuKind("h800", 479, nvswitch=True),
    GpuKind("h20", 591, nvswitch=True),
    GpuKind("a100", 870, min_total_mib=60000),
    GpuKind("a800", 870, min_total_mib=60000),
    GpuKind("a100", 625),
    GpuKind("a800", 625),
    GpuKind("pro 6000", 598),
    GpuKind("l40s", 613),
    GpuKind("l40", 613),
    GpuKind("l20", 480),
    GpuKind("a40", 654),
    GpuKind("a6000", 459),
    GpuKind("6000 ada", 480),
    GpuKind("a10g", 520),
    GpuKind("a10", 316),
    GpuKind("l4", 547),
    GpuKind("4090", 357),
    GpuKind("3090", 318),
    GpuKind("v100", 256, bfloat16=False, min_total_mib=20000),
    GpuKind("v100", 0, bfloat16=False),
    GpuKind("t4", 256, bfloat16=False),
    GpuKind("2080", 300, bfloat16=False),
    GpuKind("p40", 0, bfloat16=False, vllm_supported=False),
    GpuKind("p100", 0, bfloat16=False, vllm_supported=False),
)


class PlanError(ValueError):
    """The request cannot be planned as given; ``field`` names the option to change."""

    def __init__(self, message: str, field: str = "cluster") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ClusterNode:
    """One host as the planner sees it: ``gpu_memory_mib`` is the NVML total of its smallest GPU."""

    name: str
    gpus: int
    gpu_memory_mib: int
    gpu_name: str = "unknown"

    @property
    def is_cpu(self) -> bool:
        return self.gpu_name.strip().lower() == "cpu"

    @property
    def kind(self) -> Optional[GpuKind]:
        name = self.gpu_name.lower()
        # Whole words of the NVML name, allowing one variant letter (A10G, L40S): "a40" must not match "A4000".
        words = re.split(r"[^a-z0-9]+", name)
        for kind in GPU_KINDS:
            if " " in kind.fragment:
                matches = kind.fragment in name
            else:
                matches = any(re.fullmatch(re.escape(kind.fragment) + "[a-z]?", word) for word in words)
            if matches and self.gpu_memory_mib >= kind.min_total_mib:
                return kind
        return None

    @property
    def nvswitch(self) -> bool:
        """Whether the node's GPUs sit on an NVSwitch board (SXM), judged from the NVML name."""
        kind = self.kind
        words = re.split(r"[^a-z0-9]+", self.gpu_name.lower())
        return bool(kind and kind.nvswitch) and "pcie" not in words and "nvl" not in words

    @property
    def cuda_total_bytes(self) -> int:
        """The total torch.cuda.mem_get_info() reports, which vLLM multiplies by gpu_memory_utilization."""
        if self.is_cpu:
            return self.gpu_memory_mib * MIB
        kind = self.kind
        # Unknown GPUs: a fixed firmware reserve plus page tables that grow with the frame buffer.
        reserved = kind.reserved_mib if kind else 256 + self.gpu_memory_mib * 4 // 1000
        return (self.gpu_memory_mib - reserved) * MIB

    @property
    def label(self) -> str:
        return f"{self.gpus}x {self.gpu_name}"


@dataclass(frozen=True)
class PlanOptions:
    """The vLLM settings that shape the plan; None means "what vLLM picks" or "choose for me"."""

    max_model_len: Optional[int] = None
    # None means the release's default (0.9 up to vLLM 0.19, 0.92 from 0.20).
    gpu_memory_utilization: Optional[float] = None
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: Optional[int] = None
    tensor_parallel_size: Optional[int] = None
    pipeline_parallel_size: Optional[int] = None
    data_parallel_size: Optional[int] = None
    block_size: int = DEFAULT_BLOCK_SIZE
    # The vLLM release that will serve ("0.9.2", "v0.19.0"); None means the V1 engine up to 0.10.
    vllm_version: Optional[str] = None
    # Whether vLLM logs "Using FlashInfer for top-p & top-k sampling": up to 0.10 it did whenever FlashInfer was
    # installed (the Docker images). Only releases before 0.16 depend on it; None means "not installed".
    flashinfer_sampler: Optional[bool] = None
    # vLLM flags that move memory (_engine_flags.FLAGS); each may also come from extra_args.
    quantization: Optional[str] = None
    enforce_eager: bool = False
    cpu_offload_gb: float = 0.0
    enable_prefix_caching: Optional[bool] = None
    kv_transfer_config: Optional[Dict[str, Any]] = None
    enable_expert_parallel: bool = False
    # vllm_serve_extra_args as the role passes them to vllm serve; the planner reads the flags above from them.
    extra_args: Tuple[str, ...] = ()


def positive_int(value: Any, where: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise PlanError(f"{where} must be a positive integer, got {value!r}.", field_name)
    if value <= 0:
        raise PlanError(f"{where} must be a positive integer, got {value}.", field_name)
    return value


def parse_cluster(raw: Any) -> List[ClusterNode]:
    """Validate ``cluster``: a non-empty list of ``{name, gpus, gpu_memory_mib, gpu_name}``."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PlanError("cluster must be a non-empty list of nodes (name, gpus, gpu_memory_mib, gpu_name).", "cluster")
    nodes: List[ClusterNode] = []
    for index, entry in enumerate(raw):
        where = f"cluster[{index}]"
        if not isinstance(entry, Mapping):
            raise PlanError(f"{where} must be a dict with name, gpus and gpu_memory_mib.", "cluster")
        name = str(entry.get("name") or f"node{index}")
        where = f"cluster[{index}] ({name})"
        gpus = positive_int(entry.get("gpus"), where + ".gpus", "cluster")
        memory = positive_int(entry.get("gpu_memory_mib"), where + ".gpu_memory_mib (NVML total in MiB)", "cluster")
        nodes.append(ClusterNode(name, gpus, memory, str(entry.get("gpu_name") or "unknown")))
    names = [node.name for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PlanError("cluster names must be unique; repeated: {}.".format(", ".join(duplicates)), "cluster")
    return nodes


def parse_vllm_version(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """(major, minor) of a vLLM version string such as "0.11.0", "v0.19.0" or "0.15.2rc1.dev93+g11a4c9d30"."""
    if version is None or str(version).strip() == "":
        return None
    match = re.match(r"^v?(\d+)\.(\d+)", str(version).strip())
    if not match:
        raise PlanError(
            f"vllm_version {version!r} is not a vLLM release such as 0.11.0; "
            "leave it unset for the V1 engine up to 0.10.",
            "vllm_version",
        )
    return int(match.group(1)), int(match.group(2))
