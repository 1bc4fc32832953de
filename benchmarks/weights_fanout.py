# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Model weights: fan-out wall time versus one copy, and verify throughput versus sha256sum.

    python3 benchmarks/weights_fanout.py verify --size-gb 2
    python3 benchmarks/weights_fanout.py fanout --inventory inventories/sandbox/hosts.yml --size-gb 2

``verify`` runs here: it writes a model of ``--shards`` files, then times ``sha256sum`` and the
collection's verify (``_weights_manifest.verify_directory``, mode full) on the same files, page cache
warm for both (each is run twice and the second run counts). Goal: verify >= 0.8x sha256sum.

``fanout`` needs a running sandbox (``tests/sandbox/sandbox.py up --hosts 3``): it writes the model on
the first host, then times (a) one local copy of those bytes on that host (``cp -r``), (b) one rsync
over ssh to one other host, and (c) the collection's fan-out (``_weights_fanout.Fanout``, run on every
host as the role runs it) putting the bytes on all the others. Goal: fan-out <= 1.3x one copy.
Both print one JSON line per measurement and a summary with the ratios.

All sandbox hosts share this machine's CPUs, and an unshaped copy is CPU-bound (ssh, rsync and the
kernel's copies): two receivers then cost twice the CPU of one, whatever the fan-out's shape. Real
nodes each bring their own CPUs and the network link is what bounds a copy. ``--link-mbit N`` models
that: every host's uplink is shaped to N Mbit/s (``tc`` token bucket on its eth0, removed afterwards),
so each copy is bound by links, as on a cluster. Every measurement also prints the machine's CPU
seconds, which shows which bound applied.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".build" / "collections"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import link_collection  # noqa: E402

link_collection()

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_fanout import SshOptions  # noqa: E402
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (  # noqa: E402
    build_manifest_from_directory,
    verify_directory,
)

GB = 1000**3


def write_model(directory: Path, size_bytes: int, shards: int) -> None:
    """Shards of incompressible bytes plus a config, like a safetensors checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    shard_size = size_bytes // shards
    block = os.urandom(16 * 1024 * 1024)
    for index in range(1, shards + 1):
        path = directory / f"model-{index:05d}-of-{shards:05d}.safetensors"
        if path.exists() and path.stat().st_size == shard_size:
            continue
        with path.open("wb") as handle:
            remaining = shard_size
            while remaining:
                chunk = block[: min(remaining, len(block))]
                # Vary each block so no two shards share content (rsync could otherwise match blocks).
                handle.write(index.to_bytes(4, "little") + os.urandom(12) + chunk[16:])
                remaining -= len(chunk)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": shards}))


def report(name: str, seconds: float, size_bytes: int, **extra) -> dict:
    line = {
        "measure": name,
        "seconds": round(seconds, 3),
        "bytes": size_bytes,
        "mb_per_s": round(size_bytes / seconds / 1e6, 1),
    }
    line.update(extra)
    print(json.dumps(line), flush=True)
    return line


def timed(function) -> float:
    started = time.monotonic()
    function()
    return time.monotonic() - started


def busy_cpu_seconds() -> float:
    """CPU seconds this machine (and so every sandbox host) has spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed_with_cpu(function) -> tuple:
    cpu_before = busy_cpu_seconds()
    seconds = timed(function)
    return seconds, round(busy_cpu_seconds() - cpu_before, 1)


# --- verify throughput ----------------------------------------------------------------------


def bench_verify(arguments: argparse.Namespace) -> None:
    directory = Path(arguments.dir or tempfile.mkdtemp(prefix="llmserve-verify-bench-"))
    size = int(arguments.size_gb * GB)
    write_model(directory, size, arguments.shards)
    files = sorted(str(path) for path in directory.iterdir() if path.is_file())
    total = sum(os.path.getsize(path) for path in files)
    manifest, _unused, _unused = build_manifest_from_directory(
        str(directory), {"kind": "controller_dir"}, workers=arguments.workers
    )

    def sha256sum() -> None:
        subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL)

    def collection_verify() -> None:
        result = verify_directory(str(directory), manifest, mode="full", workers=arguments.workers)
        assert result.ok, result.bad_files

    results = {}
    for name, function in (("sha256sum", sha256sum), ("verify_full", collection_verify)):
        timed(function)  # warm the page cache the same way for both
        results[name] = report(
            name, min(timed(function) for _unused in range(arguments.repeat)), total, cpus=os.cpu_count()
        )
    ratio = results["verify_full"]["mb_per_s"] / results["sha256sum"]["mb_per_s"]
    print(json.dumps({"summary": "verify", "verify_vs_sha256sum_throughput": round(ratio, 2), "goal": ">= 0.8",
                      "met": ratio >= 0.8, "workers": arguments.workers}))  # fmt: skip
    if not arguments.dir:
        shutil.rmtree(directory)


# --- fan-out --------------------------------------------------------------------------------


