"""Inventory checks: each bad input gets one error that names the variable and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ansible_collections.llmserve.cluster.plugins.module_utils._inventory_checks import (
    CHECKED_VARIABLES,
    CLUSTER_WIDE_VARIABLES,
    RAY_PORT_DEFAULTS,
    RAY_WORKER_PORT_DEFAULTS,
    SERVICE_PORT_VARIABLES,
    check_inventory,
)

REPO_ROOT = Path(__file__).resolve().parents[4]
MODELS = REPO_ROOT / "tests" / "unit" / "fixtures" / "models"
GOOD_GROUPS = {"llmserve_cluster": ["node1", "node2"], "ray_head": ["node1"], "ray_workers": ["node2"]}
PINNED = "0e9e39f249a16976918f6564b8830bc894c89659"


def rendered_role_defaults(*roles: str) -> dict:
    """The roles' defaults with one level of ``{{ name }}`` resolved, as the action plugin renders the ports."""
    defaults = {}
    for role in roles:
        defaults.update(yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text()))
    return {
        name: defaults.get(value.strip("{} "), value) if isinstance(value, str) and value.startswith("{{") else value
        for name, value in defaults.items()
    }


SERVICE_PORTS = {name: rendered_role_defaults("llmserve", "vllm_serve")[name] for name in SERVICE_PORT_VARIABLES}


def good_hostvars() -> dict:
    return {
        host: {
            "ansible_host": address,
            "llmserve_model_source": "shared_path",
            "llmserve_model_path": "/srv/models/m",
            **SERVICE_PORTS,
        }
        for host, address in (("node1", "10.0.0.11"), ("node2", "10.0.0.12"))
    }


def report_for(groups=None, **overrides) -> dict:
    hostvars = good_hostvars()
    for variables in hostvars.values():
        variables.update(overrides)
    return check_inventory(groups or GOOD_GROUPS, hostvars)


def errors_for(groups=None, **overrides) -> list:
    return report_for(groups, **overrides)["errors"]


