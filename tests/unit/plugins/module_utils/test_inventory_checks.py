"""Inventory checks: each bad input gets one error that names the variable and the fix."""

from __future__ import annotations

import json
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
        ({"python_runtime_keep": 0}, "python_runtime_keep on node1 is 0; use a whole number above 0"),
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


def test_trust_remote_code_with_pinned_revision_or_confirmation_passes(tmp_path):
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
            llmserve_model_dir=controller_model(tmp_path, "Qwen-14B-Chat"),
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
    """A controller_dir: a real model's config.json and safetensors index, and an (empty) file for every shard
    the index names."""
    model_dir = tmp_path / name
    shutil.copytree(MODELS / name, model_dir)
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        (model_dir / shard).touch()
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
    for role in ("llmserve", "python_runtime", "model_weights", "ray_node", "vllm_serve", "llama_cpp"):
        defaults.update(yaml.safe_load((REPO_ROOT / "roles" / role / "defaults" / "main.yml").read_text()))
    missing = [name for name in CHECKED_VARIABLES if not name.startswith("ansible_") and name not in defaults]
    assert missing == []
    assert set(CLUSTER_WIDE_VARIABLES) <= set(CHECKED_VARIABLES)


# --- paths the collection owns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"llmserve_ray_auth_token_path": "/etc/ray-token"},
            "the directory of llmserve_ray_auth_token_path on node1 is '/etc', a top-level directory. The collection "
            "creates, chmods and (teardown) deletes the Ray token directory, so it must be a path of its own, such as "
            "/etc/llmserve/ray.",
        ),
        ({"llmserve_model_path": "/"}, "llmserve_model_path on node1 is '/', the root directory"),
        ({"llmserve_model_path": "/srv"}, "llmserve_model_path on node1 is '/srv', a top-level directory"),
        ({"llmserve_model_path": "/var/lib"}, "llmserve_model_path on node1 is '/var/lib', a system directory"),
        ({"llmserve_model_path": "/home/alice"}, "llmserve_model_path on node1 is '/home/alice', a directory directly"),
        ({"llmserve_model_path": "/mnt/nfs"}, "llmserve_model_path on node1 is '/mnt/nfs', a directory directly"),
        ({"llmserve_venv": "/usr/lib/llmserve"}, "llmserve_venv on node1 is '/usr/lib/llmserve', inside /usr/lib"),
        ({"llmserve_venv": "/opt/llm serve"}, "llmserve_venv on node1 is '/opt/llm serve', a path with whitespace"),
        ({"llmserve_model_path": "/srv/models/../../etc"}, "is '/srv/models/../../etc', a path with '..' in it"),
        ({"vllm_serve_config_dir": "/etc/systemd"}, "vllm_serve_config_dir on node1 is '/etc/systemd', a system"),
        ({"llmserve_api_key_path": "/etc/api-key"}, "llmserve_api_key_path on node1 is '/etc/api-key', in /etc, a top"),
        ({"llmserve_api_key_path": "/api-key"}, "llmserve_api_key_path on node1 is '/api-key', a file directly in /"),
        (
            {"llmserve_model_path": "/opt/llmserve", "llmserve_venv": "/opt/llmserve/venv"},
            "llmserve_venv on node1 (/opt/llmserve/venv) is inside llmserve_model_path (/opt/llmserve): the runtime "
            "venv and the model path must not overlap",
        ),
        (
            {"llmserve_model_path": "/opt/llmserve/venv/models", "llmserve_venv": "/opt/llmserve/venv"},
            "Give llmserve_model_path a directory of its own that holds no other llmserve path",
        ),
        (
            {"llmserve_ray_auth_token_path": "/etc/llmserve/token", "vllm_serve_config_dir": "/etc/llmserve"},
            "the directory of llmserve_ray_auth_token_path on node1 (/etc/llmserve) is the same directory as "
            "vllm_serve_config_dir (/etc/llmserve)",
        ),
        (
            {"llmserve_api_key_path": "/srv/models/m/api-key"},
            "llmserve_api_key_path on node1 (/srv/models/m/api-key) is inside llmserve_model_path (/srv/models/m)",
        ),
        (
            {"llmserve_venv": "/opt/llmserve/venv", "vllm_serve_venv": "/opt/other/venv"},
            "The runtime venv variables on node1 differ (llmserve_venv=/opt/llmserve/venv, "
            "vllm_serve_venv=/opt/other/venv)",
        ),
        ({"llmserve_venvs_dir": "/opt"}, "llmserve_venvs_dir on node1 is '/opt', a top-level directory"),
        (
            {"llmserve_venv": "/opt/llmserve/venv", "llmserve_venvs_dir": "/opt/llmserve/venv/all"},
            "llmserve_venvs_dir on node1 (/opt/llmserve/venv/all) is inside llmserve_venv (/opt/llmserve/venv): the "
            "runtime venvs directory and the runtime venv must not overlap",
        ),
        (
            {"llmserve_model_path": "/opt/llmserve/venvs/m", "llmserve_venvs_dir": "/opt/llmserve/venvs"},
            "llmserve_model_path on node1 (/opt/llmserve/venvs/m) is inside llmserve_venvs_dir (/opt/llmserve/venvs)",
        ),
    ],
)
def test_paths_that_could_hurt_are_refused(overrides, expected):
    errors = errors_for(**overrides)
    assert any(expected in error for error in errors), errors


