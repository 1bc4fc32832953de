# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cluster-in-a-box: N Debian hosts with systemd and sshd on one machine, reached by Ansible over SSH.

Each host is an overlay root filesystem over one cached debootstrap tree, booted with systemd as
PID 1 inside its own mount, PID, UTS, IPC, cgroup and network namespaces. The network namespace
is joined by a veth pair to the bridge ``llmsbr0`` (10.77.0.1/24, this machine); host ``nodeK``
gets 10.77.0.(10+K). No default route, no NAT: hosts reach each other and this machine only.

Usage (as root)::

    sandbox.py up --hosts 3          # build the rootfs once, start node1..node3, write the inventory
    sandbox.py status                # table of hosts, then any leftovers of a sandbox that is down
    sandbox.py exec node2 -- systemctl stop ssh
    sandbox.py partition node2       # cut node2's cable (veth down); `heal node2` plugs it back
    sandbox.py kill node2            # power loss: SIGKILL its systemd, the disk stays
    sandbox.py start node2           # boot again from the same disk; `reboot node2` = kill + start
    sandbox.py down [--keep-disks]   # remove everything; exits 1 if anything is left behind
    sandbox.py leftovers             # prints what a sandbox left behind; exits 1 if anything
    sandbox.py rootfs                # only build the cached base tree (what `up` does first)

``up`` is idempotent and only adds: ``up --hosts 4`` on a 3-host sandbox starts node4 and leaves
node1..node3 alone. Hosts that were killed are booted again. The inventory is written to
``inventories/sandbox/hosts.yml`` (groups ``llmserve_cluster`` > ``ray_head`` = node1,
``ray_workers`` = the rest), with the SSH key in ``inventories/sandbox/.ssh/id_ed25519``.

``LLMSERVE_SANDBOX_SLOT=N`` (1..9) runs an independent sandbox beside the default one: bridge
``llmsbrN``, subnet 10.77.N.0/24, inventory ``.build/sandbox-slotN/hosts.yml`` (``sandbox.py
inventory`` prints it), its own disks and state. Every command acts on its slot only.

Inside every host, ``/srv/wheelhouse`` and ``/srv/shared-models`` are read-only views of
``/var/cache/llmserve-sandbox/{wheelhouse,models}``, the shared storage real clusters have. Fill
those directories in place: a directory renamed over them is only seen by hosts booted after it.
``/tmp/torchinductor_llmserve`` is a writable view of ``/var/cache/llmserve-sandbox/torchinductor/<rootfs>``:
the kernels torch compiles for vLLM, kept across boots and shared by every host and run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_INVENTORY_DIR = REPO_ROOT / "inventories" / "sandbox"
# Independent sandboxes side by side (one per developer or test run): slot N gets its own bridge,
# subnet 10.77.N.0/24, host disks, state and inventory. Slot 0 is the default the README and CI use.
SLOT = int(os.environ.get("LLMSERVE_SANDBOX_SLOT", "0"))
if not 0 <= SLOT <= 9:
    sys.exit("sandbox: LLMSERVE_SANDBOX_SLOT must be 0..9")
# Slots other than 0 keep their inventory out of inventories/sandbox, so `-i inventories/sandbox`
# never merges two sandboxes; a group_vars link gives them the same deploy settings.
INVENTORY_DIR = SANDBOX_INVENTORY_DIR if SLOT == 0 else REPO_ROOT / ".build" / f"sandbox-slot{SLOT}"
INVENTORY_FILE = INVENTORY_DIR / "hosts.yml"
SSH_KEY = INVENTORY_DIR / ".ssh" / "id_ed25519"
SLOT_SUFFIX = "" if SLOT == 0 else f"-slot{SLOT}"

CACHE_DIR = Path("/var/cache/llmserve-sandbox")
ROOTFS = CACHE_DIR / "rootfs-bookworm"
WHEELHOUSE = CACHE_DIR / "wheelhouse"
MODELS = CACHE_DIR / "models"
# torch compiles some of vLLM's CPU kernels (C++, with g++) at every start into its cache, by default
# /tmp/torchinductor_<user> (the service user of every role is llmserve), which a host's /tmp loses at
# every boot. Every host mounts one writable cache here instead, kept across boots and runs as a real
# host's disk would keep it: entries are keyed by the kernel's source, torch and the compiler flags, and
# torch locks an entry while it compiles it, so hosts share it safely.
KERNEL_CACHE = CACHE_DIR / "torchinductor"
KERNEL_CACHE_TARGET = "/tmp/torchinductor_llmserve"
HOSTS_DIR = Path("/var/lib/llmserve-sandbox/hosts" + SLOT_SUFFIX)
RUN_DIR = Path("/run/llmserve-sandbox" + SLOT_SUFFIX)
STATE_FILE = RUN_DIR / "state.json"
LOCK_FILE = RUN_DIR / "lock"
NETNS_DIR = Path("/run/netns")