def test_good_inventory_passes():
    assert check_inventory(GOOD_GROUPS, good_hostvars()) == {"errors": [], "warnings": []}


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ({**GOOD_GROUPS, "ray_head": []}, "Group ray_head has 0 hosts"),
        ({**GOOD_GROUPS, "ray_head": ["node1", "node2"]}, "Group ray_head has 2 hosts (node1, node2)"),
        ({**GOOD_GROUPS, "llmserve_cluster": []}, "Group llmserve_cluster is empty"),
        ({**GOOD_GROUPS, "ray_head": ["node9"]}, "node9 is in ray_head but not in llmserve_cluster"),
    ],
)
def test_group_shape_errors(groups, expected):
    assert any(expected in error for error in errors_for(groups))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"llmserve_backend": "vllm-ray"},
            "llmserve_backend on node1 is 'vllm-ray'; use one of native, ray, llama_cpp",
        ),
        ({"llmserve_gpu_memory_utilization": 0}, "llmserve_gpu_memory_utilization on node1 is 0; use a fraction"),
        ({"llmserve_gpu_memory_utilization": 1.2}, "llmserve_gpu_memory_utilization on node1 is 1.2"),
        ({"llmserve_gpu_memory_utilization": "lots"}, "llmserve_gpu_memory_utilization on node1 is 'lots'"),
        ({"llmserve_tensor_parallel_size": -2}, "llmserve_tensor_parallel_size on node1 is -2"),
        ({"llmserve_max_model_len": "long"}, "llmserve_max_model_len on node1 is 'long'"),
        ({"llmserve_model_path": "models/m"}, "llmserve_model_path on node1 is 'models/m'; use an absolute path"),
        ({"llmserve_api_key": ""}, "llmserve_api_key on node1 is an empty string"),
        ({"llmserve_api_key": "   "}, "llmserve_api_key on node1 is an empty string"),
        ({"vllm_serve_port": 70000}, "vllm_serve_port on node1 is 70000; use a port number from 1 to 65535"),
        ({"vllm_serve_port": 0}, "vllm_serve_port on node1 is 0; use a port number from 1 to 65535"),
        ({"vllm_serve_port": 6379}, "vllm_serve_port=6379 on node1 clashes with llmserve_ray_gcs_port"),
        ({"vllm_serve_master_port": 8265}, "vllm_serve_master_port=8265 on node1 clashes with ray_node_dashboard_port"),
        (
            {"vllm_serve_master_port": 8000},
            "vllm_serve_port and vllm_serve_master_port on node1 are both 8000; the API and the rendezvous need two",
        ),
        (
            {"llmserve_backend": "ray", "vllm_serve_master_port": 10500},
            "vllm_serve_master_port=10500 on node1 is inside Ray's worker port range",
        ),
        (
            {"llmserve_backend": "ray", "ray_node_metrics_export_port": 6380},
            "ray_node_node_manager_port and ray_node_metrics_export_port on node1 are all 6380",
        ),
        ({"llmserve_served_model_name": "tiny llama"}, "llmserve_served_model_name on node1 is 'tiny llama'"),
        ({"llmserve_served_model_name": ""}, "llmserve_served_model_name on node1 is ''"),
        ({"llmserve_vllm_version": "latest"}, "llmserve_vllm_version on node1 is 'latest'; pin a vLLM release"),
        ({"llmserve_cluster_network": "10.0.0.0/33"}, "llmserve_cluster_network on node1 is '10.0.0.0/33', not a"),
        (
            {"llmserve_env_overrides": {"VLLM_HOST_IP": "node1.local"}},
            "llmserve_env_overrides.VLLM_HOST_IP on node1 is 'node1.local', not an IP address",
        ),
        ({"model_weights_fanout_width": 0}, "model_weights_fanout_width on node1 is 0; use a whole number above 0"),
        ({"vllm_serve_ready_timeout": -5}, "vllm_serve_ready_timeout on node1 is -5; use a whole number above 0"),
        (
            {"llmserve_node_devices": {"gpus": "eight", "gpu_memory_mib": 81559}},
            "llmserve_node_devices.gpus on node1 is 'eight'; use a whole number above 0",
        ),
        (
            {"llmserve_node_devices": {"gpus": 8, "gpu_memory_mib": 0}},
            "llmserve_node_devices.gpu_memory_mib on node1 is 0; use a whole number above 0",
        ),
        ({"llmserve_node_devices": [8]}, "llmserve_node_devices on node1 is [8]; use a mapping"),
        ({"llmserve_model_source": "s3"}, "llmserve_model_source on node1 is 's3'; use one of hub, controller_dir"),
        (
            {"llmserve_model_source": "hub", "llmserve_model_repo": ""},
            "llmserve_model_repo on node1 is empty but llmserve_model_source is hub",
        ),
        (
            {"llmserve_model_source": "hub", "llmserve_model_repo": "https://huggingface.co/Qwen/Qwen3-8B"},
            "llmserve_model_repo on node1 is 'https://huggingface.co/Qwen/Qwen3-8B', not a Hugging Face repo id",
        ),
        (
            {"llmserve_model_source": "controller_dir", "llmserve_model_dir": "models/tiny"},
            "llmserve_model_dir on node1 is 'models/tiny' but llmserve_model_source is controller_dir",
        ),
        (
            {"llmserve_model_source": "controller_dir", "llmserve_model_dir": "/nonexistent/tiny-llama"},
            "llmserve_model_dir on node1 is /nonexistent/tiny-llama, which is not a directory on the controller",
        ),
        (
            {
                "llmserve_model_source": "hub",
                "llmserve_model_repo": "Qwen/Qwen-14B-Chat",
                "llmserve_model_revision": "main",
                "vllm_serve_extra_args": ["--trust-remote-code"],
            },
            "vllm_serve_extra_args on node1 has --trust-remote-code but llmserve_model_revision 'main' is not a "
            "40-hex commit SHA",
        ),
    ],
)
def test_setting_errors_name_variable_and_fix(overrides, expected):
    errors = errors_for(**overrides)
    assert any(expected in error for error in errors), errors


def test_model_dir_without_config_json_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    errors = errors_for(llmserve_model_source="controller_dir", llmserve_model_dir=str(tmp_path))
    assert errors == [
        f"llmserve_model_dir on {host} is {tmp_path}, which has no config.json; point it at the model's own directory "
        "(the one holding config.json and the *.safetensors files)."
        for host in ("node1", "node2")
    ]