def test_default_paths_nest_only_where_that_is_safe():
    """The roles' default paths: the token directory and the key file inside the configuration directory."""
    defaults = {
        "llmserve_venv": "/opt/llmserve/venv",
        "python_runtime_venv": "/opt/llmserve/venv",
        "vllm_serve_venv": "/opt/llmserve/venv",
        "ray_node_venv": "/opt/llmserve/venv",
        "llmserve_venvs_dir": "/opt/llmserve/venvs",
        "python_runtime_venvs_dir": "/opt/llmserve/venvs",
        "llmserve_model_path": "/srv/models/m",
        "model_weights_path": "/srv/models/m",
        "model_weights_hub_venv": "/opt/llmserve/hub-venv",
        "model_weights_progress_dir": "/var/tmp/llmserve-model-weights",
        "vllm_serve_config_dir": "/etc/llmserve",
        "llama_cpp_config_dir": "/etc/llmserve",
        "llama_cpp_build_dir": "/var/cache/llmserve/llama.cpp",
        "llama_cpp_install_dir": "/opt/llmserve/llama.cpp",
        "llmserve_ray_auth_token_path": "/etc/llmserve/ray/token",
        "llmserve_api_key_path": "/etc/llmserve/api-key",
        "model_weights_manifest_path": "",
    }
    assert errors_for(**defaults) == []


