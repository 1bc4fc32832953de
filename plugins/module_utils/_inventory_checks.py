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
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    ModelSpecError,
    load_model_spec_from_dir,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import (
    PlanError,
    tensor_parallel_problem,
)

BACKENDS = ("native", "ray", "llama_cpp")
MODEL_SOURCES = ("hub", "controller_dir", "shared_path")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
VLLM_RELEASE = re.compile(r"^v?\d+\.\d+")
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
)
# Settings that must be equal on every node: each node runs one rank of one vLLM engine (or one Ray
# cluster) from the same venv and the same model path, and Ray refuses mixed Ray/Python versions.
CLUSTER_WIDE_VARIABLES = (
    "llmserve_backend",
    "llmserve_venv",
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

    trusted = any(
        str(argument).startswith("--trust-remote-code") for argument in variables.get("vllm_serve_extra_args") or []
    )
    confirmed = _is_true(variables.get("llmserve_trust_remote_code_unpinned_ok", False))
    if trusted and source == "hub" and not COMMIT_SHA.match(revision) and not confirmed:
        findings.errors.append(
            f"vllm_serve_extra_args on {host} has --trust-remote-code but llmserve_model_revision "
            f"{revision or 'main (default)'!r} is not a 40-hex "
            "commit SHA: the model's Python code could change under you and runs on every node. Pin "
            "llmserve_model_revision to a commit, or set llmserve_trust_remote_code_unpinned_ok: true to accept that."
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
        if name in variables:
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

    version = variables.get("llmserve_vllm_version")
    if version is not None and not VLLM_RELEASE.match(str(version)):
        findings.errors.append(
            f"llmserve_vllm_version on {host} is {version!r}; pin a vLLM release such as 0.32.0 (the planner and "
            "pip both need the number)."
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
    check_model_source(host, variables, findings)
    check_node_devices(host, variables, findings)


def check_model_fits_parallel_sizes(variables: Mapping[str, Any], findings: Findings) -> None:
    """Read a controller_dir model and refuse sizes vLLM would refuse for it, before any host is contacted."""
    if variables.get("llmserve_model_source") != "controller_dir" or variables.get("llmserve_backend") == "llama_cpp":
        return
    model_dir = str(variables.get("llmserve_model_dir") or "")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return  # check_model_source already named the directory
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
    # The same setting wrong on 30 hosts is one problem: keep each message once per text.
    findings.errors = list(dict.fromkeys(findings.errors))
    findings.warnings = list(dict.fromkeys(findings.warnings))
    return findings.as_dict()