def test_trust_remote_code_with_pinned_revision_or_confirmation_passes():
    hub = {
        "llmserve_model_source": "hub",
        "llmserve_model_repo": "Qwen/Qwen-14B-Chat",
        "vllm_serve_extra_args": ["--trust-remote-code"],
    }
    assert errors_for(**hub, llmserve_model_revision=PINNED) == []
    assert errors_for(**hub, llmserve_model_revision="main", llmserve_trust_remote_code_unpinned_ok=True) == []
    # A directory the user placed on the controller has no revision to pin.
    assert (
        errors_for(
            llmserve_model_source="controller_dir",
            llmserve_model_dir=str(MODELS / "Qwen-14B-Chat"),
            vllm_serve_extra_args=["--trust-remote-code"],
        )
        == []
    )


def test_unpinned_hub_revision_warns_once_and_does_not_fail():
    report = report_for(
        llmserve_model_source="hub", llmserve_model_repo="Qwen/Qwen3-8B", llmserve_model_revision="main"
    )
    assert report["errors"] == []
    assert report["warnings"] == [
        "llmserve_model_revision is 'main', not a 40-hex commit SHA: a branch or tag can move between two runs, so "
        "nodes set up at different times can get different weights. Pin the commit SHA (the hub shows it on the "
        "model's 'Files and versions' page)."
    ]
    pinned = report_for(
        llmserve_model_source="hub", llmserve_model_repo="Qwen/Qwen3-8B", llmserve_model_revision=PINNED
    )
    assert pinned == {"errors": [], "warnings": []}


def test_duplicate_hosts_are_named():
    hostvars = good_hostvars()
    hostvars["node2"]["ansible_host"] = "10.0.0.11"
    errors = check_inventory(GOOD_GROUPS, hostvars)["errors"]
    assert errors == [
        "Hosts node1, node2 all have ansible_host 10.0.0.11: one machine listed twice. "
        "Keep one inventory entry per machine."
    ]


def test_duplicate_vllm_host_ip_from_env_overrides_is_named():
    hostvars = good_hostvars()
    for variables in hostvars.values():
        variables["llmserve_env_overrides"] = {"VLLM_HOST_IP": "10.0.0.11", "NCCL_IB_HCA": "=mlx5_0:1"}
    errors = check_inventory(GOOD_GROUPS, hostvars)["errors"]
    assert len(errors) == 1
    assert errors[0].startswith("llmserve_env_overrides sets VLLM_HOST_IP 10.0.0.11 on hosts node1, node2")
    assert "Set VLLM_HOST_IP per host (host_vars)" in errors[0]
    hostvars["node2"]["llmserve_env_overrides"] = {"VLLM_HOST_IP": "10.0.0.12"}
    assert check_inventory(GOOD_GROUPS, hostvars)["errors"] == []


def test_missing_ssh_key_is_named(tmp_path):
    errors = errors_for(ansible_ssh_private_key_file=str(tmp_path / "id_missing"))
    assert any("ansible_ssh_private_key_file for node1" in error and "does not exist" in error for error in errors)
    key = tmp_path / "id_present"
    key.write_text("key")
    assert errors_for(ansible_ssh_private_key_file=str(key)) == []


@pytest.mark.parametrize(
    ("name", "node1_value", "node2_value"),
    [
        ("llmserve_vllm_version", "0.32.0", "0.31.0"),
        ("llmserve_ray_version", "2.60.0", "2.52.1"),
        ("python_runtime_packages", ["vllm==0.32.0", "ray[default]==2.60.0"], ["vllm==0.32.0", "ray[default]==2.59.0"]),
        ("llmserve_model_path", "/srv/models/m", "/data/models/m"),
    ],
)
def test_per_host_version_pins_that_differ_are_refused(name, node1_value, node2_value):
    hostvars = good_hostvars()
    hostvars["node1"][name] = node1_value
    hostvars["node2"][name] = node2_value
    errors = check_inventory(GOOD_GROUPS, hostvars)["errors"]
    assert errors == [
        f"{name} differs between hosts (node1: {node1_value!r}; node2: {node2_value!r}): every node must use the same "
        "value, or the nodes install different releases or disagree on the model and the plan (Ray and vLLM refuse "
        "mixed versions). Set it once for the group llmserve_cluster, not per host."
    ]


