# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks across all nodes, run before anything is changed on them.

Input per host: the ``llmserve_gpu`` and ``llmserve_fabric`` facts. Each problem becomes one
message that names the hosts, the fact field and the fix. Errors stop the play; warnings
are reported and the play goes on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

# Oldest driver branch each CUDA major version runs on (CUDA's minor-version compatibility floor).
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}

HETEROGENEOUS_GPU_POLICIES = ("warn", "error")


def _hosts_text(hosts: List[str]) -> str:
    return ", ".join(sorted(hosts))


def _driver_branch(version: Optional[str]) -> Optional[int]:
    match = re.match(r"^(\d+)\.", version or "")
    return int(match.group(1)) if match else None


def _missing_facts(hosts: Mapping[str, Mapping[str, Any]], require_gpus: bool) -> List[str]:
    errors = []
    no_fabric = [host for host, facts in hosts.items() if not facts.get("fabric")]
    if no_fabric:
        errors.append(
            f"[facts] hosts {_hosts_text(no_fabric)}: ansible_facts.llmserve_fabric is missing. "
            "Run llmserve.cluster.fabric_facts on every node before llmserve.cluster.cluster_preflight."
        )
    if require_gpus:
        no_gpu_facts = [host for host, facts in hosts.items() if not facts.get("gpu")]
        if no_gpu_facts:
            errors.append(
                f"[facts] hosts {_hosts_text(no_gpu_facts)}: ansible_facts.llmserve_gpu is missing. "
                "Run llmserve.cluster.gpu_facts on every node before llmserve.cluster.cluster_preflight."
            )
    return errors