# --- extra arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "flag", "variable"),
    [
        (["--tensor-parallel-size", "2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["--tensor-parallel-size=2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["--tensor_parallel_size", "2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["-tp", "2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["-tp=2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["--tensor-parallel", "2"], "--tensor-parallel-size", "llmserve_tensor_parallel_size"),
        (["-pp", "2"], "--pipeline-parallel-size", "llmserve_pipeline_parallel_size"),
        (["-dp", "2"], "--data-parallel-size", "llmserve_data_parallel_size"),
        (["-dpl", "1"], "--data-parallel-size-local", "llmserve_data_parallel_size"),
        (["--max-model-len", "8192"], "--max-model-len", "llmserve_max_model_len"),
        (["--max_model_len=8192"], "--max-model-len", "llmserve_max_model_len"),
        (["--gpu-memory-utilization", "0.95"], "--gpu-memory-utilization", "llmserve_gpu_memory_utilization"),
        (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype", "llmserve_kv_cache_dtype"),
        (["--host", "0.0.0.0"], "--host", "vllm_serve_host"),
        (["--port=9000"], "--port", "vllm_serve_port"),
        (["--served-model-name", "x"], "--served-model-name", "llmserve_served_model_name"),
        (["--nnodes", "2"], "--nnodes", "the inventory's hosts"),
        (["-n2"], "--nnodes", "the inventory's hosts"),
        (["--node-rank", "1"], "--node-rank", "the inventory's hosts"),
        (["--master-addr", "10.0.0.1"], "--master-addr", "the ray_head group"),
        (["--master_port=29600"], "--master-port", "vllm_serve_master_port"),
        (["--headless"], "--headless", "the inventory's hosts"),
        (["--api-key", "secret"], "--api-key", "llmserve_api_key"),
        (["--distributed-executor-backend", "ray"], "--distributed-executor-backend", "llmserve_backend"),
    ],
)
def test_flags_the_plan_owns_are_refused_in_any_spelling(arguments, flag, variable):
    errors = errors_for(vllm_serve_extra_args=["--dtype", "bfloat16", *arguments])
    assert any(
        error.startswith("vllm_serve_extra_args on node1 sets ")
        and f"(that is {flag})" in error
        and f"set {variable}" in error
        for error in errors
    ), errors


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("llama_cpp_server_extra_args", ["-c", "8192"], "(that is --ctx-size)"),
        ("llama_cpp_server_extra_args", ["-ngl", "99"], "set llama_cpp_n_gpu_layers"),
        ("llama_cpp_server_extra_args", ["--tensor-split", "1,1"], "set llama_cpp_tensor_split"),
        ("llama_cpp_server_extra_args", ["--api-key", "x"], "set llmserve_api_key"),
        ("llama_cpp_rpc_extra_args", ["--host", "0.0.0.0"], "set llama_cpp_rpc_host"),
        ("llama_cpp_rpc_extra_args", ["-p", "50053"], "set llama_cpp_rpc_port"),
        ("vllm_serve_extra_args", "--dtype bfloat16", "is '--dtype bfloat16', not a list"),
        ("llama_cpp_server_extra_args", "--parallel 4", "is '--parallel 4', not a list"),
        ("vllm_serve_extra_args", ["--dtype bfloat16"], "Split it into ['--dtype', 'bfloat16']"),
        ("vllm_serve_extra_args", ["/srv/models/other", "--dtype", "half"], "starts with '/srv/models/other'"),
        ("vllm_serve_extra_args", ["--dtype", "half", "--dtype", "bfloat16"], "gives --dtype twice"),
        ("vllm_serve_extra_args", ["--enforce-eager", "--no-enforce-eager"], "gives --enforce-eager twice"),
        ("vllm_serve_extra_args", ["--hf-overrides", {"a": 1}], "every item must be a string or a number"),
    ],
)
def test_extra_args_mistakes_are_named(name, arguments, expected):
    errors = errors_for(**{name: arguments})
    assert any(error.startswith(name) and expected in error for error in errors), errors


def test_llama_cpp_rpc_flags_are_not_taken_for_llama_server_flags():
    """-c is llama-server's context size but the RPC server's cache flag (the role's own example)."""
    assert errors_for(llama_cpp_rpc_extra_args=["-c", "-t", "16"]) == []
    # llama.cpp takes whole options: -cb (continuous batching) and -mg (main GPU) are not -c and -m.
    assert errors_for(llama_cpp_server_extra_args=["-cb", "-mg", "0", "--n-gpu-layers-draft", "99"]) == []
    assert any(
        "(that is --n-gpu-layers)" in error for error in errors_for(llama_cpp_server_extra_args=["--gpu-layers", "9"])
    )
    assert errors_for(vllm_serve_extra_args=["--dtype", "bfloat16", "--enforce-eager", "--max-num-seqs", "8"]) == []


@pytest.mark.parametrize(
    "arguments",
    [
        ["--trust-remote-code"],
        ["--trust_remote_code"],
        ["--trust-remote-code=true"],
        ["--trust-remote-code=True"],
        ["--trust-remote"],
    ],
)
def test_trust_remote_code_in_any_spelling_needs_a_pinned_revision(arguments):
    hub = {"llmserve_model_source": "hub", "llmserve_model_repo": "Qwen/Qwen-14B-Chat", "llmserve_model_revision": ""}
    errors = errors_for(**hub, vllm_serve_extra_args=arguments)
    assert any("has --trust-remote-code but llmserve_model_revision 'main (default)'" in error for error in errors)
    assert errors_for(**{**hub, "llmserve_model_revision": PINNED}, vllm_serve_extra_args=arguments) == []


def test_no_trust_remote_code_is_not_trust():
    hub = {"llmserve_model_source": "hub", "llmserve_model_repo": "Qwen/Qwen3-8B", "llmserve_model_revision": "main"}
    assert errors_for(**hub, vllm_serve_extra_args=["--no-trust-remote-code"]) == []
    assert errors_for(**hub, vllm_serve_extra_args=["--trust-remote-code=false"]) == []


@pytest.mark.parametrize("arguments", [["--config", "/etc/llmserve/vllm.yaml"], ["--config=/etc/llmserve/vllm.yaml"]])
def test_a_config_file_goes_through_the_pinned_revision_rule(arguments):
    hub = {"llmserve_model_source": "hub", "llmserve_model_repo": "Qwen/Qwen3-8B", "llmserve_model_revision": "main"}
    errors = errors_for(**hub, vllm_serve_extra_args=arguments)
    assert any(
        "passes --config /etc/llmserve/vllm.yaml, a file that can turn on trust_remote_code" in error
        for error in errors
    ), errors
    assert errors_for(**hub, vllm_serve_extra_args=arguments, llmserve_trust_remote_code_unpinned_ok=True) == []


# --- secrets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("abc def", "whitespace"),
        ("abcdef\n", "whitespace"),
        ("abc\x07def", "control characters"),
        ('abc"def', "quotes or backslashes"),
        ("abc'def", "quotes or backslashes"),
        ("abc\\def", "quotes or backslashes"),
    ],
)
def test_api_keys_that_files_and_headers_cannot_carry_are_refused_without_showing_them(key, problem):
    errors = errors_for(llmserve_api_key=key)
    assert any(error.startswith(f"llmserve_api_key on node1 contains {problem}") for error in errors), errors
    assert not any(key.strip() in error for error in errors)
    assert errors_for(llmserve_api_key="sk-0123456789abcdef_ABC.def~+/=") == []


