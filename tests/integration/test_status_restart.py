# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/status.yml and playbooks/restart.yml on the serving native cluster (two hosts, TP 2).

status.yml prints every node, its units, the plan in effect and a timed completion, and draws the
placement; restart.yml stops every rank before any starts and serves again; a stopped worker rank
(fault drill 2) makes status.yml name it and exit non-zero, and a deploy.yml re-run restores it.
The module leaves the cluster converged and serving.
"""

from __future__ import annotations

import re

import pytest

from .helpers import REPO_ROOT, ansible_playbook, completion_answers, ensure_native_cluster, sandbox_hosts, ssh

STATUS = REPO_ROOT / "playbooks" / "status.yml"
RESTART = REPO_ROOT / "playbooks" / "restart.yml"
DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli, hosts=2)
    return sandbox_hosts()


def unit_times(hosts, key) -> dict[str, dict[str, int]]:
    """vllm.service's monotonic stop and start times per host (the hosts share this machine's clock)."""
    properties = "InactiveEnterTimestampMonotonic,ActiveEnterTimestampMonotonic,ActiveState"
    times = {}
    for name in hosts:
        shown = ssh(hosts, key, name, f"systemctl show vllm.service -p {properties}").stdout
        values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        times[name] = {
            "stopped": int(values["InactiveEnterTimestampMonotonic"]),
            "started": int(values["ActiveEnterTimestampMonotonic"]),
            "active": values["ActiveState"] == "active",
        }
    return times


def test_status_prints_every_node_its_units_the_plan_and_a_timed_completion(cluster, tmp_path):
    hosts, _unused = cluster
    page = tmp_path / "status.html"
    run = ansible_playbook(STATUS, "-e", f"llmserve_status_html={page}", timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    report = run.stdout
    for name, address in hosts.items():
        row = re.search(
            rf"^\s*\|\s*{name}\s*\|\s*{re.escape(address)}\s*\|\s*(\d)\s*\|\s*yes\s*\|([^|]*)\|([^|]*)\|", report, re.M
        )
        assert row, (name, report[-5000:])
        assert "vllm active (running)" in row.group(2)
        assert row.group(3).strip() == "in effect"
    assert "CLUSTER  backend native, 2 x 1 x 1 (TP x PP x DP), tensor_parallel" in report
    # The sandbox has no NVML: its devices are the described ones, said so.
    assert len(re.findall(r"\|\s*cpu \(described\)\s*\|\s*\? / 1024 MiB\s*\|\s*no NVML\s*\|", report)) == 2, report[
        -5000:
    ]
    assert "Plan in effect (/etc/llmserve/plan.json)" in report
    assert "HEALTHY" in report
    # The endpoint row: health, model, the completion and how long it took.
    seconds = re.search(r"^\s*\|\s*200\s*\|\s*tiny-llama\s*\|\s*ok: .*\|\s*([0-9.]+)\s*\|$", report, re.M)
    assert seconds and 0 < float(seconds.group(1)) < 60, report[-3000:]
    html = page.read_text()
    assert "<h2>node1</h2>" in html and "<h2>node2</h2>" in html
    # TP 2 over two one-device hosts: node1's device is TP rank 0, node2's TP rank 1.
    assert html.index("PP 0 · TP 0") < html.index("<h2>node2</h2>") < html.index("PP 0 · TP 1")


def test_restart_stops_every_rank_before_any_starts_and_serves_again(cluster):
    hosts, key = cluster
    before = unit_times(hosts, key)
    run = ansible_playbook(RESTART, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    after = unit_times(hosts, key)
    assert all(times["active"] for times in after.values()), after
    assert all(after[name]["started"] > before[name]["started"] for name in hosts), (before, after)
    # A rank that reaches a stopping rank 0 joins its dying group: every rank is down before any starts.
    assert max(times["stopped"] for times in after.values()) < min(times["started"] for times in after.values())
    out = run.stdout
    assert (
        out.index("Stop vLLM on every rank") < out.index("Start vLLM on every rank") < out.index("Report the restart")
    )
    # The callback folds long messages: compare with whitespace collapsed.
    flat = " ".join(out.split())
    serving_again = r"vLLM is serving again \(it answered a completion [0-9.]+ s after it started\)"
    assert re.search(serving_again, flat), out[-3000:]
    assert completion_answers(hosts, key)


# Fault drill 2 (a stopped worker rank: status reports it, a deploy re-run restores it) is in
# test_fault_drills.py, with the checks that nothing was lost.