def controller_model(tmp_path: Path, name: str = "tiny-llama") -> str:
    """A copy of a real model's config.json and safetensors index, as a controller_dir."""
    model_dir = tmp_path / name
    shutil.copytree(MODELS / name, model_dir)
    return str(model_dir)


@pytest.mark.parametrize(
    ("model", "overrides", "expected"),
    [
        (
            "tiny-llama",
            {"llmserve_tensor_parallel_size": 3},
            "llmserve_tensor_parallel_size 3 does not suit tiny-llama: num_attention_heads (4) must be divisible by "
            "tensor_parallel_size (3). Use one of 1, 2, 4 (or 0 to let the planner choose).",
        ),
        (
            "Llama-3.1-8B-Instruct",
            {"llmserve_tensor_parallel_size": 6},
            "llmserve_tensor_parallel_size 6 does not suit Llama-3.1-8B-Instruct: num_attention_heads (32) must be "
            "divisible by tensor_parallel_size (6). Use one of 1, 2, 4, 8",
        ),
        (
            "tiny-llama",
            {"llmserve_pipeline_parallel_size": 5},
            "llmserve_pipeline_parallel_size 5 is larger than tiny-llama's 4 layers (num_hidden_layers in config.json)",
        ),
        (
            "Llama-3.1-8B-Instruct",
            {"llmserve_max_model_len": 200000},
            "llmserve_max_model_len 200000 is above Llama-3.1-8B-Instruct's maximum of 131072 tokens",
        ),
    ],
)
def test_sizes_the_model_cannot_take_are_refused_before_any_host(tmp_path, model, overrides, expected):
    model_dir = controller_model(tmp_path, model)
    errors = errors_for(llmserve_model_source="controller_dir", llmserve_model_dir=model_dir, **overrides)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_sizes_the_model_takes_pass(tmp_path):
    model_dir = controller_model(tmp_path)
    assert (
        errors_for(
            llmserve_model_source="controller_dir",
            llmserve_model_dir=model_dir,
            llmserve_tensor_parallel_size=2,
            llmserve_pipeline_parallel_size=4,
            llmserve_max_model_len=2048,
        )
        == []
    )


def test_unreadable_model_config_is_named(tmp_path):
    model_dir = Path(controller_model(tmp_path))
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "num_hidden_layers": "four"')
    errors = errors_for(llmserve_model_source="controller_dir", llmserve_model_dir=str(model_dir))
    assert len(errors) == 1
    assert errors[0].startswith(f"llmserve_model_dir {model_dir} cannot be read: ")


def test_port_defaults_match_the_role_defaults():
    """The checks fall back to the same defaults the roles use."""
    defaults = rendered_role_defaults("llmserve", "ray_node", "vllm_serve")
    for name, value in {**RAY_PORT_DEFAULTS, **RAY_WORKER_PORT_DEFAULTS}.items():
        assert defaults[name] == value, name


def test_the_api_port_is_checked_from_the_rendered_role_default():
    """No port number of its own: the API port the roles render (8000) meets the rendezvous port set to it."""
    assert SERVICE_PORTS["vllm_serve_port"] == 8000
    errors = errors_for(vllm_serve_master_port=SERVICE_PORTS["vllm_serve_port"])
    assert "vllm_serve_port and vllm_serve_master_port on node1 are both 8000" in " ".join(errors)


def test_checked_variables_exist_in_the_role_defaults():
    """A renamed role variable would silently escape the checks; every llmserve_/role name must be defined."""
    defaults = {}
    for role in ("llmserve", "python_runtime", "model_weights", "ray_node", "vllm_serve"):
        defaults.update(yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text()))
    missing = [name for name in CHECKED_VARIABLES if not name.startswith("ansible_") and name not in defaults]
    assert missing == []
    assert set(CLUSTER_WIDE_VARIABLES) <= set(CHECKED_VARIABLES)
