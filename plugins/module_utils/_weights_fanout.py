# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fan model files out from one seed node to the others, over rsync+ssh, pipelined file by file.

Why this shape (for 2 to 64 nodes):
- Origin bytes leave the seed once per child, and every node forwards what it received, so the
  seed's uplink is not shared by N copies (a star costs N x one copy).
- Nodes form a tree in heap order over [seed] + receivers: node i sends to nodes width*i+1 ..
  width*i+width. width 1 is a chain. A node forwards each file as soon as that file is complete
  on it, without waiting for the whole model, so with a model split into many shards the chain
  finishes in about one copy time plus (depth x one shard time). Round-based trees (seed->n1,
  then seed->n2 and n1->n3, ...) cost log2(N) full copies instead. A model in a single file
  gains nothing from the pipeline; width 2 or more then keeps the depth low.
- Transfers are plain rsync over ssh: ``--partial-dir`` keeps an interrupted file aside and
  resumes from it, and rsync writes each file under a temporary name and renames it when
  complete, so no half file appears at the final path.

Standard library only, Python >= 3.9: this runs on the nodes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.llmserve.cluster.plugins.module_utils._transfer_progress import ProgressFile

PARTIAL_DIR = ".rsync-partial"
# ssh's default first choice, chacha20-poly1305, costs about a third more CPU per byte than AES-GCM
# on CPUs with AES instructions (measured on the sandbox: 9.5 vs 6.5 CPU-seconds per 2 GB copied);
# bulk copies of weights are CPU-bound in ssh, so AES-GCM first, chacha20 where a server lacks it.
BULK_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
_PROGRESS2 = re.compile(r"^\s*([\d,]+)\s+\d+%")


class FanoutError(RuntimeError):
    """A transfer failed or an upstream node stopped delivering."""


def tree_children(order: List[str], width: int) -> Dict[str, List[str]]:
    """Children of each node when order[0] is the seed and nodes form a width-ary tree in heap order."""
    if width < 1:
        raise ValueError("width must be at least 1")
    return {
        node: [order[child] for child in range(width * index + 1, width * index + width + 1) if child < len(order)]
        for index, node in enumerate(order)
    }