SUITE = "bookworm"
ROOTFS_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-apt,python3-packaging,"
    "iproute2,iputils-ping,sudo,rsync,curl,ca-certificates,procps,libnuma1,g++,python3-dev"
)
# Bumped whenever the rootfs recipe changes, so a stale cache is rebuilt.
ROOTFS_RECIPE = f"2 {SUITE} {ROOTFS_PACKAGES}"
ROOTFS_MARKER = "etc/llmserve-sandbox-rootfs"
# Units that drive a terminal or devices; a host has neither.
MASKED_UNITS = ("console-getty.service", "getty@.service", "serial-getty@.service", "systemd-udevd.service")

NAME_PREFIX = "llms-" if SLOT == 0 else f"llms{SLOT}-"  # netns and host-side veth names
BRIDGE = f"llmsbr{SLOT}"
NETWORK_PREFIX = f"10.77.{SLOT}."
BRIDGE_ADDRESS = NETWORK_PREFIX + "1"
BRIDGE_MAC_ADDRESS = f"02:4c:4d:{SLOT:02x}:00:01"
PREFIX_LENGTH = 24
MAX_HOSTS = 50
CGROUP_GROUP = "llmserve-sandbox" + SLOT_SUFFIX
# Bridged frames must not pass through this machine's iptables: a FORWARD rule could drop them.
BRIDGE_SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "0",
    "net.bridge.bridge-nf-call-ip6tables": "0",
    "net.bridge.bridge-nf-call-arptables": "0",
}
CONTROLLER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT_S = 120.0
KILL_TIMEOUT_S = 30.0

# Runs as PID 1 of the host's fresh namespaces, then becomes systemd. Arguments: see launch_host().
BOOT_SCRIPT = r"""
set -eu
rootfs=$1 upper=$2 work=$3 root=$4 seed=$5 console=$6 name=$7 kernels=$8 kernels_target=$9
shift 9
# This mount namespace copied the machine's netns handles; dropping them lets a deleted
# sandbox namespace go away while this host runs.
if mountpoint -q /run/netns; then umount -R -l /run/netns; fi
# The previous boot's overlay may still be tearing down after a power loss.
layers="lowerdir=$rootfs,upperdir=$upper,workdir=$work"
for _ in $(seq 40); do
    mount -t overlay overlay -o "$layers" "$root" 2>/dev/null && break
    sleep 0.25
done
mountpoint -q "$root" || mount -t overlay overlay -o "$layers" "$root"  # fails with the reason
cp -a "$seed/." "$root/"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
# Global kernel settings stay read-only; this host's own network settings stay writable.
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount --bind "$root/proc/sys/net" "$root/proc/sys/net"
mount -o remount,bind,rw "$root/proc/sys/net"
# A sysfs mounted in this network namespace lists this host's interfaces only.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
mount --bind "$root/dev/pts/ptmx" "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mount --bind "$console" "$root/dev/console"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mkdir -p "$root$kernels_target"
mount --bind "$kernels" "$root$kernels_target"
while [ "$#" -ge 2 ]; do
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mount -o remount,bind,ro "$root$2"
    shift 2
done
hostname "$name"
exec chroot "$root" /lib/systemd/systemd --system --unit=multi-user.target
"""


class SandboxError(RuntimeError):
    """A step failed in a way the user has to look at."""


@dataclasses.dataclass(frozen=True)
class Host:
    """One sandbox host; everything about it follows from its index."""

    index: int

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"{NETWORK_PREFIX}{10 + self.index}"

    @property
    def netns(self) -> str:
        return NAME_PREFIX + self.name

    @property
    def veth(self) -> str:
        """Host-side end of the cable; the end inside the host is eth0."""
        return NAME_PREFIX + self.name

    @property
    def mac_address(self) -> str:
        return f"02:4c:4d:{SLOT:02x}:00:{10 + self.index:02x}"

    @property
    def directory(self) -> Path:
        return HOSTS_DIR / self.name

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def seed(self) -> Path:
        """Files copied over the root at every boot: identity, hosts, SSH keys."""
        return self.directory / "seed"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def boot_log(self) -> Path:
        return self.directory / "boot.log"


def host_named(name: str) -> Host:
    match = re.fullmatch(r"node([1-9][0-9]*)", name)
    if not match or int(match.group(1)) > MAX_HOSTS:
        raise SandboxError(f"no such host name {name!r}: hosts are node1..node{MAX_HOSTS}")
    return Host(int(match.group(1)))


@dataclasses.dataclass
class HostProcess:
    """The processes of a booted host, as this machine sees them."""

    launcher_pid: int  # the `unshare` that waits for the host's PID 1
    init_pid: int  # systemd, PID 1 inside the host
    init_start_ticks: int  # tells a live systemd from a recycled PID
    cgroups: list[str] = dataclasses.field(default_factory=list)  # the host's cgroup in each hierarchy

    def alive(self) -> bool:
        return process_start_ticks(self.init_pid) == self.init_start_ticks


@dataclasses.dataclass
class State:
    """What `up` created; hosts map to None while powered off."""

    boot_id: str
    hosts: dict[str, HostProcess | None] = dataclasses.field(default_factory=dict)
    saved_sysctls: dict[str, str] = dataclasses.field(default_factory=dict)

    def defined_hosts(self) -> list[Host]:
        return sorted((host_named(name) for name in self.hosts), key=lambda host: host.index)

    def running(self, host: Host) -> HostProcess | None:
        process = self.hosts.get(host.name)
        return process if process is not None and process.alive() else None


