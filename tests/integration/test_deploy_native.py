# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/deploy.yml on two sandbox hosts: vLLM's native multi-node backend, TP 2 across them.

Converge, converge again with changed=0, then check behaviour: a completion answered through the
API key, refused without it, served by a rank-0 unit whose peer rank runs headless on the other
host; --check --diff reports nothing; teardown leaves no unit, process or port behind.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from .helpers import API_PORT, REPO_ROOT, ansible_playbook, completion, recap, sandbox_hosts, ssh

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
TEARDOWN = REPO_ROOT / "playbooks" / "teardown.yml"

pytestmark = pytest.mark.sandbox


# Session-scoped: the teardown test runs later in the suite (conftest.MOVED_TESTS) on the same deployment.
@pytest.fixture(scope="session")
def deployed(sandbox_cli):
    """Two fresh hosts with the tiny model deployed; the first converge is itself the first test."""
    sandbox_cli("down", timeout=300)
    sandbox_cli("up", "--hosts", "2", timeout=900)
    for script in (["wheelhouse.py"], ["make_tiny_model.py", "--ensure-venv"]):
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "sandbox" / script[0]), *script[1:]], check=True)
    run = ansible_playbook(DEPLOY, timeout=2400)
    hosts, key = sandbox_hosts()
    return run, hosts, key


def api_key(hosts, key) -> str:
    return ssh(hosts, key, "node1", "cat /etc/llmserve/api-key").stdout.strip()


def test_first_converge_succeeds_and_prints_the_plan(deployed):
    run, _unused, _unused = deployed
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "| tensor_parallel |" in run.stdout
    assert all(counts["failed"] == 0 and counts["unreachable"] == 0 for counts in recap(run.stdout).values())


def test_second_converge_changes_nothing(deployed):
    run = ansible_playbook(DEPLOY, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:]
    counts = recap(run.stdout)
    assert set(counts) == {"node1", "node2"}
    assert all(host_counts["changed"] == 0 for host_counts in counts.values()), counts


def test_completion_is_served_by_tensor_parallel_across_both_hosts(deployed):
    _unused, hosts, key = deployed
    answer = completion(hosts["node1"], api_key(hosts, key))
    assert answer["choices"][0]["text"], answer
    assert answer["usage"]["completion_tokens"] >= 1
    rank1 = ssh(hosts, key, "node2", "systemctl show vllm.service -p ActiveState -p ExecStart").stdout
    assert "ActiveState=active" in rank1
    assert "--node-rank 1" in rank1
    assert "--headless" in rank1
    rank0_log = ssh(hosts, key, "node1", "journalctl -u vllm.service --no-pager -o cat").stdout
    assert "world_size=2" in rank0_log


def test_completion_without_the_api_key_is_refused(deployed):
    _unused, hosts, _unused = deployed
    with pytest.raises(urllib.error.HTTPError) as refused:
        completion(hosts["node1"], None)
    assert refused.value.code == 401


def test_check_diff_on_the_deployed_sandbox_reports_nothing(deployed):
    run = ansible_playbook(DEPLOY, "--check", "--diff", timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:]
    assert all(host_counts["changed"] == 0 for host_counts in recap(run.stdout).values()), recap(run.stdout)


def test_teardown_leaves_no_unit_process_or_port(deployed):
    _unused, hosts, key = deployed
    run = ansible_playbook(TEARDOWN, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    for name in hosts:
        units = ssh(hosts, key, name, "ls /etc/systemd/system/ | grep -E 'vllm|ray-' || true").stdout
        assert units.strip() == "", (name, units)
        processes = ssh(hosts, key, name, "pgrep -af '[v]llm|[r]ay::|[r]aylet|[g]cs_server' || true").stdout
        assert processes.strip() == "", (name, processes)
        ports = ssh(hosts, key, name, f"ss -Hltn 'sport = :{API_PORT} or sport = :29555' || true").stdout
        assert ports.strip() == "", (name, ports)
