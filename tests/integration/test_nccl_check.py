# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/nccl_check.yml on the two-host CPU deployment: gloo all-reduce across the hosts.

There is no GPU or NCCL here, so this proves the orchestration: both nodes start together, meet on
the head's cluster address with the node environment preflight computed, and the report shows a
bandwidth row per message size. The NCCL log decisions are unit-tested on real logs.
"""

from __future__ import annotations

import re

import pytest

from .helpers import REPO_ROOT, ansible_playbook, ensure_native_cluster, recap, sandbox_hosts, ssh

NCCL_CHECK = REPO_ROOT / "playbooks" / "nccl_check.yml"
RENDEZVOUS_PORT = 29600
pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli)
    return sandbox_hosts()


@pytest.fixture(scope="module")
def first_run(cluster):
    return ansible_playbook(NCCL_CHECK, timeout=900)


def test_all_reduce_across_both_hosts_reports_bandwidth_per_size(first_run):
    assert first_run.returncode == 0, first_run.stdout[-6000:] + first_run.stderr[-3000:]
    assert "all-reduce over 2 ranks (gloo); busbw = algbw * 2(n-1)/n" in first_run.stdout
    rows = re.findall(r"\| (\d+ [KM]iB) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", first_run.stdout)
    # The sandbox's sizes (inventories/sandbox/group_vars/llmserve_cluster/nccl_check.yml).
    assert [row[0] for row in rows] == ["4 KiB", "64 KiB", "1 MiB"], first_run.stdout[-3000:]
    for _size, time_us, algbw, busbw in rows:
        assert float(time_us) > 0 and float(busbw) == float(algbw), "2 ranks: busbw = algbw * 2(2-1)/2"
    assert float(rows[-1][2]) > 0
    assert "gloo on CPU: no NCCL transport to judge" in first_run.stdout


def test_each_node_ran_with_preflights_environment_and_left_nothing_listening(cluster, first_run):
    hosts, key = cluster
    assert first_run.returncode == 0
    result = ssh(hosts, key, "node1", "cat /var/lib/llmserve/nccl-check/result.json").stdout
    assert '"world_size": 2' in result and '"sum_correct": true' in result
    for name in ("node1", "node2"):
        listening = ssh(hosts, key, name, f"ss -ltn | grep ':{RENDEZVOUS_PORT} ' || true").stdout
        assert listening == "", f"{name} still listens on the rendezvous port: {listening}"
        processes = ssh(hosts, key, name, "pgrep -f '[l]lmserve_allreduce' || true").stdout
        assert processes == "", f"{name} still runs the all-reduce: {processes}"


def test_second_run_changes_nothing(cluster, first_run):
    assert first_run.returncode == 0
    again = ansible_playbook(NCCL_CHECK, timeout=900)
    assert again.returncode == 0, again.stdout[-6000:]
    assert all(counts["changed"] == 0 for counts in recap(again.stdout).values()), recap(again.stdout)


def test_a_wrong_gloo_interface_fails_with_the_nodes_output(cluster, first_run):
    run = ansible_playbook(
        NCCL_CHECK,
        "-e",
        '{"nccl_check_environment": {"GLOO_SOCKET_IFNAME": "nosuch0"}, "nccl_check_timeout": 30}',
        timeout=900,
    )
    assert run.returncode != 0
    assert "The all-reduce failed on node" in run.stdout
    assert "GLOO_SOCKET_IFNAME=nosuch0" in run.stdout, "the node's environment is shown with the failure"
