# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What an NCCL_DEBUG=INFO log says about the network NCCL chose, and whether that is acceptable.

NCCL names the transport it uses in three places, from most to least direct:
- "Using network IB" / "Using network Socket" / "Using network IBext_v8" (NCCL >= 2.19 or so);
- channel lines, "Channel 08/0 : 0[14000] -> 8[14000] [send] via NET/IB/1/GDRDMA";
- network initialisation, "NET/IB : Using [0]mlx5_0:1/IB ..." or "NET/IB : No device found.".
Old releases (2.4) print "NET/Socket : Using [0]ib0..." even when they then pick IB, so a socket
interface list alone never means the socket transport was used.

GPUDirect RDMA shows as a "/GDRDMA" suffix on channel lines; NCCL says why when it is off
("GPU Direct RDMA Disabled for HCA 1 'mlx5_1' (no module)": nvidia_peermem is not loaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# Colour codes from Ray's log prefixes would split the words we look for.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m|ESC\[[0-9;]*m")
_USING_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
_CHANNEL_VIA_NET = re.compile(r"NCCL INFO Channel \S+ : .* via NET/([A-Za-z0-9_]+)(/\S*)?")
_IB_INIT = re.compile(r"NCCL INFO NET/IB ?: Using (.*?)(?: ; |; )OOB")
_IB_DEVICE = re.compile(r"(\w+:\d+)/(IB|RoCE)")
_IB_NOT_FOUND = re.compile(r"NCCL INFO NET/IB ?: No device found")
_SOCKET_INIT = re.compile(r"NCCL INFO NET/Socket ?: Using ")
_GDR_DISABLED = re.compile(r"NCCL INFO (?:NET/IB ?: )?GPU Direct RDMA Disabled for (.+?)\s*$")
_GDR_ENABLED = re.compile(r"NCCL INFO (?:NET/IB ?: )?GPU Direct RDMA Enabled for (.+?)\s*$")
_VERSION = re.compile(r"NCCL version (\d+\.\d+\.\d+)")
_IB_DISABLED_BY_ENV = re.compile(r"NCCL_IB_DISABLE set by environment to 1")

SOCKET = "Socket"


def is_rdma_network(name: str) -> bool:
    """IB, IBext, IBext_v8 ...: NCCL's verbs transports (InfiniBand and RoCE alike)."""
    return name.startswith("IB")


@dataclass
class NcclLogSummary:
    """The facts one node's NCCL log states; `networks` is empty when no inter-node transport was set up."""

    networks: List[str] = field(default_factory=list)
    evidence: Optional[str] = None
    nccl_version: Optional[str] = None
    ib_devices: List[str] = field(default_factory=list)
    ib_not_found: bool = False
    ib_disabled_by_environment: bool = False
    net_channels: int = 0
    gdrdma_channels: int = 0
    gdrdma_disabled: List[str] = field(default_factory=list)
    gdrdma_enabled: List[str] = field(default_factory=list)

    @property
    def uses_socket(self) -> bool:
        return SOCKET in self.networks

    @property
    def uses_rdma(self) -> bool:
        return any(is_rdma_network(name) for name in self.networks)

    @property
    def gdrdma(self) -> Optional[str]:
        """on, partial, off or unknown for a verbs transport; None when NCCL did not use one."""
        if not self.uses_rdma:
            return None
        if self.gdrdma_channels and self.gdrdma_disabled:
            return "partial"
        if self.gdrdma_channels:
            return "on"
        if self.gdrdma_disabled or self.net_channels:
            return "off"
        return "on" if self.gdrdma_enabled else "unknown"

    def as_dict(self) -> Dict[str, object]:
        return {
            "networks": self.networks,
            "evidence": self.evidence,
            "nccl_version": self.nccl_version,
            "ib_devices": self.ib_devices,
            "ib_not_found": self.ib_not_found,
            "ib_disabled_by_environment": self.ib_disabled_by_environment,
            "net_channels": self.net_channels,
            "gdrdma_channels": self.gdrdma_channels,
            "gdrdma": self.gdrdma,
            "gdrdma_disabled": self.gdrdma_disabled,
        }


def _add(names: List[str], name: str) -> None:
    if name not in names:
        names.append(name)


def read_nccl_log(text: str) -> NcclLogSummary:
    """Summarise one node's log (any mix of ranks, prefixes such as mpirun's "[0] " or Ray's "(pid=..)")."""
    summary = NcclLogSummary()
    # The first line naming each network, by source: announcements, channels, initialisation.
    announced: Dict[str, str] = {}
    channels: Dict[str, str] = {}
    initialised: Dict[str, str] = {}
    for raw_line in text.splitlines():
        line = _ANSI_ESCAPE.sub("", raw_line).strip()
        if "NCCL" not in line:
            continue
        version = _VERSION.search(line)
        if version and summary.nccl_version is None:
            summary.nccl_version = version.group(1)
        network = _USING_NETWORK.search(line)
        if network:
            announced.setdefault(network.group(1), line)
            continue
        channel = _CHANNEL_VIA_NET.search(line)
        if channel:
            summary.net_channels += 1
            if channel.group(2) and "GDRDMA" in channel.group(2):
                summary.gdrdma_channels += 1
            channels.setdefault(channel.group(1), line)
            continue
        ib_init = _IB_INIT.search(line)
        if ib_init:
            initialised.setdefault("IB", line)
            for device, _link_layer in _IB_DEVICE.findall(ib_init.group(1)):
                _add(summary.ib_devices, device)
            continue
        if _IB_NOT_FOUND.search(line):
            summary.ib_not_found = True
        elif _IB_DISABLED_BY_ENV.search(line):
            summary.ib_disabled_by_environment = True
        elif _SOCKET_INIT.search(line):
            initialised.setdefault(SOCKET, line)
        disabled = _GDR_DISABLED.search(line)
        if disabled:
            _add(summary.gdrdma_disabled, disabled.group(1))
        enabled = _GDR_ENABLED.search(line)
        if enabled:
            _add(summary.gdrdma_enabled, enabled.group(1))

    # Old NCCL lists socket interfaces before it picks IB: an IB initialisation outranks them.
    if "IB" in initialised:
        initialised.pop(SOCKET, None)
    first_lines = announced or channels or initialised
    summary.networks = list(first_lines)
    if first_lines:
        summary.evidence = first_lines.get(SOCKET) or next(iter(first_lines.values()))
    return summary


@dataclass
class NcclVerdict:
    """Failures stop the play; warnings are printed."""

    failures: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def _socket_reasons(summary: NcclLogSummary) -> str:
    if summary.ib_disabled_by_environment:
        return "NCCL_IB_DISABLE=1 is set in the environment"
    if summary.ib_not_found:
        return (
            "NCCL found no usable IB device (missing /dev/infiniband in a container, libibverbs, "
            "or a memlock limit; NCCL_IB_HCA naming no present HCA)"
        )
    return "NCCL did not pick its IB transport"


def judge(summaries: Dict[str, NcclLogSummary], rdma_nodes: List[str], multi_node: bool = True) -> NcclVerdict:
    """Fail a node with IB/RoCE devices whose NCCL fell back to sockets; warn when GPUDirect RDMA is off.

    SUMMARIES maps node names to their logs' summaries; RDMA_NODES lists the nodes whose fabric
    probe found IB devices (fabric_facts `ib_present`).
    """
    verdict = NcclVerdict()
    for node in sorted(summaries):
        summary = summaries[node]
        has_rdma = node in rdma_nodes
        if has_rdma and summary.uses_socket:
            verdict.failures.append(
                f"{node}: NCCL used NET/Socket although the node has IB/RoCE devices: "
                f"{_socket_reasons(summary)}. NCCL said: {summary.evidence}"
            )
            continue
        if has_rdma and multi_node and not summary.networks:
            verdict.warnings.append(
                f"{node}: the NCCL log names no network transport; run with NCCL_DEBUG_SUBSYS=INIT,NET to see it"
            )
            continue
        state = summary.gdrdma
        if state == "off":
            reasons = "; ".join(summary.gdrdma_disabled) or "no channel uses GDRDMA"
            verdict.warnings.append(
                f"{node}: GPUDirect RDMA is off ({reasons}); traffic is staged through host memory. "
                "Load nvidia_peermem (NCCL <= 2.22.3 also needs it, nccl#1676) and check the GPU-NIC PCIe distance."
            )
        elif state == "partial":
            verdict.warnings.append(
                f"{node}: GPUDirect RDMA is off for some GPU/NIC pairs: {'; '.join(summary.gdrdma_disabled)}"
            )
        elif state == "unknown":
            networks = ", ".join(summary.networks)
            verdict.warnings.append(
                f"{node}: NCCL used {networks}, but its log does not say whether GPUDirect RDMA is on"
            )
    return verdict
