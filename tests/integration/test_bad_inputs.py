# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad inputs: playbooks/deploy.yml refuses each one with a message naming the variable and the fix, and no host
changes.

Two fresh sandbox hosts, up but never deployed, so that any change would show. Each case runs the real
deploy.yml (plan.yml or preflight.yml where the case is about those) and checks three things: the
failure text (variable and fix), the recap's changed=0, and a fingerprint of every host: the files under
the directories deploy writes to whose mtime or ctime is newer than a marker touched just before the run.
The last test deploys with good inputs and shows the same fingerprint listing what deploy wrote, so the
fingerprint is known to catch a real change; it also leaves the cluster converged and serving.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .helpers import (
    INVENTORY,
    REPO_ROOT,
    SANDBOX_SLOT,
    ansible_environment,
    ansible_playbook,
    prepare_sandbox_caches,
    recap,
    sandbox_hosts,
    ssh,
)

pytestmark = pytest.mark.sandbox
# A one-task playbook that writes one file on every host: the positive control for the fingerprint.
SCRATCH_CHANGE = REPO_ROOT / "tests" / "integration" / "bad_inputs" / "scratch_change.yml"

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
PREFLIGHT = REPO_ROOT / "playbooks" / "preflight.yml"
PLAN = REPO_ROOT / "playbooks" / "plan.yml"
TINY_MODEL = Path("/var/cache/llmserve-sandbox/models/tiny-llama")
# Inventories for the cases live beside a group_vars link, under .build (ignored by git), so the sandbox's
# group_vars and inventory_dir-relative paths apply to them as to the real one.
WORK_DIR = REPO_ROOT / ".build" / f"bad-inputs-slot{SANDBOX_SLOT}"
MARKER = "/run/llmserve-bad-inputs-marker"
# Everything deploy writes: the venvs (/opt), units and config (/etc), weights (/srv), state (/var/lib),
# keys (/root). -xdev keeps what is inside the read-only shared mounts under /srv out, and the prune their mount
# points: they show the controller's caches, which other sandbox slots may fill meanwhile.
FINGERPRINT = (
    "find /etc /opt /srv /var/lib /usr/local /root /home -xdev "
    "\\( -path /srv/wheelhouse -o -path /srv/shared-models \\) -prune -o "
    f"\\( -newer {MARKER} -o -cnewer {MARKER} \\) -print 2>/dev/null | sort"
)
FAKE_PYTHON_312 = "/tmp/llmserve-python3.12"
UBUNTU_2004 = (
    'PRETTY_NAME="Ubuntu 20.04.6 LTS"\nNAME="Ubuntu"\nVERSION_ID="20.04"\nVERSION="20.04.6 LTS (Focal Fossa)"\n'
    "VERSION_CODENAME=focal\nID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=focal\n"
)


# A safetensors index for the tiny model's single file, written beside a copy of it under /srv/llmserve-nfs.
SHARED_COPY_INDEX = (
    'cd /srv/llmserve-nfs/tiny-llama && printf \'{"metadata": {"total_size": %s}, "weight_map": '
    '{"lm_head.weight": "model.safetensors"}}\' "$(stat -c %s model.safetensors)" > '
    "model.safetensors.index.json"
)


@dataclass
class Case:
    name: str
    expected: list[str]
    extra_vars: dict = field(default_factory=dict)
    # host -> variables added to that host in the case's inventory; or a whole-group rewrite
    host_vars: dict = field(default_factory=dict)
    groups: dict | None = None
    setup: dict = field(default_factory=dict)  # host -> shell command run before the marker
    restore: dict = field(default_factory=dict)  # host -> shell command run after the fingerprint
    playbook: Path = DEPLOY


def address(number: int) -> str:
    return f"10.77.{SANDBOX_SLOT}.{10 + number}"


