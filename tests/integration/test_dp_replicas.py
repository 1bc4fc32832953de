# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Data-parallel replicas as serving groups: two hosts, one replica each, restarted one at a time.

With TP 1 and DP 2 over the sandbox's two one-device hosts, the plan has two serving groups, each an
independent vLLM server with its API on its own host and the same API key. restart.yml restarts one
group at a time while a poller asks both endpoints for a completion: one of them answers at every
sample. The next module that needs the suite's standard cluster (TP 2, one group) converges back to it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from .helpers import (
    API_PORT,
    MODEL_NAME,
    REPO_ROOT,
    ansible_playbook,
    ensure_native_cluster,
    plan_table,
    recap,
    sandbox_hosts,
    ssh,
)

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
RESTART = REPO_ROOT / "playbooks" / "restart.yml"
STATUS = REPO_ROOT / "playbooks" / "status.yml"
# The sandbox's group_vars set TP 2; replicas need TP 1 on its one-device hosts.
DATA_PARALLEL = ("-e", "llmserve_tensor_parallel_size=1", "-e", "llmserve_data_parallel_size=2")
# The poller: a sample every half second, each request bounded, the whole run bounded.
POLL_INTERVAL = 0.5
REQUEST_TIMEOUT = 15
POLL_LIMIT = 1500

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def replicas(sandbox_cli):
    ensure_native_cluster(sandbox_cli, 2, *DATA_PARALLEL)
    hosts, key = sandbox_hosts()
    api_key = ssh(hosts, key, "node1", "cat /etc/llmserve/api-key").stdout.strip()
    # No restore afterwards: the modules that need the standard cluster (TP 2 over node1 and node2, one
    # serving group) ask ensure_native_cluster for it, which sees these replicas and converges back.
    return hosts, key, api_key


def answers(address: str, api_key: str | None, timeout: float = REQUEST_TIMEOUT) -> int | None:
    """HTTP status of a one-token completion on ADDRESS (None when nothing answered)."""
    body = json.dumps({"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"http://{address}:{API_PORT}/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status if '"choices"' in response.read().decode() else None
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def started_at(hosts, key, name: str) -> int:
    """vllm.service's last start on NAME, in CLOCK_MONOTONIC microseconds (the hosts share this machine's clock)."""
    shown = ssh(hosts, key, name, "systemctl show -p ActiveEnterTimestampMonotonic --value vllm.service")
    return int(shown.stdout.strip())


def test_the_plan_has_one_serving_group_per_host_and_both_serve_with_the_key(replicas):
    hosts, key, api_key = replicas
    plan = json.loads(ssh(hosts, key, "node1", "cat /etc/llmserve/plan.json").stdout)
    sizes = (plan["tensor_parallel_size"], plan["pipeline_parallel_size"], plan["data_parallel_size"])
    assert sizes == (1, 1, 2)
    assert [(group["nodes"], group["endpoint_node"]) for group in plan["serving_groups"]] == [
        (["node1"], "node1"),
        (["node2"], "node2"),
    ]
    # Each host runs its own server: no multi-node rendezvous, no data-parallel flag, its own API address.
    for name, address in hosts.items():
        command = ssh(hosts, key, name, "systemctl show -p ExecStart --value vllm.service").stdout
        assert "--nnodes 1 " in command and "--node-rank 0 " in command and f"--host {address} " in command
        assert "--data-parallel-size" not in command and "--headless" not in command
    assert ssh(hosts, key, "node2", "cat /etc/llmserve/api-key").stdout.strip() == api_key
    assert ssh(hosts, key, "node2", "stat -c '%a %U' /etc/llmserve/api-key").stdout.strip() == "600 root"
    for address in hosts.values():
        assert answers(address, api_key, timeout=120) == 200
        assert answers(address, None, timeout=120) == 401


def test_a_rerun_with_the_same_replicas_changes_nothing(replicas):
    run = ansible_playbook(DEPLOY, *DATA_PARALLEL, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "PLAN  unchanged: nothing that serves restarts" in run.stdout, plan_table(run.stdout)
    counts = recap(run.stdout)
    assert counts and all(host["changed"] == 0 for host in counts.values()), counts


def test_status_shows_every_serving_groups_endpoint(replicas):
    hosts, _key, _api_key = replicas
    run = ansible_playbook(STATUS, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:]
    flat = " ".join(run.stdout.split())
    for index, name in enumerate(("node1", "node2")):
        line = f"Serving group {index} on {name}: http://{hosts[name]}:{API_PORT} /health 200, one-token completion ok"
        assert line in flat, run.stdout[-4000:]
    assert "HEALTHY" in run.stdout


def poll(addresses: dict[str, str], api_key: str, samples: list, done: threading.Event) -> None:
    """Ask every endpoint for a completion every POLL_INTERVAL s until DONE (at most POLL_LIMIT samples)."""
    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        for _sample in range(POLL_LIMIT):
            if done.is_set():
                return
            sent = time.monotonic()
            futures = {name: pool.submit(answers, address, api_key) for name, address in addresses.items()}
            statuses = {name: future.result() for name, future in futures.items()}
            ok = {name: status == 200 for name, status in statuses.items()}
            samples.append({"sent": sent, "answered": time.monotonic(), "ok": ok})
            time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - sent)))


def test_restart_takes_one_group_at_a_time_and_one_endpoint_always_answers(replicas):
    hosts, key, api_key = replicas
    samples: list = []
    done = threading.Event()
    poller = threading.Thread(target=poll, args=(hosts, api_key, samples, done), daemon=True)
    poller.start()
    try:
        time.sleep(2)  # a few samples with both groups serving
        run = ansible_playbook(RESTART, timeout=1500)
        time.sleep(2)
    finally:
        done.set()
        poller.join(timeout=2 * REQUEST_TIMEOUT + 5)
    assert run.returncode == 0, run.stdout[-6000:]
    flat = " ".join(run.stdout.split())
    assert "they restart one group at a time" in flat
    assert len(samples) > 20 and samples[0]["ok"] == {"node1": True, "node2": True}, samples[:3]
    assert samples[-1]["ok"] == {"node1": True, "node2": True}, samples[-3:]
    # Capacity never dropped to zero: at every sample at least one endpoint answered.
    assert all(any(sample["ok"].values()) for sample in samples), [s for s in samples if not any(s["ok"].values())]
    # Both really restarted: each endpoint was down for a while.
    down = {name: [s for s in samples if not s["ok"][name]] for name in hosts}
    assert down["node1"] and down["node2"], {name: len(values) for name, values in down.items()}
    # Group 0 (node1) first; node2's unit started only after node1 answered again.
    back = next(s for s in samples if s["sent"] > down["node1"][-1]["sent"] and s["ok"]["node1"])
    assert down["node1"][-1]["sent"] < down["node2"][0]["sent"]
    assert started_at(hosts, key, "node2") / 1e6 > back["answered"]
    assert started_at(hosts, key, "node1") / 1e6 < down["node2"][0]["sent"]
    # What the report quotes: samples, seconds each endpoint was seen down, and the margin of the ordering.
    print(
        f"{len(samples)} samples over {samples[-1]['answered'] - samples[0]['sent']:.0f} s; down: node1 "
        f"{len(down['node1']) * POLL_INTERVAL:.0f} s, node2 {len(down['node2']) * POLL_INTERVAL:.0f} s; node2 started "
        f"{started_at(hosts, key, 'node2') / 1e6 - back['answered']:.1f} s after node1 answered again"
    )