# ---------------------------------------------------------------- small helpers


def log(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


def run(
    command: list[str], *, check: bool = True, input_text: str | None = None, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise with that output when it fails."""
    result = subprocess.run(
        command,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PATH": CONTROLLER_PATH + ":" + os.environ.get("PATH", "")},
    )
    if check and result.returncode != 0:
        raise SandboxError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, or None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses; the fields after the last ")" are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def child_pids(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def write_file(path: Path, content: str, mode: int) -> None:
    """Write atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    temporary.chmod(mode)
    temporary.replace(path)


def read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    if path.exists():
        path.write_text(value + "\n")


@contextlib.contextmanager
def sandbox_lock() -> Iterator[None]:
    """One command at a time changes the sandbox."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------- state


def load_state() -> State:
    current_boot = boot_id()
    if not STATE_FILE.exists():
        return State(boot_id=current_boot)
    data = json.loads(STATE_FILE.read_text())
    hosts: dict[str, HostProcess | None] = {
        name: HostProcess(**process) if process else None for name, process in data["hosts"].items()
    }
    if data["boot_id"] != current_boot:
        # This machine rebooted since: every recorded process is gone.
        hosts = dict.fromkeys(hosts)
    return State(boot_id=current_boot, hosts=hosts, saved_sysctls=data.get("saved_sysctls", {}))


def save_state(state: State) -> None:
    data = {
        "boot_id": state.boot_id,
        "hosts": {
            name: dataclasses.asdict(process) if process else None for name, process in sorted(state.hosts.items())
        },
        "saved_sysctls": state.saved_sysctls,
    }
    write_file(STATE_FILE, json.dumps(data, indent=2) + "\n", 0o644)


# ---------------------------------------------------------------- base root filesystem


def debian_mirror() -> str:
    """The mirror this machine's apt uses (the URIs: line, not the commented snapshot URL)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            match = re.match(r"\s*URIs:\s*(\S+)", line)
            if match and not match.group(1).rstrip("/").endswith("-security"):
                return match.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def ensure_debootstrap() -> None:
    if shutil.which("debootstrap", path=CONTROLLER_PATH):
        return
    log("installing debootstrap")
    environment = {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        subprocess.run(command, check=True, env={**os.environ, **environment}, stdout=subprocess.DEVNULL)


def rootfs_is_current() -> bool:
    marker = ROOTFS / ROOTFS_MARKER
    return marker.exists() and marker.read_text().strip() == ROOTFS_RECIPE


def ensure_rootfs() -> None:
    """Build the base tree once; an interrupted build never leaves a half cache behind.

    Every slot shares the tree, and `make test` builds it in the background while other checks run: a
    lock on the cache makes a second builder wait for the first and then find the tree current.
    """
    if rootfs_is_current():
        return
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f".{ROOTFS.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rootfs_is_current():
            build_rootfs()


def build_rootfs() -> None:
    """debootstrap, then the changes every host shares; the caller holds the cache's lock."""
    if ROOTFS.exists() and any(HOSTS_DIR.glob("*/upper")):
        raise SandboxError(f"{ROOTFS} is from another recipe but host disks use it: run `down` first")
    ensure_debootstrap()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in CACHE_DIR.glob(ROOTFS.name + ".*"):
        remove_tree(stale)
    building = CACHE_DIR / f"{ROOTFS.name}.building-{os.getpid()}"
    mirror = debian_mirror()
    log(f"building the base rootfs with debootstrap from {mirror} (about a minute)")
    started = time.monotonic()
    try:
        # A mirror drops a download now and then ("Retrying failed download" and then a failure): a fresh
        # attempt, not a failed run, is the answer.
        for attempt in range(1, DEBOOTSTRAP_ATTEMPTS + 1):
            try:
                run_debootstrap(building, mirror)
                break
            except SandboxError as failure:
                if attempt == DEBOOTSTRAP_ATTEMPTS:
                    raise
                log(f"{failure.args[0].splitlines()[0]} (attempt {attempt} of {DEBOOTSTRAP_ATTEMPTS}); trying again")
                if building.exists():
                    remove_tree(building)
                time.sleep(10 * attempt)
        customize_rootfs(building)
        if ROOTFS.exists():
            outdated = ROOTFS.with_name(ROOTFS.name + ".outdated")
            ROOTFS.rename(outdated)
            remove_tree(outdated)
        building.rename(ROOTFS)
    finally:
        if building.exists():
            remove_tree(building)
    log(f"base rootfs built in {time.monotonic() - started:.0f} s")


DEBOOTSTRAP_ATTEMPTS = 3


def run_debootstrap(target: Path, mirror: str) -> None:
    command = ["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", SUITE, str(target), mirror]
    output = ""
    # Its own process group, so an interrupted build takes debootstrap's dpkg and downloads with it.
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as process:
        try:
            output, _unused = process.communicate(timeout=1800)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    if process.returncode != 0:
        raise SandboxError(f"debootstrap failed:\n{output[-4000:]}")


def customize_rootfs(tree: Path) -> None:
    """What every host shares: no terminals, sshd for keys only, no baked-in identity."""
    for unit in MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Each host gets its own SSH host keys and machine-id at first boot (see prepare_host_disk).
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    write_file(tree / "etc/machine-id", "", 0o444)
    write_file(tree / "etc/default/locale", "LANG=C.UTF-8\n", 0o644)
    write_file(
        tree / "etc/ssh/sshd_config.d/llmserve-sandbox.conf",
        "# Sandbox hosts: root logs in with the inventory's key only.\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 64:30:128\n",
        0o644,
    )
    (tree / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    # Downloaded .debs are not needed once installed; they would only fill every overlay's view.
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    write_file(tree / ROOTFS_MARKER, ROOTFS_RECIPE + "\n", 0o644)


# ---------------------------------------------------------------- keys, disks, inventory


def ensure_ssh_key() -> str:
    """The inventory's key pair; returns the public key."""
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmserve-sandbox", "-f", str(SSH_KEY)])
    SSH_KEY.chmod(0o600)
    return SSH_KEY.with_suffix(".pub").read_text()


def hosts_file(hosts: list[Host]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{BRIDGE_ADDRESS}\tcontroller"]
    lines += [f"{host.address}\t{host.name}" for host in hosts]
    return "\n".join(lines) + "\n"


def prepare_host_disk(host: Host, all_hosts: list[Host], public_key: str) -> None:
    """Create the host's disk on first use, and refresh the files the sandbox owns in it."""
    for directory in (host.upper, host.work, host.root, host.seed):
        directory.mkdir(parents=True, exist_ok=True)
    host.directory.chmod(0o700)
    seed = host.seed
    (seed / "etc").mkdir(mode=0o755, exist_ok=True)
    (seed / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    (seed / "root").chmod(0o700)
    write_file(seed / "etc/hostname", host.name + "\n", 0o644)
    write_file(seed / "etc/hosts", hosts_file(all_hosts), 0o644)
    write_file(seed / "root/.ssh/authorized_keys", public_key, 0o600)
    if not (seed / "etc/machine-id").exists():
        write_file(seed / "etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    if not (seed / "etc/ssh/ssh_host_ed25519_key").exists():
        (seed / "etc/ssh").mkdir(mode=0o755, exist_ok=True)
        run(["ssh-keygen", "-A", "-f", str(seed)])  # -f is a prefix: keys land in seed/etc/ssh
    host.console_log.touch(mode=0o600)


def write_inventory(hosts: list[Host]) -> None:
    head, workers = hosts[0], hosts[1:]
    key = SSH_KEY.resolve()

    def host_block(members: list[Host]) -> list[str]:
        if not members:
            return ["      hosts: {}"]
        lines = ["      hosts:"]
        for host in members:
            lines += [f"        {host.name}:", f"          ansible_host: {host.address}"]
        return lines

    lines = [
        "---",
        "# Written by tests/sandbox/sandbox.py `up`; do not edit. Deploy settings live in group_vars/.",
        "llmserve_cluster:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        "    # Sandbox hosts get new host keys when recreated; never do this for real servers.",
        '    ansible_ssh_common_args: "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"',
        "    ansible_python_interpreter: /usr/bin/python3",
        "  children:",
        "    ray_head:",
        *host_block([head]),
        "    ray_workers:",
        *host_block(workers),
    ]
    INVENTORY_DIR.mkdir(parents=True, exist_ok=True)
    group_vars = INVENTORY_DIR / "group_vars"
    if SLOT != 0 and not group_vars.is_symlink():
        group_vars.symlink_to(SANDBOX_INVENTORY_DIR / "group_vars")
    write_file(INVENTORY_FILE, "\n".join(lines) + "\n", 0o644)


# ---------------------------------------------------------------- network


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ensure_bridge(state: State) -> None:
    if not link_exists(BRIDGE):
        # A fixed MAC: a bridge otherwise takes its lowest port's, which changes as hosts come and go.
        bridge = ["type", "bridge", "stp_state", "0", "forward_delay", "0"]
        run(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC_ADDRESS, *bridge])
    addresses = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f" {BRIDGE_ADDRESS}/{PREFIX_LENGTH} " not in addresses:
        run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    for name, value in BRIDGE_SYSCTLS.items():
        current = read_sysctl(name)
        if current is not None and current != value:
            state.saved_sysctls.setdefault(name, current)
            write_sysctl(name, value)


def ensure_host_network(host: Host) -> None:
    """Namespace, cable to the bridge, address; the namespace outlives reboots of the host."""
    if not (NETNS_DIR / host.netns).exists():
        run(["ip", "netns", "add", host.netns])
    inside = ["ip", "-n", host.netns]
    if not link_exists(host.veth):
        peer = ["peer", "name", "eth0", "address", host.mac_address, "netns", host.netns]
        run(["ip", "link", "add", host.veth, "type", "veth", *peer])
        run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
    addresses = run([*inside, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    if f" {host.address}/{PREFIX_LENGTH} " not in addresses:
        run([*inside, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0"])
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "link", "set", "eth0", "up"])


def remove_host_network(host: Host) -> None:
    if link_exists(host.veth):
        run(["ip", "link", "del", host.veth], check=False)
    if (NETNS_DIR / host.netns).exists():
        run(["ip", "netns", "del", host.netns], check=False)


def veth_is_up(host: Host) -> bool:
    flags = Path("/sys/class/net", host.veth, "flags")
    return flags.exists() and int(flags.read_text(), 16) & 0x1 == 1


# ---------------------------------------------------------------- cgroups


@dataclasses.dataclass(frozen=True)
class CgroupHierarchy:
    """One mounted cgroup hierarchy and where this process sits in it."""

    mount_point: Path
    own_path: str  # relative to the mount point, "" at its root

    def sandbox_group(self) -> Path:
        return self.mount_point / self.own_path / CGROUP_GROUP


def cgroup_hierarchies() -> list[CgroupHierarchy]:
    """Every cgroup hierarchy mounted here (v1 controllers and v2), each once."""
    own_paths: dict[str, str] = {}  # "memory", "name=systemd", "" (v2) -> this process's cgroup
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _unused, controllers, path = line.split(":", 2)
        own_paths[controllers] = path
    hierarchies: list[CgroupHierarchy] = []
    seen: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_fields, filesystem_fields = line.split(" - ", 1)
        mount_root, mount_point = mount_fields.split()[3:5]
        filesystem, _unused, super_options = filesystem_fields.split()[:3]
        if filesystem == "cgroup2":
            key: str | None = ""
        elif filesystem == "cgroup":
            options = set(super_options.split(","))
            key = next((key for key in own_paths if key and set(key.split(",")) <= options), None)
        else:
            continue
        if key is None or key in seen:
            continue
        seen.add(key)
        own_path = own_paths[key]
        relative = own_path[len(mount_root) :] if own_path.startswith(mount_root) else ""
        hierarchies.append(CgroupHierarchy(Path(mount_point), relative.strip("/")))
    if not hierarchies:
        raise SandboxError("no cgroup hierarchy is mounted on this machine")
    return hierarchies


def host_cgroups(host: Host) -> list[Path]:
    """A cgroup per host in every hierarchy: each host's systemd gets a tree of its own, the root of its cgroupns.

    Placed below this command's own cgroups, so whatever accounts for the caller accounts for the hosts too.
    """
    return [hierarchy.sandbox_group() / host.name for hierarchy in cgroup_hierarchies()]


def create_cgroup(path: Path) -> None:
    missing = [path, *path.parents][: len(path.parts)]
    for directory in reversed([directory for directory in missing if not directory.exists()]):
        directory.mkdir()
        # cgroup v1 cpusets start empty, and a process cannot join an empty cpuset.
        for setting in ("cpuset.cpus", "cpuset.mems"):
            if (directory / setting).exists() and not (directory / setting).read_text().strip():
                (directory / setting).write_text((directory.parent / setting).read_text())


def cgroup_pids(tops: list[Path]) -> list[int]:
    pids: set[int] = set()
    for top in tops:
        for procs in top.rglob("cgroup.procs") if top.exists() else []:
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return sorted(pids)


def remove_cgroup_tree(top: Path) -> None:
    """Remove a cgroup and everything below it, deepest first; they must hold no process."""
    if not top.exists():
        return
    directories = sorted((path for path in top.rglob("*") if path.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for directory in [*directories, top]:
        for _unused in range(40):  # cgroups of processes that just died empty out shortly after
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise SandboxError(f"cannot remove cgroup {directory}: {cgroup_pids([directory])} still in it")


# ---------------------------------------------------------------- host lifecycle


def shared_mounts() -> list[str]:
    """Source and target pairs of the read-only shared storage every host sees."""
    pairs = []
    for source, target in ((WHEELHOUSE, "/srv/wheelhouse"), (MODELS, "/srv/shared-models")):
        source.mkdir(parents=True, exist_ok=True)
        pairs += [str(source), target]
    return pairs


def kernel_cache() -> Path:
    """The compiled-kernel cache for hosts of this rootfs, writable by every host user.

    Files belong to the uid the service user got on the host that compiled them; that uid follows from
    the rootfs's own accounts, so each rootfs (its /etc/passwd) gets a cache of its own.
    """
    accounts = hashlib.sha256((ROOTFS / "etc/passwd").read_bytes()).hexdigest()[:12]
    cache = KERNEL_CACHE / accounts
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o1777)
    return cache


def launch_host(host: Host) -> HostProcess:
    """Boot the host; its systemd keeps running after this command exits."""
    cgroups = host_cgroups(host)
    for cgroup in cgroups:
        remove_cgroup_tree(cgroup)  # what a previous boot left
        create_cgroup(cgroup)

    def enter_cgroups() -> None:
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    command = [
        "nsenter", f"--net={NETNS_DIR / host.netns}", "--",
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--cgroup", "--fork", "--kill-child",
        "--propagation", "private", "--",
        "/bin/sh", "-c", BOOT_SCRIPT, "boot",
        str(ROOTFS), str(host.upper), str(host.work), str(host.root), str(host.seed), str(host.console_log),
        host.name, str(kernel_cache()), KERNEL_CACHE_TARGET, *shared_mounts(),
    ]  # fmt: skip
    environment = {"container": "llmserve-sandbox", "PATH": CONTROLLER_PATH, "LANG": "C.UTF-8"}
    with host.boot_log.open("ab") as boot_log:
        launcher = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=boot_log,
            stderr=boot_log,
            env=environment,
            cwd="/",
            start_new_session=True,  # no signal to this command's terminal or group reaches the host
            preexec_fn=enter_cgroups,
        )
    if not wait_until(lambda: child_pids(launcher.pid) or launcher.poll() is not None, 10):
        raise SandboxError(f"{host.name}: the launcher did not start a PID 1")
    children = child_pids(launcher.pid)
    start_ticks = process_start_ticks(children[0]) if children else None
    if start_ticks is None:
        raise SandboxError(f"{host.name} failed to boot; see {host.boot_log}:\n{host.boot_log.read_text()[-2000:]}")
    return HostProcess(
        launcher_pid=launcher.pid,
        init_pid=children[0],
        init_start_ticks=start_ticks,
        cgroups=[str(cgroup) for cgroup in cgroups],
    )


def enter_command(process: HostProcess, command: list[str]) -> list[str]:
    """A command line that runs COMMAND inside a host, as if logged in as root."""
    return [
        "nsenter", "--target", str(process.init_pid), "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
        "--root", "--wdns=/", "--",
        "/usr/bin/env", "-i", f"PATH={CONTROLLER_PATH}", "HOME=/root", "LANG=C.UTF-8", "USER=root", *command,
    ]  # fmt: skip


def systemd_state(process: HostProcess) -> str:
    """`systemctl is-system-running` inside the host: starting, running, degraded, ..."""
    try:
        result = run(enter_command(process, ["systemctl", "is-system-running"]), check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return "unresponsive"
    return result.stdout.strip() or "unknown"


def failed_units(process: HostProcess) -> str:
    command = ["systemctl", "--failed", "--no-legend", "--plain"]
    return run(enter_command(process, command), check=False, timeout=10).stdout.strip()


def ssh_command(host: Host, command: list[str]) -> list[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(SSH_KEY), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3",
        f"root@{host.address}", *command,
    ]  # fmt: skip


def ssh_reachable(host: Host) -> bool:
    try:
        return run(ssh_command(host, ["true"]), check=False, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_ready(state: State, hosts: list[Host], timeout: float = BOOT_TIMEOUT_S) -> None:
    """Wait until every host's systemd is up with no failed unit and its sshd takes our key."""
    deadline = time.monotonic() + timeout
    waiting = list(hosts)
    while waiting:
        for host in list(waiting):
            process = state.running(host)
            if process is None:
                raise SandboxError(f"{host.name} died while booting; see {host.boot_log} and {host.console_log}")
            system = systemd_state(process)
            if system == "degraded":
                raise SandboxError(f"{host.name} booted with failed units:\n{failed_units(process)}")
            if system == "running" and ssh_reachable(host):
                waiting.remove(host)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(host.name for host in waiting)
            raise SandboxError(f"{names} not ready after {timeout:.0f} s; see {HOSTS_DIR}/<name>/console.log")
        if waiting:
            time.sleep(0.5)


def power_off(state: State, host: Host) -> None:
    """Power loss: SIGKILL the host's systemd (it ignores SIGTERM); its namespaces and mounts go with it."""
    process = state.hosts.get(host.name)
    cgroups = host_cgroups(host)
    if process is not None:
        cgroups += [Path(cgroup) for cgroup in process.cgroups if Path(cgroup) not in cgroups]
        if process.alive():
            os.kill(process.init_pid, signal.SIGKILL)
    # Anything left in the host's cgroups (a PID 1 we lost track of) shares its fate.
    for pid in cgroup_pids(cgroups):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not cgroup_pids(cgroups) and (process is None or not process.alive()), KILL_TIMEOUT_S):
        raise SandboxError(f"{host.name}: processes {cgroup_pids(cgroups)} survived SIGKILL")
    if process is not None:
        wait_until(lambda: process_start_ticks(process.launcher_pid) is None, KILL_TIMEOUT_S)
    for cgroup in cgroups:
        remove_cgroup_tree(cgroup)
    if host.name in state.hosts:
        state.hosts[host.name] = None


def boot(state: State, hosts: list[Host]) -> None:
    """Start the given powered-off hosts and wait until all of them answer."""
    if not hosts:
        return
    public_key = ensure_ssh_key()
    all_hosts = state.defined_hosts()
    ensure_bridge(state)
    for host in hosts:
        ensure_host_network(host)
        prepare_host_disk(host, all_hosts, public_key)
        state.hosts[host.name] = launch_host(host)
        save_state(state)
    wait_ready(state, hosts)


def refresh_hosts_files(state: State) -> None:
    """Running hosts learn the names of hosts added after them."""
    content = hosts_file(state.defined_hosts())
    for host in state.defined_hosts():
        write_file(host.seed / "etc/hosts", content, 0o644)
        process = state.running(host)
        if process is not None:
            run(enter_command(process, ["/bin/sh", "-c", "cat > /etc/hosts"]), input_text=content)


# ---------------------------------------------------------------- leftovers


def unmount_below(directory: Path) -> None:
    """Unmount everything mounted below DIRECTORY, deepest first; lazily where a mount is busy."""
    prefix = str(directory) + "/"
    for point in sorted((point for point in mount_points() if point.startswith(prefix)), key=len, reverse=True):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "--lazy", point], check=False)
    remaining = [point for point in mount_points() if point.startswith(prefix)]
    if remaining:
        raise SandboxError(f"cannot unmount {', '.join(remaining)}")


def remove_tree(directory: Path) -> None:
    """rm -rf that never descends into a mount (a killed debootstrap leaves /proc and /sys mounted)."""
    unmount_below(directory)
    shutil.rmtree(directory)


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Mount points escape spaces and the like as octal, e.g. "\040".
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return points


def sandbox_mount_points() -> list[str]:
    prefixes = (str(HOSTS_DIR) + "/", str(NETNS_DIR / NAME_PREFIX))
    return [point for point in mount_points() if point.startswith(prefixes)]


def sandbox_links() -> list[str]:
    names = Path("/sys/class/net").iterdir()
    return sorted(path.name for path in names if path.name.startswith(NAME_PREFIX) or path.name == BRIDGE)


def sandbox_netns() -> list[str]:
    return sorted(path.name for path in NETNS_DIR.glob(NAME_PREFIX + "*")) if NETNS_DIR.exists() else []


def processes_rooted_in_hosts() -> list[int]:
    """Processes whose root directory is a host's (found even outside the cgroup)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root").startswith(str(HOSTS_DIR) + "/"):
                    pids.append(int(entry.name))
    return pids


def sandbox_cgroup_groups() -> list[Path]:
    """The sandbox's cgroup parents, below this command's cgroups or at each hierarchy's root."""
    candidates = []
    for hierarchy in cgroup_hierarchies():
        candidates += [hierarchy.sandbox_group(), hierarchy.mount_point / CGROUP_GROUP]
    return sorted({candidate for candidate in candidates if candidate.exists()})


def leftovers() -> list[str]:
    """Everything a sandbox leaves on this machine while up; empty after a clean `down`."""
    found = []
    groups = sandbox_cgroup_groups()
    found += [f"process {pid} in a {CGROUP_GROUP} cgroup" for pid in cgroup_pids(groups)]
    found += [f"cgroup {group}" for group in groups]
    found += [f"process {pid} rooted in {HOSTS_DIR}" for pid in processes_rooted_in_hosts()]
    found += [f"mount {point}" for point in sandbox_mount_points()]
    found += [f"link {name}" for name in sandbox_links()]
    found += [f"netns {name}" for name in sandbox_netns()]
    if STATE_FILE.exists():
        found.append(f"state {STATE_FILE}")
    return found


# ---------------------------------------------------------------- commands


def command_up(hosts_wanted: int) -> int:
    if not 1 <= hosts_wanted <= MAX_HOSTS:
        raise SandboxError(f"--hosts must be between 1 and {MAX_HOSTS}")
    started = time.monotonic()
    ensure_rootfs()
    cgroup_hierarchies()  # fail before touching anything
    state = load_state()
    for index in range(1, hosts_wanted + 1):
        state.hosts.setdefault(Host(index).name, None)
    to_boot = [host for host in state.defined_hosts() if state.running(host) is None]
    for host in to_boot:
        power_off(state, host)  # clears a stale record and whatever it left behind
    save_state(state)
    if to_boot:
        log("booting " + ", ".join(host.name for host in to_boot))
    boot(state, to_boot)
    if to_boot:
        refresh_hosts_files(state)
    save_state(state)
    write_inventory(state.defined_hosts())
    names = ", ".join(host.name for host in state.defined_hosts())
    log(f"up in {time.monotonic() - started:.1f} s: {names}; inventory: {INVENTORY_FILE}")
    return 0


def kill_strays() -> None:
    """SIGKILL whatever still runs in a sandbox cgroup or inside a host's root, and wait for it to go."""

    def strays() -> list[int]:
        return sorted(set(cgroup_pids(sandbox_cgroup_groups())) | set(processes_rooted_in_hosts()))

    for pid in strays():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not strays(), KILL_TIMEOUT_S):
        raise SandboxError(f"processes {strays()} survived SIGKILL")


def command_down(keep_disks: bool) -> int:
    started = time.monotonic()
    state = load_state()
    known = {host.name for host in state.defined_hosts()}
    # Whatever a crashed or lost state file left behind is cleaned up too.
    known |= {name[len(NAME_PREFIX) :] for name in sandbox_netns() + sandbox_links() if name.startswith(NAME_PREFIX)}
    hosts = sorted((host_named(name) for name in known), key=lambda host: host.index)
    for host in hosts:
        power_off(state, host)
    kill_strays()
    unmount_below(HOSTS_DIR)
    for host in hosts:
        remove_host_network(host)
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])
    # `ip netns add` mounted /run/netns on itself; once empty, nothing else uses it.
    while NETNS_DIR.exists() and not any(NETNS_DIR.iterdir()) and str(NETNS_DIR) in mount_points():
        run(["umount", str(NETNS_DIR)])
    for group in sandbox_cgroup_groups():
        remove_cgroup_tree(group)
    # The sysctls are machine-wide: leave them while another slot's bridge still needs them.
    if not any(Path("/sys/class/net").glob("llmsbr*")):
        for name, value in state.saved_sysctls.items():
            write_sysctl(name, value)
    if not keep_disks and HOSTS_DIR.exists():
        remove_tree(HOSTS_DIR)
    STATE_FILE.unlink(missing_ok=True)
    INVENTORY_FILE.unlink(missing_ok=True)
    problems = leftovers()
    for problem in problems:
        log(f"left behind: {problem}")
    log(f"down in {time.monotonic() - started:.1f} s" + (" (disks kept)" if keep_disks else ""))
    return 1 if problems else 0


def command_status() -> int:
    state = load_state()
    rows = [("NAME", "ADDRESS", "PID", "SYSTEMD", "SSH", "NETWORK")]
    for host in state.defined_hosts():
        process = state.running(host)
        if process is None:
            rows.append((host.name, host.address, "-", "off", "no", "-"))
            continue
        network = "connected" if veth_is_up(host) else "partitioned"
        reachable = "yes" if ssh_reachable(host) else "no"
        rows.append((host.name, host.address, str(process.init_pid), systemd_state(process), reachable, network))
    if len(rows) > 1:
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0
    problems = leftovers()
    print("no sandbox hosts" + ("; left behind:" if problems else ""))
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


def command_leftovers() -> int:
    problems = leftovers()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def defined_host(state: State, name: str) -> Host:
    host = host_named(name)
    if host.name not in state.hosts:
        raise SandboxError(f"{name} is not part of the sandbox (run `up --hosts N` first)")
    return host


def command_kill(name: str) -> int:
    state = load_state()
    power_off(state, defined_host(state, name))
    save_state(state)
    return 0


def command_start(name: str) -> int:
    state = load_state()
    host = defined_host(state, name)
    if state.running(host) is None:
        power_off(state, host)  # a stale record and what it left
        boot(state, [host])
        save_state(state)
    return 0


def command_reboot(name: str) -> int:
    state = load_state()
    host = defined_host(state, name)
    power_off(state, host)
    boot(state, [host])
    save_state(state)
    return 0


def command_partition(name: str, connected: bool) -> int:
    state = load_state()
    host = defined_host(state, name)
    if not link_exists(host.veth):
        raise SandboxError(f"{name} has no network cable ({host.veth}); is the sandbox up?")
    run(["ip", "link", "set", host.veth, "up" if connected else "down"])
    return 0


def command_exec(name: str, command: list[str]) -> int:
    state = load_state()
    host = defined_host(state, name)
    process = state.running(host)
    if process is None:
        raise SandboxError(f"{name} is not running")
    if not command:
        raise SandboxError("exec needs a command after --")
    return subprocess.run(enter_command(process, command), check=False).returncode


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sandbox.py", description=__doc__.split("\n\n", maxsplit=1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start node1..nodeN (adds hosts, never removes any)")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    down = commands.add_parser("down", help="remove every host, cable, namespace, mount and the bridge")
    down.add_argument("--keep-disks", action="store_true", help="keep the hosts' overlay disks for the next up")
    commands.add_parser("status", help="table of hosts; leftovers when none is defined")
    commands.add_parser("leftovers", help="list what a sandbox left on this machine; exit 1 if anything")
    commands.add_parser("inventory", help="print the path of this slot's inventory file")
    commands.add_parser("rootfs", help="build the hosts' base tree if it is missing or stale; boot nothing")
    for name, text in (
        ("kill", "power loss: SIGKILL the host's systemd, keep its disk"),
        ("start", "boot a powered-off host from its disk"),
        ("reboot", "kill, then start"),
        ("partition", "take the host's cable out (its veth down)"),
        ("heal", "plug the host's cable back in"),
    ):
        commands.add_parser(name, help=text).add_argument("name", help="host name, e.g. node2")
    run_inside = commands.add_parser("exec", help="run a command inside a host: exec NAME -- CMD ...")
    run_inside.add_argument("name")
    run_inside.add_argument("argv", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
    # `kill` or a test timeout: unwind like Ctrl-C does, so a build in progress is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if os.geteuid() != 0:
        log("must run as root (it creates namespaces, mounts and network links)")
        return 2
    try:
        if arguments.command == "exec":
            command = arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv
            return command_exec(arguments.name, command)
        if arguments.command == "status":
            return command_status()
        if arguments.command == "leftovers":
            return command_leftovers()
        if arguments.command == "inventory":
            print(INVENTORY_FILE)
            return 0
        if arguments.command == "rootfs":
            ensure_rootfs()
            return 0
        with sandbox_lock():
            if arguments.command == "up":
                return command_up(arguments.hosts)
            if arguments.command == "down":
                return command_down(arguments.keep_disks)
            if arguments.command in ("partition", "heal"):
                return command_partition(arguments.name, connected=arguments.command == "heal")
            handlers = {"kill": command_kill, "start": command_start, "reboot": command_reboot}
            return handlers[arguments.command](arguments.name)
    except SandboxError as error:
        log(f"error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