def sandbox_hosts(inventory: Path) -> tuple:
    import yaml

    data = yaml.safe_load(inventory.read_text())
    cluster = data["llmserve_cluster"]
    variables = cluster.get("vars", {})
    hosts = {}
    for group in cluster.get("children", {}).values():
        for name, host_vars in ((group or {}).get("hosts") or {}).items():
            hosts[name] = host_vars["ansible_host"]
    return dict(sorted(hosts.items())), variables


def fanout_ssh_command(key: str) -> str:
    """The ssh command line the fan-out runs between sandbox hosts (its cipher choice included)."""
    no_host_check = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return SshOptions(identity_file=key, extra=no_host_check).command()


def shape_uplinks(hosts: dict, key: str, mbit: int) -> None:
    """Token-bucket every host's eth0 egress to mbit (0 removes it): one NIC's worth of bandwidth per host."""
    ssh = ["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip
    for address in hosts.values():
        command = (
            f"tc qdisc replace dev eth0 root tbf rate {mbit}mbit burst 1mbit latency 400ms"
            if mbit
            else "tc qdisc del dev eth0 root 2>/dev/null || true"
        )
        subprocess.run([*ssh, f"root@{address}", command], check=True, capture_output=True, text=True)


def bench_fanout(arguments: argparse.Namespace) -> None:
    hosts, variables = sandbox_hosts(Path(arguments.inventory))
    key = variables["ansible_ssh_private_key_file"]
    try:
        if arguments.link_mbit:
            shape_uplinks(hosts, key, arguments.link_mbit)
        measure_fanout(arguments, hosts, variables)
    finally:
        if arguments.link_mbit:
            shape_uplinks(hosts, key, 0)


def measure_fanout(arguments: argparse.Namespace, hosts: dict, variables: dict) -> None:
    if len(hosts) < 2:
        sys.exit("fanout needs at least two sandbox hosts (tests/sandbox/sandbox.py up --hosts 3)")
    key = variables["ansible_ssh_private_key_file"]
    ssh = ["ssh", "-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]  # fmt: skip
    names = list(hosts)
    seed, others = names[0], names[1 : 1 + arguments.receivers]
    path = arguments.remote_path
    size = int(arguments.size_gb * GB)

    def on(host: str, command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*ssh, f"root@{hosts[host]}", command], check=True, text=True, capture_output=True, **kwargs
        )

    # The model is written on the seed by this very script, sent over ssh once.
    local = Path(tempfile.mkdtemp(prefix="llmserve-fanout-bench-"))
    write_model(local, size, arguments.shards)
    for host in names:
        on(host, f"rm -rf {path} {path}-copy && mkdir -p {path}")
    subprocess.run(["rsync", "-a", "-e", " ".join(ssh), f"{local}/", f"root@{hosts[seed]}:{path}/"], check=True)
    shutil.rmtree(local)
    manifest_text = on(seed, f"cd {path} && sha256sum *").stdout
    total = int(on(seed, f"du -sb --apparent-size {path} | cut -f1").stdout.split()[0])

    # (a) one local copy on the seed, flushed to disk as a transfer's receiver would be
    seconds, cpu = timed_with_cpu(lambda: on(seed, f"cp -r {path} {path}-copy && sync"))
    local_copy = report("one_local_copy", seconds, total, host=seed, cpu_seconds=cpu)
    on(seed, f"rm -rf {path}-copy")

    # (b) one rsync over ssh to one other host, with the ssh options the fan-out uses
    fanout_ssh = fanout_ssh_command("/root/.ssh/bench_ed25519")
    target = f"root@{hosts[others[0]]}:{path}/"
    one_ssh = f"rsync -a --partial-dir=.rsync-partial -e {shlex.quote(fanout_ssh)} {path}/ {target}"
    on(seed, "test -f /root/.ssh/bench_ed25519 || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/bench_ed25519")
    public = on(seed, "cat /root/.ssh/bench_ed25519.pub").stdout.strip()
    private = on(seed, "cat /root/.ssh/bench_ed25519").stdout
    # Every forwarding host needs a key in the benchmark; the role makes one per node instead.
    for host in others:
        on(host, f"grep -qF '{public}' /root/.ssh/authorized_keys || echo '{public}' >> /root/.ssh/authorized_keys")
        on(host, "umask 077 && cat > /root/.ssh/bench_ed25519", input=private)
    seconds, cpu = timed_with_cpu(lambda: on(seed, f"{one_ssh} && {fanout_ssh} root@{hosts[others[0]]} sync"))
    one_copy = report("one_rsync_over_ssh", seconds, total, source=seed, target=others[0], cpu_seconds=cpu,
                      link_mbit=arguments.link_mbit)  # fmt: skip
    on(others[0], f"rm -rf {path} && mkdir -p {path}")

    # (c) the collection's fan-out: every host runs its part of the chain (or tree) at once
    files = [line.split(None, 1)[1].strip() for line in manifest_text.splitlines()]
    sizes = dict(line.rsplit(" ", 1) for line in on(seed, f"cd {path} && stat -c '%n %s' *").stdout.splitlines())
    order = [seed, *others]
    spec = {
        "path": path, "order": order, "width": arguments.width, "key": "/root/.ssh/bench_ed25519",
        "sizes": {name: int(size) for name, size in sizes.items()},
        "receivers": [{"name": host, "address": hosts[host], "files": files} for host in others],
    }  # fmt: skip
    runner = FANOUT_RUNNER % json.dumps(spec)
    module_utils = REPO / "plugins" / "module_utils"
    bundle = {name: (module_utils / name).read_text() for name in ("_transfer_progress.py", "_weights_fanout.py")}
    for host in order:
        on(host, "mkdir -p /tmp/llmserve-bench && cat > /tmp/llmserve-bench/bundle.json", input=json.dumps(bundle))
        on(host, "cat > /tmp/llmserve-bench/run.py", input=runner)

    def fanout() -> None:
        processes = [
            subprocess.Popen([*ssh, f"root@{hosts[host]}", f"python3 /tmp/llmserve-bench/run.py {host} && sync"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for host in order
        ]  # fmt: skip
        for host, process in zip(order, processes):
            out, err = process.communicate()
            if process.returncode:
                sys.exit(f"fan-out failed on {host}: {err or out}")

    seconds, cpu = timed_with_cpu(fanout)
    fan = report("fanout", seconds, total, hosts=len(order), receivers=len(others), width=arguments.width,
                 cpu_seconds=cpu, link_mbit=arguments.link_mbit)  # fmt: skip
    for host in others:
        check = on(host, f"cd {path} && sha256sum -c --quiet - && echo identical", input=manifest_text).stdout
        assert "identical" in check, f"{host} does not hold identical files"
    print(json.dumps({
        "summary": "fanout", "hosts_holding_the_model": len(order), "bytes": total, "shards": arguments.shards,
        "fanout_vs_one_local_copy": round(fan["seconds"] / local_copy["seconds"], 2),
        "fanout_vs_one_rsync_over_ssh": round(fan["seconds"] / one_copy["seconds"], 2),
        "fanout_cpu_vs_one_rsync_cpu": round(fan["cpu_seconds"] / max(one_copy["cpu_seconds"], 0.1), 2),
        "link_mbit": arguments.link_mbit, "goal": "fanout <= 1.3 x one copy",
    }))  # fmt: skip


# Runs on each sandbox host: unpacks the two library files and runs this host's part of the fan-out.
FANOUT_RUNNER = r"""
import json, os, sys, types
spec = json.loads(%r)
bundle = json.load(open("/tmp/llmserve-bench/bundle.json"))
package = "ansible_collections.llmserve.cluster.plugins.module_utils"
for parent in ("ansible_collections", "ansible_collections.llmserve", "ansible_collections.llmserve.cluster",
               "ansible_collections.llmserve.cluster.plugins", package):
    sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = []
for name, source in bundle.items():
    module = types.ModuleType(package + "." + name[:-3])
    sys.modules[module.__name__] = module
    exec(compile(source, name, "exec"), module.__dict__)
fanout = sys.modules[package + "._weights_fanout"]
me = sys.argv[1]
manifest = {"files": [{"path": path, "size": size} for path, size in sorted(spec["sizes"].items())]}
receivers = [fanout.Receiver(r["name"], r["address"], r["files"]) for r in spec["receivers"]]
no_host_check = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
ssh = fanout.SshOptions(identity_file=spec["key"], extra=no_host_check)
reports = fanout.Fanout(spec["path"], manifest, spec["order"], me, receivers, width=spec["width"], ssh=ssh,
                        poll_interval=0.2).run()
errors = [r.error for r in reports if r.error]
print(json.dumps({"node": me, "sent": [r.__dict__ for r in reports]}))
sys.exit(1 if errors else 0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify throughput versus sha256sum, here")
    verify.add_argument("--size-gb", type=float, default=2.0)
    verify.add_argument("--shards", type=int, default=8)
    verify.add_argument("--workers", type=int, default=4)
    verify.add_argument("--repeat", type=int, default=2)
    verify.add_argument("--dir", help="keep the generated model here (default: a temporary directory)")
    verify.set_defaults(run=bench_verify)
    fanout = commands.add_parser("fanout", help="fan-out wall time versus one copy, on the sandbox")
    fanout.add_argument("--inventory", default=str(REPO / "inventories" / "sandbox" / "hosts.yml"))
    fanout.add_argument("--size-gb", type=float, default=2.0)
    fanout.add_argument("--shards", type=int, default=16)
    fanout.add_argument("--receivers", type=int, default=2, help="hosts receiving from the seed")
    fanout.add_argument("--width", type=int, default=1)
    fanout.add_argument("--remote-path", default="/var/tmp/llmserve-bench-model")
    fanout.add_argument("--link-mbit", type=int, default=0, help="shape every host's uplink to this rate (0: unshaped)")
    fanout.set_defaults(run=bench_fanout)
    arguments = parser.parse_args()
    arguments.run(arguments)


if __name__ == "__main__":
    main()
