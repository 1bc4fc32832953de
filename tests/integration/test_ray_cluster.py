# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ray_node role on the sandbox: head and worker units form one cluster with token auth.

Runs after test_deploy_native (same two hosts, runtime already installed).
"""

from __future__ import annotations

import re

import pytest

from .helpers import REPO_ROOT, ansible_playbook, recap, sandbox_hosts, ssh

CONVERGE = REPO_ROOT / "tests" / "integration" / "ray" / "converge.yml"
RAY = "/opt/llmserve/venv/bin/ray"
TOKEN_ENVIRONMENT = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/llmserve/ray/token"

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def ray_cluster(sandbox_cli):
    sandbox_cli("up", "--hosts", "2", timeout=900)
    run = ansible_playbook(CONVERGE, timeout=1800)
    hosts, key = sandbox_hosts()
    return run, hosts, key


def test_units_form_one_cluster_that_lists_every_node(ray_cluster):
    run, hosts, key = ray_cluster
    assert run.returncode == 0, run.stdout[-6000:]
    status = ssh(hosts, key, "node1", f"env {TOKEN_ENVIRONMENT} {RAY} status --address {hosts['node1']}:6379").stdout
    active = status.split("Active:", 1)[1].split("Pending:", 1)[0]
    assert len(re.findall(r"^\s*1 node_[0-9a-f]+$", active, re.MULTILINE)) == len(hosts), status
    for name in hosts:
        unit = "ray-head.service" if name == "node1" else "ray-worker.service"
        assert ssh(hosts, key, name, f"systemctl is-active {unit}").stdout.strip() == "active"


def test_second_converge_changes_nothing(ray_cluster):
    run = ansible_playbook(CONVERGE, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:]
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)


def test_dashboard_is_on_localhost_and_token_is_private(ray_cluster):
    _unused, hosts, key = ray_cluster
    listening = ssh(hosts, key, "node1", "ss -Hltn 'sport = :8265'").stdout
    assert "127.0.0.1:8265" in listening and "0.0.0.0:8265" not in listening, listening
    mode = ssh(hosts, key, "node2", "stat -c '%a %U' /etc/llmserve/ray/token").stdout.strip()
    assert mode == "600 llmserve"


def test_client_without_the_token_is_refused(ray_cluster):
    _unused, hosts, key = ray_cluster
    refused = ssh(
        hosts, key, "node1", f"env RAY_AUTH_MODE=disabled {RAY} status --address {hosts['node1']}:6379", check=False
    )
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()
