"""The cluster-in-a-box itself: hosts boot, scale out, take faults and leave nothing behind.

One sandbox serves the whole module (each boot costs seconds, a first rootfs build about a minute).
The tests run in file order: two hosts, then three, then faults, then teardown. The module starts
and ends with `down`, so it leaves the machine as it found it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .helpers import INVENTORY, SANDBOX_SLOT

pytestmark = pytest.mark.sandbox

REPO_ROOT = Path(__file__).resolve().parents[2]
# This run's slot (LLMSERVE_SANDBOX_SLOT) and the names tests/sandbox/sandbox.py gives it, so that the
# module checks its own sandbox only, with other slots up beside it.
SUFFIX = "" if SANDBOX_SLOT == 0 else f"-slot{SANDBOX_SLOT}"
LINK_PREFIX = "llms-" if SANDBOX_SLOT == 0 else f"llms{SANDBOX_SLOT}-"
BRIDGE = f"llmsbr{SANDBOX_SLOT}"
SSH_KEY = INVENTORY.parent / ".ssh" / "id_ed25519"
RUN_DIR = Path(f"/run/llmserve-sandbox{SUFFIX}")
STATE_FILE = RUN_DIR / "state.json"
HOSTS_DIR = Path(f"/var/lib/llmserve-sandbox/hosts{SUFFIX}")
ANSIBLE = REPO_ROOT / ".venv" / "bin" / "ansible"
SandboxCLI = Callable[..., "subprocess.CompletedProcess[str]"]
ADDRESSES = {f"node{index}": f"10.77.{SANDBOX_SLOT}.{10 + index}" for index in (1, 2, 3)}


def ssh(name: str, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run COMMAND on a host over SSH with the inventory's key, as Ansible does."""
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    options += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3"]
    command_line = ["ssh", "-F", "/dev/null", "-i", str(SSH_KEY), *options, f"root@{ADDRESSES[name]}", command]
    return subprocess.run(command_line, capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def alive(pid: int) -> bool:
    """A running process; a killed one may linger as a zombie until its parent reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def init_pids() -> dict[str, int | None]:
    hosts = json.loads(STATE_FILE.read_text())["hosts"]
    return {name: process["init_pid"] if process else None for name, process in hosts.items()}


def sandbox_links() -> list[str]:
    names = (path.name for path in Path("/sys/class/net").iterdir())
    return sorted(name for name in names if name.startswith(LINK_PREFIX) or name == BRIDGE)


def status_rows(sandbox_cli: SandboxCLI) -> dict[str, list[str]]:
    lines = sandbox_cli("status").stdout.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:]}


@pytest.fixture(scope="module")
def sandbox(sandbox_cli: SandboxCLI) -> Iterator[None]:
    sandbox_cli("down", timeout=120)
    sandbox_cli("up", "--hosts", "2", timeout=900)  # the first run on a machine builds the rootfs
    yield
    sandbox_cli("down", timeout=120)


def test_up_boots_hosts_that_answer_over_ssh(sandbox: None) -> None:
    for name in ("node1", "node2"):
        result = ssh(name, "systemctl is-system-running; hostname")
        assert result.stdout.split() == ["running", name], result.stderr


def test_inventory_has_one_head_and_the_workers(sandbox: None) -> None:
    children = yaml.safe_load(INVENTORY.read_text())["llmserve_cluster"]["children"]
    assert children["ray_head"]["hosts"] == {"node1": {"ansible_host": ADDRESSES["node1"]}}
    assert children["ray_workers"]["hosts"] == {"node2": {"ansible_host": ADDRESSES["node2"]}}
    result = subprocess.run(
        [str(ANSIBLE), "-i", str(INVENTORY), "all", "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2, result.stdout


def test_hosts_have_their_own_identity_and_address(sandbox: None) -> None:
    identities = {name: ssh(name, "cat /etc/machine-id; ip -4 -o addr show dev eth0").stdout for name in ADDRESSES}
    node1, node2 = identities["node1"].split("\n", 1), identities["node2"].split("\n", 1)
    assert node1[0] != node2[0]
    assert f"{ADDRESSES['node1']}/24" in node1[1]
    assert f"{ADDRESSES['node2']}/24" in node2[1]
    assert ssh("node1", "ping -c 1 -W 2 node2").returncode == 0


def test_up_again_changes_nothing(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    pids, links, inventory = init_pids(), sandbox_links(), INVENTORY.read_text()
    sandbox_cli("up", "--hosts", "2")
    assert init_pids() == pids
    assert sandbox_links() == links == sorted([f"{LINK_PREFIX}node1", f"{LINK_PREFIX}node2", BRIDGE])
    assert INVENTORY.read_text() == inventory


def test_scale_out_adds_only_the_new_host(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    before = init_pids()
    sandbox_cli("up", "--hosts", "3")
    after = init_pids()
    assert {name: after[name] for name in before} == before
    assert after["node3"] is not None
    workers = yaml.safe_load(INVENTORY.read_text())["llmserve_cluster"]["children"]["ray_workers"]["hosts"]
    assert sorted(workers) == ["node2", "node3"]
    # Hosts that were already running learn the new host's name.
    assert ssh("node1", "getent hosts node3").stdout.split() == [ADDRESSES["node3"], "node3"]
    assert ssh("node3", "systemctl is-system-running").stdout.strip() == "running"


def test_partition_cuts_the_host_off_and_heal_restores_it(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    sandbox_cli("partition", "node2")
    try:
        assert status_rows(sandbox_cli)["node2"][5] == "partitioned"
        assert ssh("node2", "true").returncode == 255
        assert ssh("node1", "ping -c 1 -W 2 node2").returncode != 0
    finally:
        sandbox_cli("heal", "node2")
    assert wait_for(lambda: ssh("node2", "true").returncode == 0, timeout=30)
    assert ssh("node1", "ping -c 1 -W 2 node2").returncode == 0


def test_stopping_a_service_inside_a_host(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    sandbox_cli("exec", "node3", "--", "systemctl", "stop", "ssh.service")
    stopped = sandbox_cli("exec", "node3", "--", "systemctl", "is-active", "ssh.service", check=False)
    assert (stopped.returncode, stopped.stdout.strip()) == (3, "inactive")
    assert ssh("node3", "true").returncode == 255
    sandbox_cli("exec", "node3", "--", "systemctl", "start", "ssh.service")
    assert wait_for(lambda: ssh("node3", "true").returncode == 0, timeout=30)


def test_power_loss_keeps_the_disk(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    machine_id = ssh("node2", "cat /etc/machine-id").stdout
    assert ssh("node2", "echo kept > /root/disk-marker && echo lost > /tmp/ram-marker && sync").returncode == 0
    old_pid = init_pids()["node2"]
    sandbox_cli("kill", "node2")
    assert init_pids()["node2"] is None
    assert not alive(old_pid)
    assert status_rows(sandbox_cli)["node2"][3] == "off"
    assert ssh("node2", "true").returncode == 255
    assert ssh("node1", "true").returncode == 0  # the others keep running

    sandbox_cli("start", "node2")
    assert ssh("node2", "cat /root/disk-marker").stdout == "kept\n"
    assert ssh("node2", "test -e /tmp/ram-marker").returncode == 1  # /tmp is a tmpfs, as on most hosts
    assert ssh("node2", "cat /etc/machine-id").stdout == machine_id

    sandbox_cli("reboot", "node2")
    assert init_pids()["node2"] not in (None, old_pid)
    assert ssh("node2", "cat /root/disk-marker").stdout == "kept\n"


def test_down_keep_disks_then_up_boots_the_same_disks(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    assert ssh("node1", "echo kept > /root/disk-marker && sync").returncode == 0
    sandbox_cli("down", "--keep-disks")
    assert sandbox_cli("leftovers", check=False).returncode == 0
    sandbox_cli("up", "--hosts", "3")
    assert ssh("node1", "cat /root/disk-marker").stdout == "kept\n"


def test_down_leaves_nothing_behind(sandbox: None, sandbox_cli: SandboxCLI) -> None:
    pids = [pid for pid in init_pids().values() if pid]
    sandbox_cli("down")
    leftovers = sandbox_cli("leftovers", check=False)
    assert (leftovers.returncode, leftovers.stdout) == (0, "")
    assert not [pid for pid in pids if alive(pid)]
    assert sandbox_links() == []
    assert not list(Path("/run/netns").glob(f"{LINK_PREFIX}*"))
    mount_points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    own = (f"{HOSTS_DIR}/", f"{RUN_DIR}/", f"/run/netns/{LINK_PREFIX}")
    assert not [point for point in mount_points if point.startswith(own) or point in (str(HOSTS_DIR), str(RUN_DIR))]
    assert not HOSTS_DIR.exists()
    assert not STATE_FILE.exists()
    assert not INVENTORY.exists()
    # Down on nothing is fine.
    sandbox_cli("down")