CASES = [
    # --- caught by validate_inventory in deploy's first play, on the controller alone ---
    Case(
        "empty_ray_head",
        ["Group ray_head has 0 hosts (none); put exactly one host in it"],
        groups={"ray_head": [], "ray_workers": ["node1", "node2"]},
    ),
    Case(
        "two_heads",
        ["Group ray_head has 2 hosts (node1, node2); put exactly one host in it"],
        groups={"ray_head": ["node1", "node2"], "ray_workers": []},
    ),
    Case(
        "duplicate_host",
        [f"Hosts node1, node2 all have ansible_host {address(1)}: one machine listed twice"],
        host_vars={"node2": {"ansible_host": address(1)}},
    ),
    Case(
        "duplicate_vllm_host_ip",
        [f"llmserve_env_overrides sets VLLM_HOST_IP {address(1)} on hosts node1, node2", "Set VLLM_HOST_IP per host"],
        extra_vars={"llmserve_env_overrides": {"VLLM_HOST_IP": address(1)}},
    ),
    Case(
        "missing_ssh_key",
        [
            "ansible_ssh_private_key_file for node1 is /nonexistent/id_ed25519, which does not exist on the "
            "controller; fix the path or create the key"
        ],
        extra_vars={"ansible_ssh_private_key_file": "/nonexistent/id_ed25519"},
    ),
    Case(
        "unknown_backend",
        ["llmserve_backend on node1 is 'vllm-ray'; use one of native, ray, llama_cpp"],
        extra_vars={"llmserve_backend": "vllm-ray"},
    ),
    Case(
        "gpu_memory_utilization_zero",
        ["llmserve_gpu_memory_utilization on node1 is 0.0; use a fraction in (0, 1]"],
        extra_vars={"llmserve_gpu_memory_utilization": 0.0},
    ),
    Case(
        "gpu_memory_utilization_above_one",
        ["llmserve_gpu_memory_utilization on node1 is 1.5; use a fraction in (0, 1]"],
        extra_vars={"llmserve_gpu_memory_utilization": 1.5},
    ),
    Case(
        "empty_api_key",
        ["llmserve_api_key on node1 is an empty string; set a real key (from a vault), or leave it unset"],
        extra_vars={"llmserve_api_key": ""},
    ),
    Case(
        "port_out_of_range",
        ["vllm_serve_port on node1 is 70000; use a port number from 1 to 65535"],
        extra_vars={"vllm_serve_port": 70000},
    ),
    Case(
        "port_clashes_with_ray",
        ["vllm_serve_port=6379 on node1 clashes with llmserve_ray_gcs_port; pick a free port"],
        extra_vars={"vllm_serve_port": 6379},
    ),
    Case(
        "master_port_equals_api_port",
        ["vllm_serve_port and vllm_serve_master_port on node1 are both 8000"],
        extra_vars={"vllm_serve_master_port": 8000},
    ),
    Case(
        "trust_remote_code_unpinned",
        [
            "vllm_serve_extra_args on node1 has --trust-remote-code but llmserve_model_revision 'main' is not a "
            "40-hex commit SHA",
            "set llmserve_trust_remote_code_unpinned_ok: true",
        ],
        extra_vars={
            "llmserve_model_source": "hub",
            "llmserve_model_repo": "Qwen/Qwen-7B-Chat",
            "llmserve_model_revision": "main",
            "vllm_serve_extra_args": ["--dtype", "bfloat16", "--trust-remote-code"],
        },
    ),
    Case(
        "unknown_model_source",
        ["llmserve_model_source on node1 is 's3'; use one of hub, controller_dir, shared_path"],
        extra_vars={"llmserve_model_source": "s3"},
    ),
    Case(
        "hub_without_repo",
        ["llmserve_model_repo on node1 is empty but llmserve_model_source is hub; set it to a Hugging Face repo id"],
        extra_vars={"llmserve_model_source": "hub", "llmserve_model_repo": ""},
    ),
    Case(
        "controller_dir_missing",
        ["llmserve_model_dir on node1 is /nonexistent/tiny-llama, which is not a directory on the controller"],
        extra_vars={"llmserve_model_dir": "/nonexistent/tiny-llama"},
    ),
    Case(
        "model_dir_without_config_json",
        ["which has no config.json; point it at the model's own directory"],
        extra_vars={"llmserve_model_dir": "@no-config"},
    ),
    Case(
        "tensor_parallel_not_dividing_heads",
        [
            "llmserve_tensor_parallel_size 3 does not suit tiny-llama: num_attention_heads (4) must be divisible by "
            "tensor_parallel_size (3). Use one of 1, 2, 4"
        ],
        extra_vars={"llmserve_tensor_parallel_size": 3},
    ),
    Case(
        "pipeline_parallel_above_layers",
        ["llmserve_pipeline_parallel_size 8 is larger than tiny-llama's 4 layers", "Use at most 4"],
        extra_vars={"llmserve_pipeline_parallel_size": 8},
    ),
    Case(
        "max_model_len_above_model_maximum",
        ["llmserve_max_model_len 4096 is above tiny-llama's maximum of 2048 tokens", "Use at most 2048"],
        extra_vars={"llmserve_max_model_len": 4096},
    ),
    Case(
        "negative_tensor_parallel_size",
        ["llmserve_tensor_parallel_size on node1 is -2; use a whole number (0 lets the planner choose)"],
        extra_vars={"llmserve_tensor_parallel_size": -2},
    ),
    Case(
        "zero_fanout_width",
        ["model_weights_fanout_width on node1 is 0; use a whole number above 0"],
        extra_vars={"model_weights_fanout_width": 0},
    ),
    Case(
        "served_model_name_with_spaces",
        ["llmserve_served_model_name on node1 is 'tiny llama'", "no spaces"],
        extra_vars={"llmserve_served_model_name": "tiny llama"},
    ),
    Case(
        "non_numeric_gpu_count_in_node_devices",
        ["llmserve_node_devices.gpus on node1 is 'two'; use a whole number above 0"],
        extra_vars={"llmserve_node_devices": {"gpus": "two", "gpu_memory_mib": 1024, "gpu_name": "cpu"}},
    ),
    Case(
        "cluster_network_not_a_cidr",
        [f"llmserve_cluster_network on node1 is '10.77.{SANDBOX_SLOT}.0/33', not a network in CIDR form"],
        extra_vars={"llmserve_cluster_network": f"10.77.{SANDBOX_SLOT}.0/33"},
    ),
    Case(
        "version_pin_differs_per_host",
        [
            "llmserve_vllm_version differs between hosts (node1: '0.32.0'; node2: '0.31.0')",
            "Set it once for the group llmserve_cluster, not per host",
        ],
        host_vars={"node2": {"llmserve_vllm_version": "0.31.0"}},
    ),
    # --- paths, extra args, secrets and versions (issue 14), still on the controller alone ---
    Case(
        "ray_token_directly_in_etc",
        [
            "the directory of llmserve_ray_auth_token_path on node1 is '/etc', a top-level directory",
            "such as /etc/llmserve/ray",
        ],
        extra_vars={"llmserve_ray_auth_token_path": "/etc/ray-token"},
    ),
    Case(
        "model_path_holds_the_venv",
        [
            "llmserve_venv on node1 (/opt/llmserve/venv) is inside llmserve_model_path (/opt/llmserve)",
            "Give llmserve_model_path a directory of its own that holds no other llmserve path",
        ],
        extra_vars={"llmserve_model_path": "/opt/llmserve"},
    ),
    Case(
        "extra_args_as_a_string",
        ["vllm_serve_extra_args on node1 is '--dtype bfloat16 --enforce-eager', not a list"],
        extra_vars={"vllm_serve_extra_args": "--dtype bfloat16 --enforce-eager"},
    ),
    Case(
        "extra_args_set_a_planned_flag",
        [
            "vllm_serve_extra_args on node1 sets --tensor_parallel_size (that is --tensor-parallel-size)",
            "set llmserve_tensor_parallel_size instead",
            "vllm_serve_extra_args on node1 sets -pp (that is --pipeline-parallel-size)",
            "vllm_serve_extra_args on node1 sets --port (that is --port)",
        ],
        extra_vars={"vllm_serve_extra_args": ["--tensor_parallel_size=2", "-pp", "1", "--port=9000"]},
    ),
    Case(
        "trust_remote_code_underscored_unpinned",
        ["vllm_serve_extra_args on node1 has --trust-remote-code but llmserve_model_revision 'main' is not a 40-hex"],
        extra_vars={
            "llmserve_model_source": "hub",
            "llmserve_model_repo": "Qwen/Qwen-7B-Chat",
            "llmserve_model_revision": "main",
            "vllm_serve_extra_args": ["--trust_remote_code=True"],
        },
    ),
    Case(
        "api_key_with_a_space",
        ["llmserve_api_key on node1 contains whitespace", "or leave it null to have the head generate one"],
        extra_vars={"llmserve_api_key": "open sesame"},
    ),
    Case(
        "hf_token_in_the_unit_environment",
        [
            "vllm_serve_environment.HF_TOKEN on node1 puts a secret into the units' environment",
            "set model_weights_hf_token",
        ],
        extra_vars={"vllm_serve_environment": {"HF_TOKEN": "hf_not_a_real_token"}},
    ),
    Case(
        "index_credentials_in_pip_args",
        ["python_runtime_pip_extra_args on node1 has a package index URL with credentials in it", "/root/.netrc"],
        extra_vars={"python_runtime_pip_extra_args": ["--index-url", "https://ci:hunter2@pypi.internal/simple"]},
    ),
    Case(
        "sloppy_vllm_version",
        ["llmserve_vllm_version on node1 is 'v0.32'; pin a vLLM release as its full number, e.g. 0.32.0"],
        extra_vars={"llmserve_vllm_version": "v0.32"},
    ),
    Case(
        "ray_worker_ports_cover_the_gcs_port",
        [
            "llmserve_ray_gcs_port",
            "on node1 are inside Ray's worker port range ray_node_min_worker_port..ray_node_max_worker_port "
            "(6000-7000)",
        ],
        extra_vars={"llmserve_backend": "ray", "ray_node_min_worker_port": 6000, "ray_node_max_worker_port": 7000},
    ),
    Case(
        "ray_dashboard_on_every_interface_without_auth",
        ["ray_node_dashboard_host on node1 is '0.0.0.0', every interface", "ray_node_auth_enabled is false"],
        extra_vars={"llmserve_backend": "ray", "ray_node_dashboard_host": "0.0.0.0", "ray_node_auth_enabled": False},
    ),
    Case(
        "shard_missing_from_the_index",
        [
            "is missing 1 of the shards its model.safetensors.index.json names (model-00002-of-00002.safetensors)",
        ],
        extra_vars={"llmserve_model_dir": "@missing-shard"},
    ),
    Case(
        "ranks_that_do_not_divide_over_the_nodes",
        [
            "llmserve_tensor_parallel_size 1 x llmserve_pipeline_parallel_size 3 = 3 ranks cannot be spread evenly",
        ],
        extra_vars={
            "llmserve_node_devices": {"gpus": 2, "gpu_memory_mib": 1024, "gpu_name": "cpu"},
            "llmserve_tensor_parallel_size": 1,
            "llmserve_pipeline_parallel_size": 3,
        },
    ),
    # --- caught after the read-only probes, by fabric_facts and the planner ---
    Case(
        "cluster_interface_missing_on_a_host",
        ["llmserve_cluster_interface is 'eth7' but this host has no such interface; it has:", "eth0"],
        host_vars={"node2": {"llmserve_cluster_interface": "eth7"}},
    ),
    Case(
        "max_model_len_above_what_fits",
        [
            "The planner refused the settings; nothing was changed. Change llmserve_max_model_len",
            "fewer than one request of max_model_len 2,048",
        ],
        extra_vars={
            "llmserve_max_model_len": 2048,
            "llmserve_node_devices": {"gpus": 1, "gpu_memory_mib": 1, "gpu_name": "cpu"},
        },
    ),
    Case(
        "more_gpus_than_the_cluster_has",
        [
            "Change llmserve_tensor_parallel_size",
            "data_parallel_size 4 needs 8 GPUs; the cluster has 2",
        ],
        extra_vars={"llmserve_data_parallel_size": 4},
    ),
    # --- caught by the roles' preflight checks, still before any change ---
    Case(
        "wheelhouse_missing",
        ["python_runtime_wheelhouse=/srv/no-wheelhouse is not a directory on node1"],
        extra_vars={"python_runtime_wheelhouse": "/srv/no-wheelhouse"},
    ),
    Case(
        "unsupported_os",
        ["node2 runs Ubuntu 20.04 (os_family Debian, from /etc/os-release)", "Upgrade the host, or remove it"],
        setup={"node2": f"rm /etc/os-release && printf '%s' '{UBUNTU_2004}' > /etc/os-release"},
        restore={"node2": "rm -f /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release"},
    ),
    Case(
        "python_minor_version_skew",
        [
            "python_runtime_python differs in its Python minor version across the nodes (node1: 3.11, node2: 3.12)",
            "Use the same Python minor version everywhere",
        ],
        host_vars={"node2": {"python_runtime_python": FAKE_PYTHON_312}},
        # A node whose interpreter is 3.12 (the sandbox image has only 3.11): a stand-in that answers the version.
        setup={"node2": f"printf '#!/bin/sh\\necho 3.12.3\\n' > {FAKE_PYTHON_312} && chmod 755 {FAKE_PYTHON_312}"},
        restore={"node2": f"rm -f {FAKE_PYTHON_312}"},
    ),
    Case(
        "first_deploy_into_a_directory_with_other_files",
        [
            "llmserve_model_path (model_weights_path) /srv/models/team-share on node2 already holds 1 file(s) that are "
            "not part of this model (notes.txt)",
            "Set llmserve_model_path to an empty or new directory of its own",
        ],
        extra_vars={"llmserve_model_path": "/srv/models/team-share"},
        setup={"node2": "mkdir -p /srv/models/team-share && echo keep > /srv/models/team-share/notes.txt"},
        restore={"node2": "rm -rf /srv/models/team-share"},
    ),
    Case(
        "shared_path_mounted_on_one_node_only",
        [
            "llmserve_model_path /srv/llmserve-nfs/tiny-llama is not on the same storage on every node",
            "the shared storage is not mounted on it",
        ],
        extra_vars={"llmserve_model_source": "shared_path", "llmserve_model_path": "/srv/llmserve-nfs/tiny-llama"},
        # node1 mounts the "shared storage"; node2 has a stale local copy under the bare mount point. Both copies get
        # a safetensors index, which the planner needs to size a model it reads from shared storage.
        setup={
            "node1": "mkdir -p /srv/llmserve-nfs && mount -t tmpfs tmpfs /srv/llmserve-nfs && "
            f"cp -r /srv/shared-models/tiny-llama /srv/llmserve-nfs/ && {SHARED_COPY_INDEX}",
            "node2": f"mkdir -p /srv/llmserve-nfs && cp -r /srv/shared-models/tiny-llama /srv/llmserve-nfs/ && "
            f"{SHARED_COPY_INDEX}",
        },
        restore={
            "node1": "umount /srv/llmserve-nfs; rm -rf /srv/llmserve-nfs",
            "node2": "rm -rf /srv/llmserve-nfs",
        },
    ),
    Case(
        "insufficient_disk_space",
        ["node1 has", "GB free at /srv/models/tiny-llama but needs 2199.0 GB", "choose another model_weights_path"],
        extra_vars={"llmserve_model_dir": "@sparse"},
    ),
    # --- the other playbooks ---
    Case(
        "non_numeric_gpu_count_in_hypothetical_cluster",
        # parallel_plan's argument spec refuses it, naming the key and the type it needs.
        ["argument 'gpus' is of type str found in 'cluster'", "'eight'\" cannot be converted to an int"],
        extra_vars={
            "llmserve_plan_cluster": [{"name": "big", "gpus": "eight", "gpu_memory_mib": 81559, "gpu_name": "H100"}],
            "llmserve_model_dir": str(TINY_MODEL),
        },
        playbook=PLAN,
    ),
]