def test_ray_token_and_role_keys_are_checked_too_but_a_default_only_once():
    errors = errors_for(llmserve_api_key="a b", vllm_serve_api_key="a b", ray_node_auth_token="tok en")
    assert [error.split(" contains")[0] for error in errors if " contains " in error] == [
        "llmserve_api_key on node1",
        "ray_node_auth_token on node1",
        "llmserve_api_key on node2",
        "ray_node_auth_token on node2",
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"vllm_serve_environment": {"HF_TOKEN": "hf_abc"}},
            "vllm_serve_environment.HF_TOKEN on node1 puts a secret into the units' environment",
        ),
        (
            {"llmserve_env_overrides": {"HUGGING_FACE_HUB_TOKEN": "hf_abc"}},
            "Remove it and set model_weights_hf_token",
        ),
        ({"ray_node_extra_environment": {"RAY_AUTH_TOKEN": "x"}}, "Remove it and set ray_node_auth_token"),
        ({"vllm_serve_environment": {"VLLM_API_KEY": "x"}}, "Remove it and set llmserve_api_key"),
        (
            {"vllm_serve_environment": {"PIP_INDEX_URL": "https://user:pass@pypi.internal/simple"}},
            "vllm_serve_environment.PIP_INDEX_URL on node1 holds a package index URL with credentials",
        ),
        (
            {"python_runtime_pip_extra_args": ["--index-url", "https://user:pass@pypi.internal/simple"]},
            "python_runtime_pip_extra_args on node1 has a package index URL with credentials in it",
        ),
        (
            {"model_weights_hub_pip_extra_args": "--extra-index-url https://__token__:abc@pypi.internal/simple"},
            "model_weights_hub_pip_extra_args on node1 has a package index URL with credentials",
        ),
        (
            {"python_runtime_wheelhouse": "https://deploy-token@wheels.internal/"},
            "python_runtime_wheelhouse on node1 is a URL with credentials in it; keep the URL without credentials",
        ),
    ],
)
def test_secrets_in_environment_or_pip_variables_are_refused(overrides, expected):
    errors = errors_for(**overrides)
    assert any(expected in error for error in errors), errors
    assert not any("hf_abc" in error or "user:pass" in error for error in errors)