def check_cluster_network(hosts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Every node on one subnet, each with its own VLLM_HOST_IP (vllm#7815, gpustack#1566)."""
    errors = []
    fabric = {host: facts["fabric"] for host, facts in hosts.items() if facts.get("fabric")}
    no_address = [host for host, facts in fabric.items() if not facts.get("cluster_address")]
    if no_address:
        errors.append(
            "[cluster_network] hosts {}: llmserve_fabric.cluster_address is empty (interfaces {}). Give the cluster "
            "interface an address, or point llmserve_cluster_interface/llmserve_cluster_network at one that has "
            "it.".format(
                _hosts_text(no_address), ", ".join(f"{h}={fabric[h].get('cluster_interface')}" for h in no_address)
            )
        )
    by_network: Dict[str, List[str]] = defaultdict(list)
    for host, facts in fabric.items():
        if facts.get("cluster_network"):
            by_network[facts["cluster_network"]].append(host)
    if len(by_network) > 1:
        errors.append(
            "[cluster_network] nodes are on different cluster subnets ({}): llmserve_fabric.cluster_network must be "
            "the same everywhere, or Ray, Gloo and NCCL advertise addresses the other nodes cannot use. Set "
            "llmserve_cluster_network (CIDR) in group_vars, or llmserve_cluster_interface per host.".format(
                "; ".join(f"{net}: {_hosts_text(members)}" for net, members in sorted(by_network.items()))
            )
        )
    by_ip: Dict[str, List[str]] = defaultdict(list)
    for host, facts in fabric.items():
        host_ip = (facts.get("recommended_env") or {}).get("VLLM_HOST_IP")
        if host_ip:
            by_ip[host_ip].append(host)
    for host_ip, members in sorted(by_ip.items()):
        if len(members) > 1:
            errors.append(
                f"[vllm_host_ip] hosts {_hosts_text(members)} share VLLM_HOST_IP {host_ip} "
                "(llmserve_fabric.recommended_env.VLLM_HOST_IP); each node needs its own address or Ray places "
                "workers on the wrong node. Fix the duplicate address or the per-host env_overrides."
            )
    return errors


def check_interface_up(hosts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    down = {
        host: facts["fabric"].get("cluster_interface")
        for host, facts in hosts.items()
        if facts.get("fabric") and not facts["fabric"].get("cluster_interface_up")
    }
    if not down:
        return []
    return [
        "[interface_up] the cluster interface is down on {} (llmserve_fabric.cluster_interface_up). Bring it up "
        "(ip link set <if> up, cabling, switch port) or choose another with llmserve_cluster_interface.".format(
            ", ".join(f"{host} ({interface})" for host, interface in sorted(down.items()))
        )
    ]


def _gpu_shape(gpu: Mapping[str, Any]) -> Tuple[int, Tuple[str, ...]]:
    names = tuple(sorted({g.get("name") or "unknown" for g in gpu.get("gpus") or []}))
    return len(gpu.get("gpus") or []), names


def check_gpus(hosts: Mapping[str, Mapping[str, Any]], heterogeneous_gpus: str = "warn") -> Tuple[List[str], List[str]]:
    """Every node needs GPUs; mixed models or counts waste capacity or stop placement."""
    errors: List[str] = []
    warnings: List[str] = []
    gpu = {host: facts["gpu"] for host, facts in hosts.items() if facts.get("gpu")}
    unavailable = {host: facts.get("reason") for host, facts in gpu.items() if not facts.get("available")}
    for host, reason in sorted(unavailable.items()):
        errors.append(
            f"[gpus] host {host}: llmserve_gpu.available is false ({reason}). Install the NVIDIA driver and "
            "nvidia-ml-py, or remove the host from ray_head/ray_workers."
        )
    shapes = {host: _gpu_shape(facts) for host, facts in gpu.items() if host not in unavailable}
    mixed_inside = sorted(host for host, (_count, names) in shapes.items() if len(names) > 1)
    if len(set(shapes.values())) > 1 or mixed_inside:
        message = (
            "[heterogeneous_gpus] GPU models or counts differ: {}. vLLM runs one tensor_parallel_size on every node "
            "and sizes the KV cache by the GPU with the least memory, so larger GPUs sit partly idle, and a node "
            "with fewer GPUs than tensor_parallel_size leaves the placement group waiting. Use identical nodes, "
            "restrict the cluster to one GPU type, or plan for the smallest node "
            "(heterogeneous_gpus=error makes this fatal).".format(
                "; ".join(f"{host}: {count} x {' + '.join(names)}" for host, (count, names) in sorted(shapes.items()))
            )
        )
        (errors if heterogeneous_gpus == "error" else warnings).append(message)
    return errors, warnings


def check_driver(hosts: Mapping[str, Mapping[str, Any]], vllm_cuda_major: int = 12) -> List[str]:
    """The vLLM wheel's CUDA runtime needs a driver branch at least as new as its CUDA major."""
    minimum = MIN_DRIVER_FOR_CUDA.get(vllm_cuda_major)
    if minimum is None:
        return [f"[driver] vllm_cuda_major {vllm_cuda_major} is unknown; use one of {sorted(MIN_DRIVER_FOR_CUDA)}."]
    too_old = {}
    for host, facts in hosts.items():
        gpu = facts.get("gpu") or {}
        branch = _driver_branch(gpu.get("driver_version"))
        if gpu.get("available") and (branch is None or branch < minimum):
            too_old[host] = gpu.get("driver_version")
    if not too_old:
        return []
    hosts_text = ", ".join(f"{host} ({version})" for host, version in sorted(too_old.items()))
    return [
        f"[driver] NVIDIA driver too old for a CUDA {vllm_cuda_major}.x build of vLLM (needs >= {minimum}) on "
        f"{hosts_text} (llmserve_gpu.driver_version). Install driver branch {minimum} or newer, or install a vLLM "
        "built for an older CUDA (vllm_cuda_major)."
    ]


def check_fabric_manager(hosts: Mapping[str, Mapping[str, Any]]) -> Tuple[List[str], List[str]]:
    """NVSwitch systems need fabric manager at the driver's exact version, or CUDA fails with error 802."""
    errors = []
    warnings = []
    for host, facts in sorted(hosts.items()):
        gpu = facts.get("gpu") or {}
        if not gpu.get("nvswitch_present"):
            continue
        driver = gpu.get("driver_version")
        active = gpu.get("fabric_manager_active")
        version = gpu.get("fabric_manager_version")
        states = {g.get("fabric_state") for g in gpu.get("gpus") or []}
        unregistered = sorted(states & {"not_started", "in_progress", "failed"})
        if not active and version is None and states == {"completed"}:
            # Rack-scale NVLink (GB200 NVL72) runs fabric management on the switch trays, not on this node.
            warnings.append(
                f"[fabric_manager] host {host} has NVSwitches and no local nvidia-fabricmanager, but every GPU "
                "reports its NVLink fabric registration completed (llmserve_gpu.gpus[].fabric_state); assuming the "
                "fabric is managed outside this node."
            )
            continue
        problems = []
        if not active:
            problems.append("nvidia-fabricmanager is not active (llmserve_gpu.fabric_manager_active)")
        if version != driver:
            problems.append(
                f"fabric manager version {version or 'unknown'} differs from driver {driver} "
                "(llmserve_gpu.fabric_manager_version)"
            )
        if unregistered:
            problems.append(f"GPUs report NVLink fabric state {', '.join(unregistered)}")
        if problems:
            errors.append(
                f"[fabric_manager] host {host} has NVSwitches but {'; '.join(problems)}. Without it CUDA fails "
                f"with error 802 (system not yet initialized). Install nvidia-fabricmanager {driver} (exactly the "
                "driver's version) and run systemctl enable --now nvidia-fabricmanager."
            )
    return errors, warnings


def check_rdma(hosts: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Active RDMA ports without peer memory or device nodes make NCCL fall back to slower paths."""
    warnings = []
    no_peermem = []
    no_devices = []
    for host, facts in hosts.items():
        fabric = facts.get("fabric") or {}
        if not fabric.get("active_rdma_ports"):
            continue
        if not fabric.get("nvidia_peermem_loaded"):
            no_peermem.append(host)
        if not fabric.get("dev_infiniband_present"):
            no_devices.append(host)
    if no_peermem:
        warnings.append(
            f"[gpudirect_rdma] hosts {_hosts_text(no_peermem)} have active RDMA ports but nvidia_peermem is not "
            "loaded (llmserve_fabric.nvidia_peermem_loaded), so GPUDirect RDMA is off and NCCL stages GPU data "
            "through host memory (NET/IB without GDRDMA). Run modprobe nvidia_peermem and add it to "
            "/etc/modules-load.d."
        )
    if no_devices:
        warnings.append(
            f"[rdma_devices] hosts {_hosts_text(no_devices)} have active RDMA ports but no /dev/infiniband "
            "(llmserve_fabric.dev_infiniband_present); NCCL will fall back to TCP sockets. Load ib_uverbs and "
            "rdma_ucm, and pass /dev/infiniband into containers."
        )
    return warnings


def run_preflight(
    hosts: Mapping[str, Mapping[str, Any]],
    heterogeneous_gpus: str = "warn",
    vllm_cuda_major: int = 12,
    require_gpus: bool = True,
) -> Dict[str, Any]:
    """``hosts`` maps each host name to ``{"gpu": llmserve_gpu, "fabric": llmserve_fabric}``."""
    if heterogeneous_gpus not in HETEROGENEOUS_GPU_POLICIES:
        raise ValueError(f"heterogeneous_gpus must be one of {HETEROGENEOUS_GPU_POLICIES}, not {heterogeneous_gpus}")
    errors = _missing_facts(hosts, require_gpus)
    warnings: List[str] = []
    errors += check_cluster_network(hosts)
    errors += check_interface_up(hosts)
    if require_gpus:
        gpu_errors, gpu_warnings = check_gpus(hosts, heterogeneous_gpus)
        errors += gpu_errors
        warnings += gpu_warnings
        errors += check_driver(hosts, vllm_cuda_major)
        fabric_errors, fabric_warnings = check_fabric_manager(hosts)
        errors += fabric_errors
        warnings += fabric_warnings
    warnings += check_rdma(hosts)
    return {"failed": bool(errors), "errors": errors, "warnings": warnings, "hosts": sorted(hosts)}