@pytest.fixture(scope="module")
def fresh_hosts(sandbox_cli, tmp_path_factory):
    """Two hosts that were never deployed, and the model directories the cases point at."""
    sandbox_cli("down", timeout=300)
    sandbox_cli("up", "--hosts", "2", timeout=900)
    prepare_sandbox_caches()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    group_vars = WORK_DIR / "group_vars"
    if not group_vars.exists():
        group_vars.symlink_to(REPO_ROOT / "inventories" / "sandbox" / "group_vars")
    models = tmp_path_factory.mktemp("models")
    no_config = models / "no-config"
    no_config.mkdir()
    shutil.copy(TINY_MODEL / "model.safetensors", no_config)
    # The tiny model plus a 2 TiB original checkpoint: sparse, so it costs nothing here but its size is real.
    sparse = models / "tiny-llama"
    shutil.copytree(TINY_MODEL, sparse, ignore=shutil.ignore_patterns(".llmserve-*"))
    (sparse / "original").mkdir()
    with open(sparse / "original" / "consolidated.00.pth", "wb") as handle:
        handle.truncate(2 * 1024**4)
    # The tiny model split in two shards by its index, the second one never copied.
    missing_shard = models / "missing-shard"
    shutil.copytree(TINY_MODEL, missing_shard, ignore=shutil.ignore_patterns(".llmserve-*"))
    (missing_shard / "model.safetensors").rename(missing_shard / "model-00001-of-00002.safetensors")
    (missing_shard / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": (missing_shard / "model-00001-of-00002.safetensors").stat().st_size},
                "weight_map": {
                    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                    "lm_head.weight": "model-00002-of-00002.safetensors",
                },
            }
        )
    )
    hosts, key = sandbox_hosts()
    return {
        "hosts": hosts,
        "key": key,
        "models": {"@no-config": str(no_config), "@sparse": str(sparse), "@missing-shard": str(missing_shard)},
    }