def test_index_urls_without_credentials_pass():
    assert (
        errors_for(
            python_runtime_pip_extra_args=["--index-url", "https://pypi.internal/simple"],
            vllm_serve_environment={"PIP_INDEX_URL": "https://pypi.internal/simple", "HF_HOME": "/var/cache/hf"},
        )
        == []
    )


# --- versions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "suggestion"),
    [
        ("llmserve_vllm_version", "v0.32", "0.32.0"),
        ("llmserve_vllm_version", "0.32", "0.32.0"),
        ("llmserve_vllm_version", "latest", "0.32.0"),
        ("llmserve_vllm_version", ">=0.30", "0.30.0"),
        ("llmserve_vllm_version", "v0.32.0", "0.32.0"),
        ("llmserve_ray_version", "2.60", "2.60.0"),
        ("llmserve_ray_version", "latest", "2.60.0"),
    ],
)
def test_sloppy_version_strings_are_refused_with_the_full_number(name, value, suggestion):
    errors = errors_for(**{name: value})
    assert any(
        error.startswith(f"{name} on node1 is {value!r}; pin a") and f"e.g. {suggestion} " in error for error in errors
    )


@pytest.mark.parametrize("value", ["0.32.0", "0.32.0.post1", "0.32.0rc1", "0.32.0+cpu", "0.10.1.1"])
def test_full_release_numbers_pass(value):
    assert errors_for(llmserve_vllm_version=value) == []


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        (["vllm", "ray[default]==2.60.0"], "python_runtime_packages on node1 has 'vllm', not an exact pin"),
        (["vllm>=0.30", "ray[default]==2.60.0"], "has 'vllm>=0.30', not an exact pin"),
        (["vllm==0.32.0", "ray[default]~=2.60"], "has 'ray[default]~=2.60', not an exact pin"),
        (
            ["vllm==0.31.0", "ray[default]==2.60.0"],
            "python_runtime_packages on node1 pins vllm==0.31.0 but llmserve_vllm_version is '0.32.0'",
        ),
    ],
)
def test_runtime_packages_must_pin_the_releases_the_planner_reads(packages, expected):
    errors = errors_for(python_runtime_packages=packages, llmserve_vllm_version="0.32.0", llmserve_ray_version="2.60.0")
    assert any(expected in error for error in errors), errors


