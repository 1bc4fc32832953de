# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the integration tests share: the sandbox inventory, ssh into a host, ansible-playbook, the recap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
# The sandbox slot this run uses (LLMSERVE_SANDBOX_SLOT, see tests/sandbox/sandbox.py); 0 in CI.
SANDBOX_SLOT = int(os.environ.get("LLMSERVE_SANDBOX_SLOT", "0"))
INVENTORY = (
    REPO_ROOT / "inventories" / "sandbox" / "hosts.yml"
    if SANDBOX_SLOT == 0
    else REPO_ROOT / ".build" / f"sandbox-slot{SANDBOX_SLOT}" / "hosts.yml"
)
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def sandbox_hosts() -> tuple[dict[str, str], str]:
    """Host names mapped to addresses, and the SSH key, from the inventory sandbox.py wrote."""
    inventory = yaml.safe_load(INVENTORY.read_text())["llmserve_cluster"]
    hosts = {
        name: values["ansible_host"]
        for group in inventory["children"].values()
        for name, values in (group.get("hosts") or {}).items()
    }
    return hosts, inventory["vars"]["ansible_ssh_private_key_file"]


def ssh(hosts: dict[str, str], key: str, name: str, command: str, check: bool = True, timeout: float = 120):
    return subprocess.run(
        ["ssh", "-i", key, *SSH_OPTIONS, f"root@{hosts[name]}", command],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def ansible_environment() -> dict[str, str]:
    """Playbooks run from this checkout with the repository's ansible.cfg (pipelining on)."""
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(REPO_ROOT / ".build" / "collections"),
    )


def ansible_playbook(playbook: Path | str, *arguments: str, background: bool = False, timeout: float = 1800):
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY), str(playbook), *arguments]
    if background:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=ansible_environment(), stdout=subprocess.PIPE, text=True)
    return subprocess.run(
        command, cwd=REPO_ROOT, env=ansible_environment(), capture_output=True, text=True, timeout=timeout, check=False
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts by host."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.MULTILINE)
    }


def plan_table(output: str) -> str:
    """The plan comparison deploy.yml printed (its debug task's output), for a failing assertion to show."""
    start = output.find("TASK [Show the plan in effect and the new plan side by side]")
    if start < 0:
        return "(deploy printed no plan comparison)\n" + output[-3000:]
    end = output.find("PLAY [", start)
    return output[start : end if end > 0 else start + 6000]


def prepare_sandbox_caches() -> None:
    """The wheelhouse and the tiny model every deploy installs from (each a no-op when current)."""
    for script in (["wheelhouse.py"], ["make_tiny_model.py", "--ensure-venv"]):
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "sandbox" / script[0]), *script[1:]], check=True)


# What the last converge of ensure_native_cluster left: its host count and arguments, and each host's
# fingerprint right after it (see cluster_fingerprint).
LAST_CONVERGE: dict[str, object] = {}
# Read on every host in one round trip: vLLM's unit invocation (a new ID at every start or restart, by
# systemd, by a playbook or by a test), its state, the unit file and everything under /etc/llmserve (plan,
# environment, key), and the weights under /srv/models with inode and mtime (a copy or repair changes them).
FINGERPRINT_COMMAND = (
    "systemctl show -p InvocationID -p ActiveState -p SubState vllm.service; "
    "cat /etc/systemd/system/vllm.service 2>/dev/null | sha256sum; "
    "find /etc/llmserve -type f -exec sha256sum {} + 2>/dev/null | sort; "
    "find /srv/models -xdev -type f -printf '%p %i %T@ %s\\n' 2>/dev/null | sort | sha256sum"
)


def cluster_fingerprint(hosts: dict[str, str], key: str) -> dict[str, str]:
    """What any change to a native deployment alters on its hosts; equal fingerprints mean nothing changed."""
    return {name: ssh(hosts, key, name, FINGERPRINT_COMMAND, check=False, timeout=30).stdout for name in hosts}


def ensure_native_cluster(run_sandbox, hosts: int = 2, *arguments: str):
    """A converged native deployment on HOSTS sandbox hosts, reusing whatever is already up.

    `up` only adds hosts and a converged cluster re-runs in seconds, so modules that need a serving
    cluster share one instead of each paying for a first deploy. When this session's last converge had
    the same hosts and arguments, and since then no host's fingerprint changed (no vLLM start, no other
    unit, plan, key or weights) and the endpoint answers, that converge still holds and deploy is not run
    again. Fails the test when deploy fails. Returns deploy's run, or None when the converge still held.
    """
    run_sandbox("up", "--hosts", str(hosts), timeout=900)
    inventory_hosts, key = sandbox_hosts()
    wanted = {"hosts": sorted(inventory_hosts), "arguments": list(arguments)}
    if (
        LAST_CONVERGE.get("wanted") == wanted
        and LAST_CONVERGE.get("fingerprint") == cluster_fingerprint(inventory_hosts, key)
        and completion_answers(inventory_hosts, key, timeout=60)
    ):
        return None
    LAST_CONVERGE.clear()
    prepare_sandbox_caches()
    run = ansible_playbook(REPO_ROOT / "playbooks" / "deploy.yml", *arguments, timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    LAST_CONVERGE.update(wanted=wanted, fingerprint=cluster_fingerprint(inventory_hosts, key))
    return run


# The sandbox's endpoint: the tiny model on the head's cluster address (vllm_serve and llama_cpp alike).
API_PORT = 8000
MODEL_NAME = "tiny-llama"


def completion(
    address: str, api_key: str | None, prompt: str = "Hello", max_tokens: int = 4, port: int = API_PORT
) -> dict:
    """A completion from this machine; raises urllib.error.HTTPError on a refusal (401) or a failure."""
    body = json.dumps({"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"http://{address}:{port}/v1/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def completion_answers(hosts: dict[str, str], key: str, timeout: int = 120) -> bool:
    """Whether the endpoint answers a completion, asked on node1 with the API key kept there."""
    command = (
        f"curl -sf -m {timeout} -H 'Content-Type: application/json' "
        '-H "Authorization: Bearer $(cat /etc/llmserve/api-key)" '
        f"http://{hosts['node1']}:{API_PORT}/v1/completions "
        f'-d \'{{"model": "{MODEL_NAME}", "prompt": "Hello", "max_tokens": 1}}\''
    )
    answer = ssh(hosts, key, "node1", command, check=False, timeout=timeout + 30)
    return answer.returncode == 0 and '"choices"' in answer.stdout