def case_inventory(case: Case) -> Path:
    """The sandbox inventory with the case's group or host changes."""
    inventory = yaml.safe_load(INVENTORY.read_text())
    children = inventory["llmserve_cluster"]["children"]
    all_hosts = {name: values for group in children.values() for name, values in (group.get("hosts") or {}).items()}
    if case.groups is not None:
        for group, members in case.groups.items():
            children[group] = {"hosts": {name: dict(all_hosts[name]) for name in members}}
    for group in children.values():
        for name, values in (group.get("hosts") or {}).items():
            values.update(case.host_vars.get(name, {}))
    path = WORK_DIR / f"{case.name}.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def fingerprint(environment) -> dict[str, list[str]]:
    return {
        name: ssh(environment["hosts"], environment["key"], name, FINGERPRINT).stdout.split()
        for name in environment["hosts"]
    }


def touch_markers(environment) -> None:
    for name in environment["hosts"]:
        ssh(environment["hosts"], environment["key"], name, f"touch {MARKER}")


def run_case(case: Case, environment):
    extra_vars = {
        name: environment["models"].get(value, value) if isinstance(value, str) else value
        for name, value in case.extra_vars.items()
    }
    if extra_vars.get("llmserve_model_dir", "").startswith("/") and "llmserve_plan_cluster" not in extra_vars:
        extra_vars.setdefault("llmserve_model_source", "controller_dir")
    vars_file = WORK_DIR / f"{case.name}.vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(case_inventory(case)),
        str(case.playbook),
        "-e",
        f"@{vars_file}",
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=ansible_environment(), capture_output=True, text=True, timeout=600, check=False
    )


