"""Inventory checks: each bad input gets one error that names the variable and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.llmserve.cluster.plugins.module_utils._inventory_checks import (
    RAY_PORT_DEFAULTS,
    SERVICE_PORT_DEFAULTS,
    check_inventory,
)

REPO_ROOT = Path(__file__).resolve().parents[4]
GOOD_GROUPS = {"llmserve_cluster": ["node1", "node2"], "ray_head": ["node1"], "ray_workers": ["node2"]}


def good_hostvars() -> dict:
    return {
        "node1": {"ansible_host": "10.0.0.11", "llmserve_model_path": "/srv/models/m"},
        "node2": {"ansible_host": "10.0.0.12", "llmserve_model_path": "/srv/models/m"},
    }


def errors_for(groups=None, **overrides) -> list:
    hostvars = good_hostvars()
    for variables in hostvars.values():
        variables.update(overrides)
    return check_inventory(groups or GOOD_GROUPS, hostvars)["errors"]


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
        ({"vllm_serve_port": 6379}, "vllm_serve_port=6379 on node1 clashes with llmserve_ray_gcs_port"),
        ({"vllm_serve_master_port": 8265}, "vllm_serve_master_port=8265 on node1 clashes with ray_node_dashboard_port"),
        (
            {"llmserve_trust_remote_code": True, "model_weights_revision": "main"},
            "llmserve_trust_remote_code is true on node1 but model_weights_revision 'main' is not a 40-hex commit SHA",
        ),
    ],
)
def test_setting_errors_name_variable_and_fix(overrides, expected):
    errors = errors_for(**overrides)
    assert any(error.startswith(expected) or expected in error for error in errors), errors


def test_trust_remote_code_with_pinned_revision_or_confirmation_passes():
    assert errors_for(llmserve_trust_remote_code=True, model_weights_revision="a" * 40) == []
    assert (
        errors_for(
            llmserve_trust_remote_code=True,
            model_weights_revision="main",
            llmserve_trust_remote_code_unpinned_ok=True,
        )
        == []
    )


def test_duplicate_hosts_are_named():
    hostvars = good_hostvars()
    hostvars["node2"]["ansible_host"] = "10.0.0.11"
    errors = check_inventory(GOOD_GROUPS, hostvars)["errors"]
    assert errors == [
        "Hosts node1, node2 all have ansible_host 10.0.0.11: one machine listed twice. "
        "Keep one inventory entry per machine."
    ]


def test_missing_ssh_key_is_named(tmp_path):
    errors = errors_for(ansible_ssh_private_key_file=str(tmp_path / "id_missing"))
    assert any("ansible_ssh_private_key_file for node1" in error and "does not exist" in error for error in errors)
    key = tmp_path / "id_present"
    key.write_text("key")
    assert errors_for(ansible_ssh_private_key_file=str(key)) == []


def test_port_defaults_match_the_role_defaults():
    """The checks fall back to the same defaults the roles use."""
    defaults = {}
    for role in ("llmserve", "ray_node", "vllm_serve"):
        defaults.update(yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text()))
    for name, value in {**RAY_PORT_DEFAULTS, **SERVICE_PORT_DEFAULTS}.items():
        role_value = defaults[name]
        if isinstance(role_value, str) and role_value.startswith("{{"):
            role_value = defaults[role_value.strip("{} ")]
        assert role_value == value, name
