# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Secure by default, checked on a deployed sandbox: listeners, secrets in logs and files, auth.

Runs on the serving native cluster (helpers.ensure_native_cluster). The Ray token checks live in
test_ray_cluster.py, where Ray runs.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from .helpers import REPO_ROOT, ansible_playbook, ensure_native_cluster, sandbox_hosts, ssh

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
HF_TOKEN = "hf_llmserveSecurityCanary0123456789abcdef"

# Listeners on every interface that the deployment cannot narrow, with why. Anything else on a
# wildcard address fails the test. sshd is the user's own; torch's TCPStore (vLLM's native
# rendezvous on the master port) takes no bind address.
WILDCARD_ALLOWED = {
    ("sshd", "22"): "the host's own SSH server",
    ("vllm", "29555"): "torch.distributed TCPStore of the native backend's rendezvous binds all interfaces",
}

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def verbose_run(sandbox_cli):
    """A converged cluster, then one more full deploy at -vvv with an HF token set."""
    ensure_native_cluster(sandbox_cli, 2)
    run = ansible_playbook(DEPLOY, "-vvv", "-e", f"model_weights_hf_token={HF_TOKEN}", timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:]
    hosts, key = sandbox_hosts()
    api_key = ssh(hosts, key, "node1", "cat /etc/llmserve/api-key").stdout.strip()
    assert len(api_key) >= 32
    return run, hosts, key, api_key


def listeners(hosts, key, name: str) -> list[tuple[str, str, str]]:
    """(address, port, process) of every listening TCP socket on NAME."""
    found = []
    for line in ssh(hosts, key, name, "ss -Hltnp").stdout.splitlines():
        fields = line.split()
        address, _sep, port = fields[3].rpartition(":")
        process = re.search(r'users:\(\("([^"]+)"', line)
        found.append((address.strip("[]"), port, process.group(1) if process else "?"))
    return found


def test_nothing_listens_on_every_interface_except_the_documented_exceptions(verbose_run):
    _run, hosts, key, _api_key = verbose_run
    for name, address in hosts.items():
        sockets = listeners(hosts, key, name)
        assert sockets, f"ss listed nothing on {name}"
        for bind, port, process in sockets:
            if bind in ("127.0.0.1", "::1", address):
                continue
            # vLLM's processes carry their own titles (VLLM::EngineCore...); ss shows the command name.
            owner = "vllm" if process.lower().startswith(("vllm", "python")) else process
            assert bind in ("0.0.0.0", "*", "::") and (owner, port) in WILDCARD_ALLOWED, (
                f"{name}: {process} listens on {bind}:{port}"
            )
    api = [(bind, port) for bind, port, _process in listeners(hosts, key, "node1") if port == "8000"]
    assert api == [(hosts["node1"], "8000")], api


def test_secrets_appear_in_no_log_unit_file_or_systemctl_show(verbose_run):
    run, hosts, key, api_key = verbose_run
    secrets = {"api key": api_key, "hf token": HF_TOKEN}
    output = run.stdout + run.stderr
    assert "node1" in output and len(output) > 100_000, "the -vvv run printed less than expected"
    for label, secret in secrets.items():
        assert secret not in output, f"the {label} is in the -vvv output"
    for name in hosts:
        inspected = ssh(
            hosts,
            key,
            name,
            "cat /etc/systemd/system/*.service; systemctl show vllm.service; systemctl cat vllm.service;"
            " journalctl -u vllm.service --no-pager; cat /etc/llmserve/plan.json",
            check=False,
        ).stdout
        assert "vllm serve" in inspected or name != "node1"
        for label, secret in secrets.items():
            assert secret not in inspected, f"the {label} is readable in {name}'s units, journal or plan"


def test_secret_files_are_root_only(verbose_run):
    _run, hosts, key, _api_key = verbose_run
    modes = ssh(hosts, key, "node1", "stat -c '%a %U %n' /etc/llmserve/api-key /etc/llmserve/vllm.env").stdout
    assert modes.split("\n")[:2] == ["600 root /etc/llmserve/api-key", "600 root /etc/llmserve/vllm.env"], modes
    holders = 'grep -rlF "$(cat /etc/llmserve/api-key)" /etc /var/lib /root 2>/dev/null'
    world_readable = ssh(hosts, key, "node1", holders + " | xargs -r stat -c '%a %n'", check=False).stdout
    for line in world_readable.splitlines():
        mode, path = line.split(" ", 1)
        assert int(mode[-1]) & 4 == 0, f"{path} holds the API key and is world-readable ({mode})"


def test_completions_need_the_api_key(verbose_run):
    _run, hosts, _key, api_key = verbose_run
    url = f"http://{hosts['node1']}:8000/v1/completions"
    body = b'{"model": "tiny-llama", "prompt": "Hi", "max_tokens": 1}'
    for header in ({}, {"Authorization": "Bearer wrong-key"}):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **header})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 401
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