def task_output(stdout: str, task_name: str) -> str:
    """What the default callback printed under TASK [task_name] (or [role : task_name]), up to the next task."""
    match = re.search(r"TASK \[(?:[\w.]+ : )?" + re.escape(task_name) + r"\]", stdout)
    if match is None:
        return ""
    return stdout[match.end() :].split("\nTASK [", 1)[0]


def test_there_are_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def case_runs(fresh_hosts):
    """Each case's run and the fingerprints taken around it.

    Cases without host setup only read the hosts, so they run side by side inside one marker window (a change
    by any of them shows in every one's fingerprint). Cases that alter a host first run alone.
    """
    runs = {}
    touch_markers(fresh_hosts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case.name: pool.submit(run_case, case, fresh_hosts) for case in CASES if not case.setup}
        shared = {name: future.result() for name, future in futures.items()}
    shared_fingerprint = fingerprint(fresh_hosts)
    runs.update({name: (run, shared_fingerprint) for name, run in shared.items()})
    for case in (case for case in CASES if case.setup):
        for name, command in case.setup.items():
            ssh(fresh_hosts["hosts"], fresh_hosts["key"], name, command)
        try:
            touch_markers(fresh_hosts)
            run = run_case(case, fresh_hosts)
            runs[case.name] = (run, fingerprint(fresh_hosts))
        finally:
            for name, command in case.restore.items():
                ssh(fresh_hosts["hosts"], fresh_hosts["key"], name, command)
    return runs


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_naming_the_variable_and_nothing_changes(case, case_runs, fresh_hosts):
    run, changed_files = case_runs[case.name]
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    for expected in case.expected:
        assert expected in output, f"{expected!r} not in:\n{output[-6000:]}"
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    assert changed_files == {name: [] for name in fresh_hosts["hosts"]}