# --- addresses and ports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"llmserve_backend": "ray", "ray_node_dashboard_host": "0.0.0.0", "ray_node_auth_enabled": False},
            "ray_node_dashboard_host on node1 is '0.0.0.0', every interface",
        ),
        (
            {"llmserve_backend": "llama_cpp", "llama_cpp_rpc_host": "0.0.0.0"},
            "llama_cpp_rpc_host on node1 is '0.0.0.0', every interface: llama.cpp's RPC server has no authentication",
        ),
        (
            {"llmserve_backend": "ray", "ray_node_min_worker_port": 11000, "ray_node_max_worker_port": 10002},
            "ray_node_min_worker_port (11000) is above ray_node_max_worker_port (10002) on node1",
        ),
        (
            {"llmserve_backend": "ray", "ray_node_min_worker_port": 6000, "ray_node_max_worker_port": 7000},
            "inside Ray's worker port range ray_node_min_worker_port..ray_node_max_worker_port (6000-7000)",
        ),
        (
            {"llmserve_backend": "ray", "ray_node_dashboard_port": 10500},
            "ray_node_dashboard_port on node1 is inside Ray's worker port range",
        ),
        (
            {"llmserve_backend": "llama_cpp", "llama_cpp_port": 50052, "llama_cpp_rpc_port": 50052},
            "llama_cpp_port and llama_cpp_rpc_port on node1 are both 50052",
        ),
        ({"vllm_serve_port": 80}, "vllm_serve_port on node1 is 80, a privileged port"),
        ({"llmserve_backend": "llama_cpp", "llama_cpp_port": 443}, "llama_cpp_port on node1 is 443, a privileged port"),
        (
            {"llmserve_backend": "llama_cpp", "llama_cpp_version": "latest"},
            "llama_cpp_version on node1 is 'latest'; use a llama.cpp release tag such as b6800",
        ),
    ],
)
def test_binds_and_port_ranges_that_overlap_are_refused(overrides, expected):
    errors = errors_for(**overrides)
    assert any(expected in error for error in errors), errors


def test_every_interface_with_auth_on_only_warns():
    report = report_for(llmserve_backend="ray", ray_node_dashboard_host="0.0.0.0", vllm_serve_host="0.0.0.0")
    assert report["errors"] == []
    assert any(warning.startswith("ray_node_dashboard_host on node1 is '0.0.0.0'") for warning in report["warnings"])
    assert any(warning.startswith("vllm_serve_host on node1 is '0.0.0.0'") for warning in report["warnings"])


# --- the model and the rank layout ---------------------------------------------------------------------------------


def test_a_shard_missing_from_the_index_is_named(tmp_path):
    model_dir = Path(controller_model(tmp_path, "Llama-3.1-8B-Instruct"))
    (model_dir / "model-00004-of-00004.safetensors").unlink()
    errors = errors_for(llmserve_model_source="controller_dir", llmserve_model_dir=str(model_dir))
    assert errors == [
        f"llmserve_model_dir {model_dir} is missing 1 of the shards its model.safetensors.index.json names "
        "(model-00004-of-00004.safetensors): vLLM would fail to load it on every node. Copy the missing file(s) into "
        "the directory (an interrupted download or copy), or point llmserve_model_dir at a complete model."
    ]


@pytest.mark.parametrize(
    ("gpus", "tensor", "pipeline", "refused"),
    [
        ({"node1": 2, "node2": 2}, 3, 1, True),  # 3 ranks over nodes of 2: 2 + 1
        ({"node1": 2, "node2": 2}, 1, 3, True),
        ({"node1": 2, "node2": 1}, 3, 1, True),  # 3 ranks over 2 + 1 GPUs
        ({"node1": 2, "node2": 2}, 4, 1, False),
        ({"node1": 2, "node2": 2}, 2, 2, False),
        ({"node1": 2, "node2": 1}, 2, 1, False),  # fits node1
        ({"node1": 1, "node2": 1}, 4, 1, False),  # more than the cluster has: the planner says so
        ({"node1": 2, "node2": 2}, 0, 0, False),
    ],
)
def test_rank_layouts_that_do_not_divide_evenly_across_nodes_are_refused(gpus, tensor, pipeline, refused):
    hostvars = good_hostvars()
    for host, count in gpus.items():
        hostvars[host].update(
            llmserve_node_devices={"gpus": count, "gpu_memory_mib": 81559, "gpu_name": "H100"},
            llmserve_tensor_parallel_size=tensor,
            llmserve_pipeline_parallel_size=pipeline,
        )
    errors = check_inventory(GOOD_GROUPS, hostvars)["errors"]
    layout_errors = [error for error in errors if "cannot be spread evenly" in error]
    assert bool(layout_errors) is refused, errors
    if refused:
        assert layout_errors[0].startswith(f"llmserve_tensor_parallel_size {tensor} x llmserve_pipeline_parallel_size")
