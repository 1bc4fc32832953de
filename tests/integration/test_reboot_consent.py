# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault drill for issue 14 point 4: a serving node is never rebooted for its new NVIDIA driver without consent.

The sandbox has no GPU and no NVIDIA driver, so the drill starts where the driver role stands after installing
580.142 over a loaded 570.195.03: it feeds the role's last step (the pending_reboot entry point) the state
nvidia_driver_facts returns then (built from captured driver shapes, tests/unit/fixtures/nvidia_driver). From there
everything is real: the role reads the serving units and the recorded plan on each host, decides, and writes its
record under /run. Then an ordinary deploy.yml re-run must leave every host and the serving group as they were
(systemd's PID 1, vLLM's start and invocation, a completion before and after), with changed=0, and say which hosts
wait for a reboot; status.yml must name each one and still call the cluster healthy. After the reboot (the state
with 580.142 loaded) the role removes its record and leaves nothing behind.

The consented drain (stop the group, reboot node by node, start it again) never runs here: a sandbox host is
systemd in a PID namespace, and a reboot there ends the namespace with nothing to boot it again; the machine-wide
boot_id would not change either. That path is unit-tested only (test_driver_reboot.py).
"""

from __future__ import annotations

import json

import pytest

from .helpers import REPO_ROOT, ansible_playbook, completion_answers, ensure_native_cluster, recap, sandbox_hosts, ssh

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
STATUS = REPO_ROOT / "playbooks" / "status.yml"
RECORD = REPO_ROOT / "tests" / "integration" / "reboot_consent" / "record.yml"
STATES = REPO_ROOT / "tests" / "unit" / "fixtures" / "nvidia_driver"
PENDING = STATES / "state_580.142_installed_570.195.03_loaded.json"
REBOOTED = STATES / "state_580.142_installed_and_loaded.json"
RECORD_PATH = "/run/llmserve/reboot-pending.json"
# PID 1's start in clock ticks since this machine booted (a reboot of the host starts a new systemd), and vLLM's
# last start and invocation (a stop, start or restart changes both).
BOOT_AND_UNIT = (
    "cut -d' ' -f22 /proc/1/stat; "
    "systemctl show -p ActiveEnterTimestampMonotonic -p InvocationID -p ActiveState vllm.service"
)
WAITS = "reboot pending: driver 580.142 installed, 570.195.03 loaded"

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli, 2)
    return sandbox_hosts()


def boots_and_units(hosts, key) -> dict:
    return {name: ssh(hosts, key, name, BOOT_AND_UNIT).stdout for name in sorted(hosts)}


def record_driver_state(state_file, tmp_path):
    variables = tmp_path / ("vars-" + state_file.name)
    variables.write_text(json.dumps({"drill_driver_state": json.loads(state_file.read_text())}))
    run = ansible_playbook(RECORD, "-e", f"@{variables}", timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # The reboot handler would have rebooted the host: it must not even run.
    assert "RUNNING HANDLER" not in run.stdout, run.stdout[-4000:]
    return run


def test_a_pending_driver_reboot_leaves_serving_nodes_up_and_is_reported(cluster, tmp_path):
    hosts, key = cluster
    assert completion_answers(hosts, key)
    before = boots_and_units(hosts, key)
    assert all("ActiveState=active" in shown for shown in before.values()), before

    record_driver_state(PENDING, tmp_path)
    for rank, name in enumerate(sorted(hosts)):
        record = json.loads(ssh(hosts, key, name, f"cat {RECORD_PATH}").stdout)
        assert (record["action"], record["host"], record["consent"]) == ("pending", name, False)
        assert (record["installed_driver_version"], record["loaded_driver_version"]) == ("580.142", "570.195.03")
        # Read on the host: its active vLLM rank and its place in the recorded plan.
        assert record["serving"] == ["vllm.service is active", f"the plan in effect has it as node rank {rank}"]
        assert ssh(hosts, key, name, f"stat -c '%a %U %G' {RECORD_PATH}").stdout.split() == ["644", "root", "root"]

    deploy = ansible_playbook(DEPLOY, timeout=1800)
    assert deploy.returncode == 0, deploy.stdout[-6000:] + deploy.stderr[-2000:]
    counts = recap(deploy.stdout)
    assert all(counts[name]["changed"] == 0 for name in hosts), counts
    said = " ".join(deploy.stdout.split())  # the YAML callback wraps long messages
    for name in hosts:
        assert f"{name}: {WAITS}. It does not reboot on this run: it serves (" in said, deploy.stdout[-4000:]
    assert "llmserve_allow_reboot=true" in said
    assert boots_and_units(hosts, key) == before, "a host rebooted or the serving group restarted"
    assert completion_answers(hosts, key)

    status = ansible_playbook(STATUS, timeout=600)
    assert status.returncode == 0, status.stdout[-6000:]
    said = " ".join(status.stdout.split())
    for name in hosts:
        assert f"NOTE: {name}: {WAITS}; it serves (" in said, status.stdout[-4000:]
    assert "HEALTHY" in said

    # After the reboot the reading finds 580.142 loaded: the record goes, and nothing is left in its directory.
    record_driver_state(REBOOTED, tmp_path)
    for name in hosts:
        assert ssh(hosts, key, name, f"ls -A {RECORD_PATH.rsplit('/', 1)[0]}").stdout == ""
    assert boots_and_units(hosts, key) == before
    assert completion_answers(hosts, key)