def test_unpinned_revision_only_warns_and_the_run_goes_on(fresh_hosts):
    """A branch name as revision is worth a warning, not a refusal: preflight goes on to probe the nodes."""
    case = Case(
        "revision_not_a_commit",
        [],
        extra_vars={
            "llmserve_model_source": "hub",
            "llmserve_model_repo": "Qwen/Qwen3-0.6B",
            "llmserve_model_revision": "main",
        },
        playbook=PREFLIGHT,
    )
    touch_markers(fresh_hosts)
    run = run_case(case, fresh_hosts)
    output = " ".join((run.stdout + run.stderr).split())
    assert "llmserve_model_revision is 'main', not a 40-hex commit SHA" in output, output[-6000:]
    assert "Pin the commit SHA" in output
    # The checks passed and the play went on to probe both nodes; the sandbox has no route to the hub, so it stops
    # at the planner's download of config.json, which is not a refusal of the input.
    assert "ok: [node1 -> localhost]" in task_output(run.stdout, "Check groups and llmserve settings")
    for probe in (
        "Read the GPUs through NVML",
        "Read the fabric and work out the node's NCCL/GLOO/VLLM_HOST_IP environment",
    ):
        assert {"ok: [node1]", "ok: [node2]"} <= set(task_output(run.stdout, probe).splitlines()), run.stdout[-6000:]
    assert "The inventory has" not in output
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    assert fingerprint(fresh_hosts) == {name: [] for name in fresh_hosts["hosts"]}


