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


def test_second_converge_changes_nothing_and_never_shows_the_token(ray_cluster):
    _unused, hosts, key = ray_cluster
    run = ansible_playbook(CONVERGE, "-vvv", timeout=900)
    assert run.returncode == 0, run.stdout[-6000:]
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    token = ssh(hosts, key, "node1", "cat /etc/llmserve/ray/token").stdout.strip()
    assert len(token) >= 32
    assert token not in run.stdout + run.stderr
    for name in hosts:
        units = ssh(hosts, key, name, "cat /etc/systemd/system/ray-*.service; systemctl show 'ray-*'").stdout
        assert token not in units


def test_job_submission_without_the_token_is_refused(ray_cluster):
    _unused, hosts, key = ray_cluster
    jobs = "http://127.0.0.1:8265/api/jobs/"
    without = ssh(hosts, key, "node1", f"curl -s -o /dev/null -w '%{{http_code}}' {jobs}", check=False).stdout
    assert without == "401"
    bearer = "Authorization: Bearer $(cat /etc/llmserve/ray/token)"
    with_token = ssh(hosts, key, "node1", f'curl -s -o /dev/null -w "%{{http_code}}" -H "{bearer}" {jobs}').stdout
    assert with_token == "200"
    submit = f"{RAY} job submit --address http://127.0.0.1:8265 --no-wait -- python -c 'print(1)'"
    refused = ssh(hosts, key, "node1", f"env RAY_AUTH_MODE=disabled {submit}", check=False)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


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


def test_the_ray_backend_starts_vllm_over_ray_with_the_planned_flags(ray_cluster):
    """deploy.yml with the ray backend: Ray forms, and vllm.service starts with the planned flags and environment.

    vLLM on CPU then refuses Ray as its executor ("does not support ray"), so serving itself needs GPUs: the
    readiness wait ends when the unit exits, and the change rolls back (vllm_serve's transactional change): the
    native unit that served before is put back, or the new unit removed where none did, before the play fails.
    The Ray unit it tried is kept in the staged directory.
    """
    _unused, hosts, key = ray_cluster
    run = ansible_playbook(
        REPO_ROOT / "playbooks" / "deploy.yml",
        "-e",
        "llmserve_backend=ray",
        "-e",
        "vllm_serve_ready_timeout=420",
        "-e",
        "vllm_serve_restart_sec=1",
        timeout=2400,
    )
    try:
        assert run.returncode != 0, "vLLM over Ray served on CPU: update this test and the README"
        out = " ".join(run.stdout.split())
        assert "The new vLLM configuration did not serve" in out, run.stdout[-6000:]
        # Whether a native group served before depends on the modules that ran first; either way the report
        # says what the rollback did.
        assert "Rollback: " in out, run.stdout[-6000:]
        unit = ssh(hosts, key, "node1", "cat /etc/llmserve/staged/vllm.service").stdout
        command = " ".join(unit.replace("\\\n", " ").split())
        for flag in ("--distributed-executor-backend ray", "--tensor-parallel-size 2", f"--host {hosts['node1']}"):
            assert flag in command, unit
        for variable in (
            f"RAY_ADDRESS={hosts['node1']}:6379",
            "RAY_AUTH_MODE=token",
            "RAY_AUTH_TOKEN_PATH=/etc/llmserve/ray/token",
            f"VLLM_HOST_IP={hosts['node1']}",
            "GLOO_SOCKET_IFNAME=eth0",
        ):
            assert f'Environment="{variable}"' in unit, unit
        assert "--nnodes" not in unit and "--headless" not in unit
        # With the Ray backend only rank 0 runs vllm serve: node2 was never given a Ray unit.
        staged = "grep -l 'executor-backend ray' /etc/llmserve/staged/vllm.service"
        node2 = ssh(hosts, key, "node2", staged, check=False)
        assert node2.stdout.strip() == ""
        journal = ssh(hosts, key, "node1", "journalctl -u vllm.service --no-pager -o cat").stdout
        assert "does not support ray" in journal.lower(), journal[-3000:]
        # The Ray unit that failed does not stay installed: the native unit that served before is back, or none.
        live = ssh(hosts, key, "node1", "cat /etc/systemd/system/vllm.service", check=False).stdout
        assert "--distributed-executor-backend ray" not in live
    finally:
        ssh(
            hosts,
            key,
            "node1",
            "systemctl disable --now vllm.service; rm -f /etc/systemd/system/vllm.service",
            check=False,
        )
