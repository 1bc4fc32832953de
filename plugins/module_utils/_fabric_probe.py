# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a host's network and RDMA fabric from sysfs/procfs and derive the NCCL environment.

Everything is read below configurable roots (``/sys``, ``/proc``, ``/dev``) so tests can
point the probe at captured trees. IP addresses come from ``ip -json addr show``, parsed
by the caller and passed in, because sysfs does not hold them.

The chosen *cluster interface* carries Ray, Gloo and NCCL's socket traffic; several NICs
or addresses per node make vLLM and Ray pick different ones on different nodes
(vllm#7815), so the choice is explicit and reported.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

# Container, VM and CNI plumbing that never carries traffic between cluster nodes.
IGNORED_INTERFACE_PATTERNS = (
    r"lo",
    r"docker\d*",
    r"docker_gwbridge",
    r"veth.*",
    r"virbr.*",
    r"cni.*",
    r"flannel.*",
    r"br-.*",
    r"cali.*",
    r"cilium.*",
    r"kube-.*",
    r"podman.*",
)
_IGNORED_INTERFACE = re.compile("^(?:" + "|".join(IGNORED_INTERFACE_PATTERNS) + ")$")

ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"
IPV4_MAPPED_GID_PREFIX = "0000:0000:0000:0000:0000:ffff:"
ARPHRD_INFINIBAND = 32
RTF_UP = 0x1

# Kernel modules that give the RDMA NIC direct access to GPU memory (GPUDirect RDMA).
PEERMEM_MODULES = ("nvidia_peermem", "nv_peer_mem")


class FabricProbeError(Exception):
    """A configuration that cannot describe this host (for example an unknown interface)."""


def is_ignored_interface(name: str) -> bool:
    return bool(_IGNORED_INTERFACE.match(name))


def _natural_key(name: str) -> List[Any]:
    """mlx5_2 sorts before mlx5_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        # sysfs answers EINVAL for attributes that do not apply (the type of an empty GID slot).
        return None


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path), key=_natural_key)
    except OSError:
        return []


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _pci_locality(device_link: str) -> Tuple[Optional[str], Optional[int]]:
    """PCI address and NUMA node behind a sysfs ``device`` link; NUMA -1 means unknown."""
    if not os.path.exists(device_link):
        return None, None
    address = os.path.basename(os.path.realpath(device_link))
    if not re.match(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$", address):
        return None, None
    numa_node = _int(_read(os.path.join(device_link, "numa_node")))
    return address, numa_node if numa_node is not None and numa_node >= 0 else None


def _numbered_state(text: Optional[str]) -> Tuple[Optional[int], Optional[str]]:
    """sysfs writes port states as "4: ACTIVE" and physical states as "5: LinkUp"."""
    if not text:
        return None, None
    code, _sep, name = text.partition(":")
    return _int(code.strip()), name.strip() or None


def _rate_gbps(rate: Optional[str]) -> Optional[float]:
    """ "400 Gb/sec (4X NDR)" -> 400; "2.5 Gb/sec (1X SDR)" -> 2.5."""
    match = re.match(r"^\s*([\d.]+)\s*Gb/sec", rate or "")
    if not match:
        return None
    value = float(match.group(1))
    return int(value) if value.is_integer() else value


def _gid_ipv4(gid: str) -> Optional[str]:
    if not gid.startswith(IPV4_MAPPED_GID_PREFIX):
        return None
    high, low = gid[len(IPV4_MAPPED_GID_PREFIX) :].split(":")
    return socket.inet_ntoa(bytes.fromhex(high + low))


def _read_gids(port_dir: str) -> List[Dict[str, Any]]:
    gids = []
    for index in _listdir(os.path.join(port_dir, "gids")):
        gid = _read(os.path.join(port_dir, "gids", index))
        if not gid or gid == ZERO_GID:
            continue  # empty slots; reading their type would fail with EINVAL
        gids.append(
            {
                "index": int(index),
                "gid": gid,
                "type": _read(os.path.join(port_dir, "gid_attrs", "types", index)),
                "netdev": _read(os.path.join(port_dir, "gid_attrs", "ndevs", index)) or None,
                "ipv4": _gid_ipv4(gid),
            }
        )
    return gids


def read_netdevs(sysfs_root: str) -> Dict[str, Dict[str, Any]]:
    """Every entry of /sys/class/net with its link state and PCI locality."""
    netdevs = {}
    base = os.path.join(sysfs_root, "class", "net")
    for name in _listdir(base):
        path = os.path.join(base, name)
        address, numa_node = _pci_locality(os.path.join(path, "device"))
        netdevs[name] = {
            "operstate": _read(os.path.join(path, "operstate")),
            "mac": _read(os.path.join(path, "address")),
            "mtu": _int(_read(os.path.join(path, "mtu"))),
            "type": _int(_read(os.path.join(path, "type"))),
            "dev_port": _int(_read(os.path.join(path, "dev_port"))),
            "pci_address": address,
            "numa_node": numa_node,
        }
    return netdevs


def _ipoib_netdev(netdevs: Dict[str, Dict[str, Any]], pci: Optional[str], port: int) -> Optional[str]:
    """IPoIB interfaces share the HCA's PCI function; dev_port tells the ports apart."""
    for name, netdev in netdevs.items():
        if pci is None or netdev["pci_address"] != pci or netdev["type"] != ARPHRD_INFINIBAND:
            continue
        if netdev["dev_port"] in (None, port - 1):
            return name
    return None


def read_rdma_devices(sysfs_root: str, netdevs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every RDMA device in /sys/class/infiniband with each port's state, rate, GIDs and netdev."""
    devices = []
    base = os.path.join(sysfs_root, "class", "infiniband")
    for name in _listdir(base):
        path = os.path.join(base, name)
        pci, numa_node = _pci_locality(os.path.join(path, "device"))
        ports = []
        for port_name in _listdir(os.path.join(path, "ports")):
            port_dir = os.path.join(path, "ports", port_name)
            port = int(port_name)
            state_code, state = _numbered_state(_read(os.path.join(port_dir, "state")))
            phys_code, phys_state = _numbered_state(_read(os.path.join(port_dir, "phys_state")))
            rate = _read(os.path.join(port_dir, "rate"))
            link_layer = _read(os.path.join(port_dir, "link_layer"))
            gids = _read_gids(port_dir)
            if link_layer == "Ethernet":
                netdev = next((gid["netdev"] for gid in gids if gid["netdev"]), None)
            else:
                netdev = _ipoib_netdev(netdevs, pci, port)
            roce_v2_ipv4 = [gid for gid in gids if gid["type"] == "RoCE v2" and gid["ipv4"]]
            ports.append(
                {
                    "port": port,
                    "state": state,
                    "state_code": state_code,
                    "phys_state": phys_state,
                    "phys_state_code": phys_code,
                    "rate": rate,
                    "rate_gbps": _rate_gbps(rate),
                    "link_layer": link_layer,
                    "transport": "RoCE" if link_layer == "Ethernet" else link_layer,
                    "netdev": netdev,
                    "gids": gids,
                    "roce_v2_gid_index": roce_v2_ipv4[0]["index"] if roce_v2_ipv4 else None,
                    "active": state == "ACTIVE" and phys_state == "LinkUp",
                }
            )
        devices.append(
            {
                "name": name,
                "pci_address": pci,
                "numa_node": numa_node,
                "fw_ver": _read(os.path.join(path, "fw_ver")),
                "node_guid": _read(os.path.join(path, "node_guid")),
                "ports": ports,
            }
        )
    return devices


def read_default_route(proc_root: str) -> Tuple[Optional[str], Optional[str]]:
    """The IPv4 default route's interface and gateway from /proc/net/route (lowest metric wins)."""
    best = None
    text = _read(os.path.join(proc_root, "net", "route")) or ""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, gateway, flags, metric, mask = (
            fields[0],
            fields[1],
            fields[2],
            int(fields[3], 16),
            int(fields[6]),
            fields[7],
        )
        if destination != "00000000" or mask != "00000000" or not flags & RTF_UP:
            continue
        if best is None or metric < best[0]:
            # The kernel prints addresses as host-order (little-endian) hex.
            best = (metric, iface, socket.inet_ntoa(struct.pack("<I", int(gateway, 16))))
    return (best[1], best[2]) if best else (None, None)


def read_loaded_modules(proc_root: str) -> List[str]:
    text = _read(os.path.join(proc_root, "modules")) or ""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def read_interfaces(ip_addresses: List[Dict[str, Any]], netdevs: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge ``ip -json addr show`` with sysfs locality, one entry per interface."""
    interfaces = []
    for entry in ip_addresses:
        name = entry.get("ifname")
        if not name:
            continue
        flags = entry.get("flags") or []
        operstate = entry.get("operstate")
        addresses = []
        for info in entry.get("addr_info") or []:
            if info.get("family") not in ("inet", "inet6") or "local" not in info:
                continue
            addresses.append(
                {
                    "family": "ipv4" if info["family"] == "inet" else "ipv6",
                    "address": info["local"],
                    "prefixlen": info.get("prefixlen"),
                    "scope": info.get("scope"),
                    "secondary": bool(info.get("secondary")),
                }
            )
        sysfs = netdevs.get(name, {})
        interfaces.append(
            {
                "name": name,
                "operstate": operstate,
                # Some drivers (IPoIB on old kernels, tun) report UNKNOWN while carrying traffic.
                "up": operstate == "UP" or (operstate == "UNKNOWN" and "UP" in flags and "LOWER_UP" in flags),
                "link_type": entry.get("link_type"),
                "mac": entry.get("address"),
                "mtu": entry.get("mtu"),
                "ipv4": [f"{a['address']}/{a['prefixlen']}" for a in addresses if a["family"] == "ipv4"],
                "ipv6": [f"{a['address']}/{a['prefixlen']}" for a in addresses if a["family"] == "ipv6"],
                "addresses": addresses,
                "ignored": is_ignored_interface(name),
                "pci_address": sysfs.get("pci_address"),
                "numa_node": sysfs.get("numa_node"),
            }
        )
    return interfaces


def _usable_address(interface: Dict[str, Any], network: Optional[Any] = None) -> Optional[Dict[str, Any]]:
    """The address other nodes should reach: in ``network`` if given, else the first global IPv4."""
    candidates = [a for a in interface["addresses"] if a["scope"] != "link" and a["scope"] != "host"]
    if network is not None:
        candidates = [a for a in candidates if ipaddress.ip_address(a["address"]) in network]
    candidates.sort(key=lambda a: (a["family"] != "ipv4", a["secondary"]))
    return candidates[0] if candidates else None


def _interface_listing(interfaces: List[Dict[str, Any]]) -> str:
    return ", ".join("{} ({})".format(i["name"], ", ".join(i["ipv4"] + i["ipv6"]) or "no address") for i in interfaces)


def choose_cluster_interface(
    interfaces: List[Dict[str, Any]],
    default_route_interface: Optional[str],
    cluster_interface: Optional[str] = None,
    cluster_network: Optional[str] = None,
) -> Tuple[Dict[str, Any], str, Optional[Dict[str, Any]]]:
    """Pick the interface for cluster traffic. Returns (interface, how it was chosen, address)."""
    by_name = {interface["name"]: interface for interface in interfaces}
    network = None
    if cluster_network:
        try:
            network = ipaddress.ip_network(cluster_network, strict=False)
        except ValueError as error:
            raise FabricProbeError(f"llmserve_cluster_network '{cluster_network}' is not a CIDR: {error}") from None
    if cluster_interface:
        chosen = by_name.get(cluster_interface)
        if chosen is None:
            raise FabricProbeError(
                f"llmserve_cluster_interface is '{cluster_interface}' but this host has no such interface; "
                f"it has: {_interface_listing(interfaces)}"
            )
        address = _usable_address(chosen, network)
        if network is not None and address is None:
            raise FabricProbeError(
                f"llmserve_cluster_interface '{cluster_interface}' has no address in "
                f"llmserve_cluster_network {cluster_network}; it has: {_interface_listing([chosen])}"
            )
        return chosen, "configured", address
    if network is not None:
        for interface in interfaces:
            address = _usable_address(interface, network)
            if address is not None:
                return interface, "cluster_network", address
        raise FabricProbeError(
            f"no interface of this host has an address in llmserve_cluster_network {cluster_network}; "
            f"it has: {_interface_listing(interfaces)}"
        )
    route = by_name.get(default_route_interface or "")
    if route is not None and not route["ignored"]:
        return route, "default_route", _usable_address(route)
    for interface in interfaces:
        if interface["up"] and not interface["ignored"]:
            address = _usable_address(interface)
            if address is not None and address["family"] == "ipv4":
                return interface, "first_up_interface", address
    if route is not None:
        # Only bridge/veth plumbing here (a namespaced test host): use what routes, rather than nothing.
        return route, "default_route", _usable_address(route)
    raise FabricProbeError(
        "cannot choose a cluster interface: no default route and no interface with an IPv4 address is up; "
        f"set llmserve_cluster_interface or llmserve_cluster_network. Interfaces: {_interface_listing(interfaces)}"
    )


def _hca_ports(rdma_devices: List[Dict[str, Any]]) -> Tuple[Optional[str], List[Dict[str, Any]]]:
    """Active ports NCCL should use: InfiniBand ports if any, else RoCE ports with a RoCE v2 IPv4 GID."""
    active = [
        dict(port, device=device["name"]) for device in rdma_devices for port in device["ports"] if port["active"]
    ]
    infiniband = [port for port in active if port["transport"] == "InfiniBand"]
    if infiniband:
        return "InfiniBand", infiniband
    roce = [port for port in active if port["transport"] == "RoCE" and port["roce_v2_gid_index"] is not None]
    if roce:
        return "RoCE", roce
    return None, []


def recommend_env(
    cluster_interface: str,
    cluster_address: Optional[str],
    transport: Optional[str],
    hca_ports: List[Dict[str, Any]],
) -> Tuple[Dict[str, str], List[str]]:
    """Environment for NCCL, Gloo and vLLM on this host, with notes explaining choices."""
    notes = []
    env = {
        # "=" makes NCCL match the name exactly instead of as a prefix (eth0 would also match eth01).
        "NCCL_SOCKET_IFNAME": "=" + cluster_interface,
        "GLOO_SOCKET_IFNAME": cluster_interface,
    }
    if cluster_address:
        env["VLLM_HOST_IP"] = cluster_address
    if hca_ports:
        env["NCCL_IB_HCA"] = "=" + ",".join(f"{port['device']}:{port['port']}" for port in hca_ports)
    if transport == "RoCE":
        on_cluster_interface = [port for port in hca_ports if port["netdev"] == cluster_interface]
        chosen = (on_cluster_interface or hca_ports)[0]
        env["NCCL_IB_GID_INDEX"] = str(chosen["roce_v2_gid_index"])
        indexes = {port["roce_v2_gid_index"] for port in hca_ports}
        if len(indexes) > 1:
            notes.append(
                "RoCE ports differ in their RoCE v2 IPv4 GID index ({}); NCCL_IB_GID_INDEX={} follows {}:{}".format(
                    ", ".join(f"{p['device']}:{p['port']}={p['roce_v2_gid_index']}" for p in hca_ports),
                    chosen["roce_v2_gid_index"],
                    chosen["device"],
                    chosen["port"],
                )
            )
    return env, notes


def probe_fabric(
    ip_addresses: List[Dict[str, Any]],
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    dev_root: str = "/dev",
    cluster_interface: Optional[str] = None,
    cluster_network: Optional[str] = None,
    env_overrides: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The ``llmserve_fabric`` fact. ``ip_addresses`` is the parsed output of ``ip -json addr show``."""
    netdevs = read_netdevs(sysfs_root)
    interfaces = read_interfaces(ip_addresses, netdevs)
    default_route_interface, default_gateway = read_default_route(proc_root)
    chosen, source, address = choose_cluster_interface(
        interfaces, default_route_interface, cluster_interface, cluster_network
    )
    rdma_devices = read_rdma_devices(sysfs_root, netdevs)
    transport, hca_ports = _hca_ports(rdma_devices)
    modules = read_loaded_modules(proc_root)
    cluster_address = address["address"] if address else None
    cluster_cidr = (
        str(ipaddress.ip_interface(f"{address['address']}/{address['prefixlen']}").network) if address else None
    )
    env, notes = recommend_env(chosen["name"], cluster_address, transport, hca_ports)
    overridden = []
    for key, value in sorted((env_overrides or {}).items()):
        overridden.append(key)
        if value is None or value == "":
            env.pop(key, None)  # an override of null drops a recommendation
        else:
            env[key] = str(value)
    if address is None:
        notes.append(f"cluster interface {chosen['name']} has no routable address; VLLM_HOST_IP cannot be derived")
    private_networks = sorted(
        {
            str(ipaddress.ip_interface(f"{a['address']}/{a['prefixlen']}").network)
            for i in interfaces
            if not i["ignored"]
            for a in i["addresses"]
            if a["family"] == "ipv4" and ipaddress.ip_address(a["address"]).is_private
        }
    )
    if source in ("default_route", "first_up_interface") and len(private_networks) > 1:
        notes.append(
            "this host has addresses in several private networks ({}); the cluster interface {} was taken from "
            "the {}. Set llmserve_cluster_network so every node picks the same network".format(
                ", ".join(private_networks), chosen["name"], source.replace("_", " ")
            )
        )
    dev_infiniband = os.path.join(dev_root, "infiniband")
    return {
        "cluster_interface": chosen["name"],
        "cluster_interface_source": source,
        "cluster_interface_up": chosen["up"],
        "cluster_address": cluster_address,
        "cluster_network": cluster_cidr,
        "default_route_interface": default_route_interface,
        "default_gateway": default_gateway,
        "interfaces": interfaces,
        "ib_present": bool(rdma_devices),
        "rdma_devices": rdma_devices,
        "rdma_transport": transport,
        "active_rdma_ports": [f"{port['device']}:{port['port']}" for port in hca_ports],
        "dev_infiniband_present": os.path.isdir(dev_infiniband),
        "dev_infiniband": _listdir(dev_infiniband),
        "nvidia_peermem_loaded": any(module in PEERMEM_MODULES for module in modules),
        "recommended_env": env,
        "env_overridden": overridden,
        "notes": notes,
    }