def test_the_fingerprint_catches_what_an_ansible_change_writes(fresh_hosts):
    """The same fingerprint lists files a real Ansible task writes (so an empty one means nothing changed)."""
    touch_markers(fresh_hosts)
    run = ansible_playbook(SCRATCH_CHANGE, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    changed_files = fingerprint(fresh_hosts)
    for name in fresh_hosts["hosts"]:
        assert "/etc/llmserve-fingerprint-check/probe" in changed_files[name], changed_files[name]
    cleanup = ansible_playbook(SCRATCH_CHANGE, "-e", "scratch_state=absent", timeout=600)
    assert cleanup.returncode == 0, cleanup.stdout[-3000:]


def test_a_powered_off_host_being_decommissioned_is_skipped(fresh_hosts):
    """node3 is still in the inventory and named in llmserve_decommission, but nothing answers at its address (it was
    powered off first). deploy.yml sets it aside instead of failing on it: the probes and the role checks run on
    node1 and node2 only, and the run stops at a real refusal further on (a missing wheelhouse), with no host
    changed."""
    inventory = yaml.safe_load(INVENTORY.read_text())
    workers = inventory["llmserve_cluster"]["children"]["ray_workers"]["hosts"]
    workers["node3"] = dict(workers["node2"], ansible_host=address(60))
    path = WORK_DIR / "decommissioned_host_powered_off.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    vars_file = WORK_DIR / "decommissioned_host_powered_off.vars.json"
    vars_file.write_text(
        json.dumps(
            {
                "llmserve_decommission": "node3",
                "llmserve_tensor_parallel_size": 2,
                "python_runtime_wheelhouse": "/srv/no-wheelhouse",
            }
        )
    )
    touch_markers(fresh_hosts)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(path), str(DEPLOY), "-e", f"@{vars_file}"],
        cwd=REPO_ROOT,
        env=ansible_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    for probe in (
        "Read the GPUs through NVML",
        "Read the fabric and work out the node's NCCL/GLOO/VLLM_HOST_IP environment",
    ):
        lines = set(task_output(run.stdout, probe).splitlines())
        assert {"ok: [node1]", "ok: [node2]"} <= lines, run.stdout[-6000:]
        assert not any("node3" in line for line in lines), lines
    # The refusal that ends the run is the wheelhouse one, on the serving hosts; node3 was never waited for again.
    assert "python_runtime_wheelhouse=/srv/no-wheelhouse is not a directory on node1" in output, output[-6000:]
    counts = recap(run.stdout)
    assert counts["node3"]["unreachable"] == 0, counts
    assert all(host_counts["changed"] == 0 for host_counts in counts.values()), counts
    assert fingerprint(fresh_hosts) == {name: [] for name in fresh_hosts["hosts"]}
