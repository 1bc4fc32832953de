# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""model_fanout's library with the real rsync; a stand-in for ssh runs the remote side in a per-host directory."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hub_fixture_server import write_model_dir

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_fanout import (
    PARTIAL_DIR,
    Fanout,
    Receiver,
    SshOptions,
    rsync_command,
    tree_children,
    tree_depth,
    tree_parent,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    build_manifest_from_directory,
    verify_directory,
)

RSYNC = shutil.which("rsync")
RRSYNC = shutil.which("rrsync")
if RSYNC is None:
    pytest.fail("rsync is required on the test machine (apt-get install rsync)", pytrace=False)

# rsync calls it as: SHELL [-l user] host rsync --server ... ; we drop the options and the host,
# then run the server side in ROOT/<host>, directly or behind rrsync like a restricted authorized key.
FAKE_SSH = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    -l|-p|-o|-i) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=${1#*@}; shift
cd "$FAKE_SSH_ROOT/$host" || exit 255
if [ -n "$FAKE_SSH_RRSYNC" ]; then
  SSH_ORIGINAL_COMMAND="$*" exec "$FAKE_SSH_RRSYNC" -wo "$FAKE_SSH_ROOT/$host"
fi
exec "$@"
"""

SOURCE = {"kind": "controller_dir", "repo": None, "revision": None}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Directories n0 (the seed, with a model), n1, n2 and a remote shell reaching them by name."""
    fake_ssh = tmp_path / "fake_ssh"
    fake_ssh.write_text(FAKE_SSH)
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("FAKE_SSH_ROOT", str(tmp_path))
    write_model_dir(str(tmp_path / "n0"), [6 * 1024 * 1024, 5 * 1024 * 1024, 4 * 1024 * 1024])
    for name in ("n1", "n2"):
        (tmp_path / name).mkdir()
    manifest, _unused, _unused = build_manifest_from_directory(str(tmp_path / "n0"), SOURCE)
    return tmp_path, str(fake_ssh), manifest


def make_fanout(root, shell, manifest, node, order, receivers, **kwargs):
    return Fanout(str(root / node), manifest, order, node, receivers, remote_directory="", remote_shell=shell, **kwargs)


def run_all(fanouts, delays):
    results = {}

    def run(fanout, delay):
        time.sleep(delay)
        results[fanout.me] = fanout.run()

    threads = [threading.Thread(target=run, args=pair) for pair in zip(fanouts, delays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_tree_shapes():
    order = ["seed", "a", "b", "c", "d", "e", "f"]
    assert tree_children(order, 1)["seed"] == ["a"] and tree_children(order, 1)["e"] == ["f"]
    assert tree_children(order, 2) == {
        "seed": ["a", "b"], "a": ["c", "d"], "b": ["e", "f"], "c": [], "d": [], "e": [], "f": [],
    }  # fmt: skip
    assert tree_parent(order, 2, "f") == "b" and tree_parent(order, 2, "seed") is None
    assert [tree_depth(count, 1) for count in (1, 2, 3, 64)] == [0, 1, 2, 63]
    assert [tree_depth(count, 2) for count in (1, 3, 4, 7, 64)] == [0, 1, 2, 2, 6]


@pytest.mark.parametrize("restricted", [False, True], ids=["plain", "rrsync"])
def test_chain_puts_identical_files_on_every_node(cluster, monkeypatch, restricted):
    root, shell, manifest = cluster
    if restricted:
        if RRSYNC is None:
            pytest.fail("rrsync is shipped with Debian's rsync package and is required here", pytrace=False)
        monkeypatch.setenv("FAKE_SSH_RRSYNC", RRSYNC)
    every_file = [entry["path"] for entry in manifest["files"]]
    order = ["n0", "n1", "n2"]
    receivers = [Receiver("n1", "n1", every_file), Receiver("n2", "n2", every_file)]
    fanouts = [make_fanout(root, shell, manifest, node, order, receivers) for node in order]
    results = run_all(fanouts, [0, 0, 0])
    assert [report.error for reports in results.values() for report in reports] == [None, None]
    assert results["n0"][0].child == "n1" and results["n1"][0].child == "n2" and results["n2"] == []
    assert results["n1"][0].bytes_sent == manifest["total_size"]
    for node in ("n1", "n2"):
        assert verify_directory(str(root / node), manifest, mode="full").ok
        # rrsync pins the partial dir it creates, so an empty one may stay; no partial file may.
        assert not list((root / node).glob(f"**/{PARTIAL_DIR}/*"))


def test_a_node_forwards_a_repaired_file_only_after_the_repair_landed(cluster):
    root, shell, manifest = cluster
    shard = "model-00002-of-00003.safetensors"
    for node in ("n1", "n2"):
        shutil.copytree(root / "n0", root / node, dirs_exist_ok=True)
    # n1 holds a corrupted shard of the right size; n2 lost the shard.
    with open(root / "n1" / shard, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff\xfe")
    os.unlink(root / "n2" / shard)
    verify_n1 = verify_directory(str(root / "n1"), manifest)
    assert [bad.path for bad in verify_n1.bad_files] == [shard]
    order = ["n0", "n1", "n2"]
    receivers = [
        Receiver("n1", "n1", [shard], stale_stats=verify_n1.bad_file_stats),
        Receiver("n2", "n2", [shard]),
    ]
    fanouts = [make_fanout(root, shell, manifest, node, order, receivers, poll_interval=0.05) for node in order]
    # The seed starts last: a node that forwarded its stale copy would have done so by then.
    run_all(fanouts, [1.0, 0, 0])
    assert verify_directory(str(root / "n1"), manifest, mode="full").ok
    assert verify_directory(str(root / "n2"), manifest, mode="full").ok


def test_a_silent_parent_fails_naming_it(cluster):
    root, shell, manifest = cluster
    order = ["n0", "n1", "n2"]
    receivers = [Receiver("n1", "n1", ["config.json"]), Receiver("n2", "n2", ["config.json"])]
    fanout = make_fanout(root, shell, manifest, "n1", order, receivers, stall_timeout=0.3, poll_interval=0.05)
    [report] = fanout.run()
    assert "waited 0 s for config.json from n0 to forward it to n2" in report.error


def test_an_unreachable_child_fails_with_rsyncs_message(cluster):
    root, shell, manifest = cluster
    order = ["n0", "ghost"]
    fanout = make_fanout(root, shell, manifest, "n0", order, [Receiver("ghost", "ghost", ["config.json"])])
    [report] = fanout.run()
    assert report.error.startswith("rsync from n0 to ghost exited")


def test_progress_file_reports_bytes_and_eta(cluster):
    root, shell, manifest = cluster
    every_file = [entry["path"] for entry in manifest["files"]]
    progress = root / "progress.json"
    fanout = Fanout(
        str(root / "n0"),
        manifest,
        ["n0", "n1"],
        "n0",
        [Receiver("n1", "n1", every_file)],
        remote_directory="",
        remote_shell=shell,
        progress_path=str(progress),
    )
    fanout.run()
    import json

    document = json.loads(progress.read_text())
    assert document["state"] == "done" and document["bytes_done"] == document["bytes_total"] == manifest["total_size"]
    assert "GB (100.0%)" in document["line"]


def test_a_copy_killed_mid_file_resumes_from_the_partial_dir(tmp_path, monkeypatch):
    """Kill rsync half-way through a file, then run it again: no half file at the final path, and the
    second run sends only what the first did not (rsync's Matched data)."""
    fake_ssh = tmp_path / "fake_ssh"
    fake_ssh.write_text(FAKE_SSH)
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("FAKE_SSH_ROOT", str(tmp_path))
    source = tmp_path / "n0"
    source.mkdir()
    (source / "big.safetensors").write_bytes(os.urandom(24 * 1024 * 1024))
    (tmp_path / "n1").mkdir()
    command = rsync_command(str(source), "root@n1:", SshOptions(), remote_shell=str(fake_ssh), bandwidth_limit_kib=8192)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.stdin.write(b"big.safetensors\0")
    process.stdin.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        temporary = [path for path in (tmp_path / "n1").iterdir() if path.name.startswith(".big.safetensors.")]
        if temporary and temporary[0].stat().st_size > 8 * 1024 * 1024:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait()
    time.sleep(0.5)  # the receiving side moves its temporary file into the partial dir as it exits
    assert not (tmp_path / "n1" / "big.safetensors").exists(), "no half file at the final path"
    partial = tmp_path / "n1" / PARTIAL_DIR / "big.safetensors"
    assert partial.exists() and partial.stat().st_size > 8 * 1024 * 1024

    resumed = subprocess.run(
        [argument for argument in command if not argument.startswith("--bwlimit")] + ["--stats"],
        input=b"big.safetensors\0",
        capture_output=True,
        check=True,
    )
    matched = int(re.search(rb"Matched data: ([\d,]+)", resumed.stdout).group(1).replace(b",", b""))
    assert matched >= 8 * 1024 * 1024, "the partial file served as the basis of the resumed transfer"
    assert (tmp_path / "n1" / "big.safetensors").read_bytes() == (source / "big.safetensors").read_bytes()
    assert not (tmp_path / "n1" / PARTIAL_DIR).exists()
    assert Path(tmp_path / "n1").stat() is not None


def test_ssh_prefers_aes_gcm_but_the_users_cipher_choice_wins():
    default = shlex.split(SshOptions().command())
    assert default[-2:] == ["-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"]
    chosen = shlex.split(SshOptions(extra=["-o", "Ciphers=aes256-ctr"]).command())
    assert [part for part in chosen if part.lower().startswith("ciphers=")] == ["Ciphers=aes256-ctr"]


def test_ssh_command_runs_with_the_preferred_ciphers():
    """The real ssh client accepts the list (a typo in a cipher name makes ssh refuse to start)."""
    command = [*shlex.split(SshOptions().command()), "-G", "node1"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "ciphers aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com" in result.stdout