def tree_parent(order: List[str], width: int, node: str) -> Optional[str]:
    index = order.index(node)
    return None if index == 0 else order[(index - 1) // width]


def tree_depth(count: int, width: int) -> int:
    """Hops from the seed to the farthest node of a heap-ordered width-ary tree of count nodes."""
    depth, last = 0, 0
    while last < count - 1:
        last = width * last + width
        depth += 1
    return depth


@dataclass
class Receiver:
    name: str
    address: str
    files: List[str]
    # For files this node already has in a bad version: their stat when verify saw them, so the
    # node can tell when the replacement has landed. Absent files need no record.
    stale_stats: Dict[str, Dict[str, int]] = field(default_factory=dict)


@dataclass
class SshOptions:
    user: str = "root"
    port: int = 22
    identity_file: Optional[str] = None
    known_hosts_file: Optional[str] = None
    connect_timeout: int = 30
    extra: List[str] = field(default_factory=list)

    def command(self) -> str:
        parts = ["ssh", "-p", str(self.port), "-o", "BatchMode=yes", "-o", "Compression=no"]
        parts += ["-o", f"ConnectTimeout={self.connect_timeout}", "-o", "ServerAliveInterval=15"]
        if self.identity_file:
            parts += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file:
            parts += ["-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes"]
        # ssh keeps the first value it reads for an option, so the user's own options go first and win.
        parts += self.extra
        if not any(option.lower().startswith("ciphers=") for option in self.extra):
            parts += ["-o", f"Ciphers={BULK_CIPHERS}"]
        return " ".join(shlex.quote(part) for part in parts)

    @staticmethod
    def split_args(args: Optional[str]) -> List[str]:
        """Options as Ansible's ansible_ssh_common_args holds them, one string."""
        return shlex.split(args) if args else []


def rsync_command(
    source_dir: str,
    destination: str,
    ssh: SshOptions,
    rsync_path: str = "rsync",
    remote_shell: Optional[str] = None,
    bandwidth_limit_kib: int = 0,
) -> List[str]:
    """rsync reading the file list from stdin; every listed file is sent even when size and mtime match.

    The list only holds files the receiver lacks or holds in a bad version, and a corrupted file
    keeps its size and mtime, so the quick check must not skip it. The delta algorithm still sends
    only the differing blocks of such a file, and resumes from ``--partial-dir``.
    """
    limit = [f"--bwlimit={bandwidth_limit_kib}"] if bandwidth_limit_kib else []
    return [
        rsync_path,
        *limit,
        "--files-from=-",
        "--from0",
        "--times",
        "--perms",
        "--chmod=D0755,F0644",
        "--ignore-times",
        f"--partial-dir={PARTIAL_DIR}",
        "--info=progress2",
        "--no-human-readable",
        "--timeout=300",
        "--rsh",
        remote_shell or ssh.command(),
        source_dir.rstrip("/") + "/",
        destination,
    ]


def _stat_record(path: str) -> Optional[Dict[str, int]]:
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        return None
    return {
        "size": file_stat.st_size,
        "mtime_ns": file_stat.st_mtime_ns,
        "ctime_ns": file_stat.st_ctime_ns,
        "inode": file_stat.st_ino,
    }


class LocalFiles:
    """Which model files are complete on this node and may be forwarded."""

    def __init__(self, directory: str, sizes: Dict[str, int], incoming: Optional[Receiver]) -> None:
        self.directory = directory
        self.sizes = sizes
        self.incoming = set(incoming.files) if incoming else set()
        self.stale = dict(incoming.stale_stats) if incoming else {}

    def is_ready(self, path: str) -> bool:
        if path not in self.incoming:
            return True
        current = _stat_record(os.path.join(self.directory, *path.split("/")))
        if current is None or current["size"] != self.sizes[path]:
            return False
        stale = self.stale.get(path)
        return stale is None or any(current[key] != stale.get(key) for key in ("inode", "mtime_ns", "ctime_ns"))


@dataclass
class SendReport:
    child: str
    files_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    error: Optional[str] = None


def _run_rsync(command: List[str], files: List[str], on_bytes) -> subprocess.CompletedProcess:
    """Run rsync, feed it the file list, and report the bytes it has sent as progress2 lines arrive."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_chunks: List[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        process.stdin.write(b"\0".join(path.encode() for path in files) + b"\0")
        process.stdin.close()
    except BrokenPipeError:
        # rsync exited before it read the list (an unreachable receiver): its exit status and stderr say why.
        pass
    pending = b""
    while True:
        chunk = process.stdout.read1(65536) if hasattr(process.stdout, "read1") else process.stdout.read(65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for line in lines:
            match = _PROGRESS2.match(line.decode(errors="replace"))
            if match:
                on_bytes(int(match.group(1).replace(",", "")))
    returncode = process.wait()
    reader.join()
    return subprocess.CompletedProcess(command, returncode, b"", b"".join(stderr_chunks))


class Fanout:
    """This node's part of the fan-out: send to its children each file as soon as it is complete here."""

    def __init__(
        self,
        directory: str,
        manifest: Dict[str, Any],
        order: List[str],
        me: str,
        receivers: List[Receiver],
        width: int = 1,
        ssh: Optional[SshOptions] = None,
        remote_directory: Optional[str] = None,
        rsync_path: str = "rsync",
        remote_shell: Optional[str] = None,
        bandwidth_limit_kib: int = 0,
        stall_timeout: float = 1800.0,
        poll_interval: float = 1.0,
        progress_path: Optional[str] = None,
    ) -> None:
        self.directory = directory
        self.sizes = {entry["path"]: entry["size"] for entry in manifest["files"]}
        self.manifest_order = [entry["path"] for entry in manifest["files"]]
        self.order = order
        self.me = me
        self.receivers = {receiver.name: receiver for receiver in receivers}
        self.width = width
        self.ssh = ssh or SshOptions()
        self.remote_directory = directory if remote_directory is None else remote_directory
        self.rsync_path = rsync_path
        self.remote_shell = remote_shell
        self.bandwidth_limit_kib = bandwidth_limit_kib
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval
        self.children = tree_children(order, width)[me]
        self.parent = tree_parent(order, width, me)
        self.local = LocalFiles(directory, self.sizes, self.receivers.get(me))
        self._lock = threading.Lock()
        self._bytes_done: Dict[str, int] = {}
        total = sum(self.sizes[path] for child in self.children for path in self.receivers[child].files)
        self.progress = ProgressFile(progress_path, f"fan-out from {me}", total)

    def _destination(self, child: str) -> str:
        receiver = self.receivers[child]
        remote = self.remote_directory.rstrip("/") + "/" if self.remote_directory else ""
        return f"{self.ssh.user}@{receiver.address}:{remote}"

    def _record(self, child: str, bytes_done: int) -> None:
        with self._lock:
            self._bytes_done[child] = bytes_done
            self.progress.update(sum(self._bytes_done.values()))

    def _send_to(self, child: str, report: SendReport) -> None:
        wanted = set(self.receivers[child].files)
        pending = [path for path in self.manifest_order if path in wanted]
        sent_bytes = 0
        last_progress = time.monotonic()
        started = time.monotonic()
        command = rsync_command(
            self.directory,
            self._destination(child),
            self.ssh,
            self.rsync_path,
            self.remote_shell,
            self.bandwidth_limit_kib,
        )
        while pending:
            ready = [path for path in pending if self.local.is_ready(path)]
            if not ready:
                if time.monotonic() - last_progress > self.stall_timeout:
                    raise FanoutError(
                        f"{self.me} waited {int(self.stall_timeout)} s for {pending[0]} from {self.parent} to forward "
                        f"it to {child}; check the transfer on {self.parent}"
                    )
                time.sleep(self.poll_interval)
                continue
            batch_bytes = sum(self.sizes[path] for path in ready)
            base = sent_bytes
            completed = _run_rsync(command, ready, lambda done, base=base: self._record(child, base + done))
            if completed.returncode != 0:
                raise FanoutError(
                    f"rsync from {self.me} to {child} exited {completed.returncode}: "
                    f"{completed.stderr.decode(errors='replace').strip()[-2000:]}"
                )
            sent_bytes += batch_bytes
            self._record(child, sent_bytes)
            report.files_sent += len(ready)
            report.bytes_sent = sent_bytes
            pending = [path for path in pending if path not in ready]
            last_progress = time.monotonic()
        report.seconds = time.monotonic() - started

    def run(self) -> List[SendReport]:
        reports = [SendReport(child) for child in self.children]
        threads = []
        for report in reports:

            def work(report: SendReport = report) -> None:
                try:
                    self._send_to(report.child, report)
                except FanoutError as error:
                    report.error = str(error)

            threads.append(threading.Thread(target=work, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [report for report in reports if report.error]
        self.progress.update(sum(self._bytes_done.values()), state="failed" if failed else "done")
        return reports
