# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The model_weights role on three sandbox hosts, from a generated model of about 300 MB on the controller.

In order: the model reaches every host at the same path, verified; a second run changes and hashes
nothing; a flipped byte on one host fails the play naming host and file, and a re-run with repair
copies that file only; a copy killed mid-file resumes from rsync's partial file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from .helpers import REPO_ROOT, ansible_playbook, recap, sandbox_hosts, ssh

CONVERGE = REPO_ROOT / "tests" / "integration" / "model_weights" / "converge.yml"
MODEL_PATH = "/models/llmserve-test-model"
SHARD_BYTES = 50 * 1024 * 1024

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli, tmp_path_factory):
    sandbox_cli("up", "--hosts", "3", timeout=900)
    hosts, key = sandbox_hosts()
    model = tmp_path_factory.mktemp("controller") / "model"
    sys.path.insert(0, str(REPO_ROOT / "tests" / "unit" / "plugins" / "modules"))
    from hub_fixture_server import write_model_dir

    write_model_dir(str(model), [SHARD_BYTES] * 6)
    for name in hosts:
        ssh(hosts, key, name, f"rm -rf {MODEL_PATH}")
    return hosts, key, model


def converge(model, *extra, background=False):
    return ansible_playbook(
        CONVERGE, "-e", f"model_weights_controller_dir={model}", *extra, background=background, timeout=900
    )


def checksums(cluster, name):
    hosts, key, _unused = cluster
    return ssh(hosts, key, name, f"cd {MODEL_PATH} && sha256sum config.json model-*").stdout


def test_model_reaches_every_host_verified(cluster):
    hosts, _unused, model = cluster
    run = converge(model)
    assert run.returncode == 0, run.stdout[-4000:]
    expected = subprocess.run(
        f"cd {model} && sha256sum config.json model-*", shell=True, capture_output=True, text=True, check=True
    ).stdout
    for name in hosts:
        assert checksums(cluster, name) == expected, f"{name} holds other bytes"


def test_second_run_changes_and_hashes_nothing(cluster):
    _unused, _unused, model = cluster
    run = converge(model, "-v")
    assert run.returncode == 0, run.stdout[-4000:]
    assert all(counts["changed"] == 0 for counts in recap(run.stdout).values()), recap(run.stdout)
    assert set(re.findall(r"bytes_hashed: (\d+)", run.stdout)) == {"0"}


def test_flipped_byte_fails_naming_host_and_file_then_repair_copies_it(cluster):
    hosts, key, model = cluster
    shard = "model-00003-of-00006.safetensors"
    ssh(hosts, key, "node2", f"printf '\\x00' | dd of={MODEL_PATH}/{shard} bs=1 seek=123456 conv=notrunc status=none")
    failed = converge(model)
    assert failed.returncode != 0
    assert re.search(rf"node2 holds 1 file\(s\) under {MODEL_PATH}.*{shard}.*sha256_mismatch", failed.stdout, re.S)
    repaired = converge(model, "-e", "model_weights_repair=true")
    assert repaired.returncode == 0, repaired.stdout[-4000:]
    assert re.search(rf"bytes_sent: {SHARD_BYTES + 112}\s+child: node2\s+files_sent: 1", repaired.stdout)
    assert checksums(cluster, "node2") == checksums(cluster, "node1")


def test_copy_killed_mid_file_resumes(cluster):
    hosts, key, model = cluster
    ssh(hosts, key, "node3", f"rm -f {MODEL_PATH}/model-0000*")
    run = converge(model, "-e", "model_weights_fanout_bandwidth_limit_kib=4000", background=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        listing = ssh(hosts, key, "node3", f"ls -a {MODEL_PATH}", check=False).stdout
        if re.search(r"^\.model-\d+-of-\d+\.safetensors\.\w+$", listing, re.MULTILINE):
            break
        time.sleep(0.5)
    time.sleep(3)
    pid = ssh(hosts, key, "node1", "pgrep -f 'rsync --bwlimit=4000 --files-from'").stdout.split()[0]
    ssh(hosts, key, "node1", f"kill -TERM {pid}")
    output, _unused = run.communicate(timeout=600)
    assert run.returncode != 0 and "rsync from node1 to node3 exited 20" in output
    partial = ssh(hosts, key, "node3", f"ls {MODEL_PATH}/.rsync-partial").stdout.split()
    assert len(partial) == 1, "the interrupted file waits in the partial dir"
    assert ssh(hosts, key, "node3", f"test -e {MODEL_PATH}/{partial[0]}", check=False).returncode != 0, (
        "no half file at the final path"
    )
    resumed = converge(model)
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert checksums(cluster, "node3") == checksums(cluster, "node1")
