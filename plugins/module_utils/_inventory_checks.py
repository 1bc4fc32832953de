# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of the inventory and its llmserve settings, run on the controller before any host changes.

Each problem names the variable (or group) and says how to fix it.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

BACKENDS = ("native", "ray", "llama_cpp")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
# Ray ports the ray_node role pins; the API and rendezvous ports must not take them.
RAY_PORT_VARIABLES = (
    "llmserve_ray_gcs_port",
    "ray_node_node_manager_port",
    "ray_node_object_manager_port",
    "ray_node_runtime_env_agent_port",
    "ray_node_dashboard_agent_grpc_port",
    "ray_node_dashboard_agent_listen_port",
    "ray_node_metrics_export_port",
    "ray_node_client_server_port",
    "ray_node_dashboard_port",
)
RAY_PORT_DEFAULTS = {
    "llmserve_ray_gcs_port": 6379,
    "ray_node_node_manager_port": 6380,
    "ray_node_object_manager_port": 6381,
    "ray_node_runtime_env_agent_port": 6382,
    "ray_node_dashboard_agent_grpc_port": 6383,
    "ray_node_dashboard_agent_listen_port": 6384,
    "ray_node_metrics_export_port": 6385,
    "ray_node_client_server_port": 10001,
    "ray_node_dashboard_port": 8265,
}
SERVICE_PORT_DEFAULTS = {"vllm_serve_port": 8000, "vllm_serve_master_port": 29555}


class Findings:
    """Errors stop the play; warnings are printed and the play goes on."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.warnings: List[str] = []

    def as_dict(self) -> Dict[str, List[str]]:
        return {"errors": self.errors, "warnings": self.warnings}


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def check_groups(groups: Mapping[str, Sequence[str]], findings: Findings) -> None:
    heads = list(groups.get("ray_head") or [])
    cluster = list(groups.get("llmserve_cluster") or [])
    if len(heads) != 1:
        findings.errors.append(
            "Group ray_head has {} hosts ({}); put exactly one host in it: it runs the Ray head and "
            "vLLM rank 0.".format(len(heads), ", ".join(heads) or "none")
        )
    if not cluster:
        findings.errors.append(
            "Group llmserve_cluster is empty; make ray_head and ray_workers its children (see inventories/example)."
        )
    for head in heads:
        if cluster and head not in cluster:
            findings.errors.append(
                f"Host {head} is in ray_head but not in llmserve_cluster; add ray_head as a child of llmserve_cluster."
            )


def check_duplicate_addresses(hostvars: Mapping[str, Mapping[str, Any]], findings: Findings) -> None:
    by_address: Dict[str, List[str]] = {}
    for host, variables in hostvars.items():
        address = str(variables.get("ansible_host") or host)
        by_address.setdefault(address, []).append(host)
    for address, hosts in sorted(by_address.items()):
        if len(hosts) > 1:
            findings.errors.append(
                "Hosts {} all have ansible_host {}: one machine listed twice. Keep one inventory entry per "
                "machine.".format(", ".join(sorted(hosts)), address)
            )


def check_ssh_keys(hostvars: Mapping[str, Mapping[str, Any]], findings: Findings) -> None:
    for host, variables in sorted(hostvars.items()):
        key = variables.get("ansible_ssh_private_key_file") or variables.get("ansible_private_key_file")
        if key and not os.path.isfile(os.path.expanduser(str(key))):
            findings.errors.append(
                f"ansible_ssh_private_key_file for {host} is {key}, which does not exist on the controller; "
                "fix the path or create the key."
            )


def _check_port(name: str, value: Any, findings: Findings, host: str) -> Optional[int]:
    port = _as_int(value)
    if port is None or not 1 <= port <= 65535:
        findings.errors.append(f"{name} on {host} is {value!r}; use a port number from 1 to 65535.")
        return None
    return port


def check_settings(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Per-host llmserve_* settings (the same checks for every host; messages name the host)."""
    backend = variables.get("llmserve_backend", "native")
    if backend not in BACKENDS:
        findings.errors.append(
            "llmserve_backend on {} is {!r}; use one of {}.".format(host, backend, ", ".join(BACKENDS))
        )

    utilization = variables.get("llmserve_gpu_memory_utilization", 0.9)
    try:
        fraction = float(utilization)
    except (TypeError, ValueError):
        fraction = -1.0
    if not 0.0 < fraction <= 1.0:
        findings.errors.append(
            f"llmserve_gpu_memory_utilization on {host} is {utilization!r}; use a fraction in (0, 1], e.g. 0.9."
        )

    for name in (
        "llmserve_tensor_parallel_size",
        "llmserve_pipeline_parallel_size",
        "llmserve_data_parallel_size",
        "llmserve_max_model_len",
        "llmserve_max_num_batched_tokens",
    ):
        value = variables.get(name, 0)
        number = _as_int(value)
        if number is None or number < 0:
            findings.errors.append(f"{name} on {host} is {value!r}; use a whole number (0 lets the planner choose).")

    model_path = str(variables.get("llmserve_model_path", ""))
    if not model_path.startswith("/"):
        findings.errors.append(
            f"llmserve_model_path on {host} is {model_path!r}; use an absolute path, identical on every node."
        )

    if "llmserve_api_key" in variables and variables["llmserve_api_key"] is not None:
        key = str(variables["llmserve_api_key"])
        if not key.strip():
            findings.errors.append(
                f"llmserve_api_key on {host} is an empty string; set a real key (from a vault), or leave it unset "
                "(null) to have the head generate one into a 0600 file."
            )

    ray_ports: Dict[str, int] = {}
    for name in RAY_PORT_VARIABLES:
        port = _check_port(name, variables.get(name, RAY_PORT_DEFAULTS[name]), findings, host)
        if port is not None:
            ray_ports[name] = port
    for name, default in SERVICE_PORT_DEFAULTS.items():
        port = _check_port(name, variables.get(name, default), findings, host)
        clashes = sorted(ray_name for ray_name, ray_port in ray_ports.items() if ray_port == port)
        if port is not None and clashes:
            findings.errors.append(
                "{}={} on {} clashes with {}; pick a free port.".format(name, port, host, ", ".join(clashes))
            )

    revision = variables.get("model_weights_revision")
    trust = variables.get("llmserve_trust_remote_code", False)
    pinned = bool(revision) and bool(COMMIT_SHA.match(str(revision)))
    if trust and not pinned and not variables.get("llmserve_trust_remote_code_unpinned_ok", False):
        findings.errors.append(
            f"llmserve_trust_remote_code is true on {host} but model_weights_revision {revision!r} is not a 40-hex "
            "commit SHA: the model's Python code could change under you. Pin the revision to a commit, or set "
            "llmserve_trust_remote_code_unpinned_ok: true to accept that."
        )


def check_inventory(
    groups: Mapping[str, Sequence[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
) -> Dict[str, List[str]]:
    """All inventory checks; ``hostvars`` holds the cluster's hosts only."""
    findings = Findings()
    check_groups(groups, findings)
    check_duplicate_addresses(hostvars, findings)
    check_ssh_keys(hostvars, findings)
    for host in sorted(hostvars):
        check_settings(host, hostvars[host], findings)
    # The same setting wrong on 30 hosts is one problem: keep each message once per text.
    findings.errors = list(dict.fromkeys(findings.errors))
    return findings.as_dict()
