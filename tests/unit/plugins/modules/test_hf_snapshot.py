# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The hub path of hf_snapshot: the real huggingface_hub.snapshot_download against a local hub stand-in.

No test here reaches the internet; the live hub download was not run in this project's CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_fixture_server import HubFixture, write_model_dir

from ansible_collections.llmserve.cluster.plugins.module_utils._hub_download import (
    HubDownloadError,
    bytes_on_disk,
    download_snapshot,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    MANIFEST_NAME,
    build_manifest_from_directory,
    read_json,
    verify_directory,
)

COLLECTIONS_ROOT = Path(__file__).resolve().parents[4] / ".build" / "collections"
# huggingface_hub streams in 10 MiB chunks, so only a file past 10 MiB shows a resume with a Range request.
BIG_SHARD = 24 * 1024 * 1024


@pytest.fixture
def hub_repo(tmp_path):
    source = tmp_path / "hub"
    write_model_dir(str(source), [BIG_SHARD, 3 * 1024 * 1024])
    with HubFixture(str(source)) as hub:
        yield hub, str(source)


def requests_for(hub, suffix):
    return [request for request in hub.state.requests if str(request["path"]).endswith(suffix)]


def test_download_at_a_commit_matches_the_hub_and_stores_the_manifest(hub_repo, tmp_path):
    hub, source = hub_repo
    target = str(tmp_path / "weights")
    result = download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint, token="hf_x")
    assert result["changed"] and result["downloaded"] and result["commit"] == hub.commit
    expected, _unused, _unused = build_manifest_from_directory(
        source, {"kind": "hub", "repo": hub.state.repo_id, "revision": hub.commit}
    )
    assert result["manifest"] == expected
    assert read_json(os.path.join(target, MANIFEST_NAME)) == expected
    assert verify_directory(target, expected, mode="full").ok, "the .cache/huggingface bookkeeping is not 'extra'"
    # The manifest's sha256 of LFS files came from the hub; only the small git files were hashed here.
    assert result["bytes_hashed"] == sum(
        entry["size"] for entry in expected["files"] if not entry["path"].endswith(".safetensors")
    )
    # The token goes to the hub, never to the CDN the LFS files are served from.
    assert all(request["authorization"] for request in hub.state.requests if request["origin"] == "hub")
    assert not any(request["authorization"] for request in hub.state.requests if request["origin"] == "cdn")


def test_a_dropped_connection_resumes_with_a_range_request(hub_repo, tmp_path):
    hub, _unused = hub_repo
    shard = "model-00001-of-00002.safetensors"
    hub.state.drop_once.add(shard)
    target = str(tmp_path / "weights")
    result = download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)
    sha256 = next(entry["sha256"] for entry in result["manifest"]["files"] if entry["path"] == shard)
    gets = [request for request in requests_for(hub, sha256) if request["method"] == "GET"]
    assert [request["range"] for request in gets] == [None, f"bytes={10 * 1024 * 1024}-"]
    assert verify_directory(target, result["manifest"], mode="full").ok
    leftovers = list(Path(target, ".cache", "huggingface", "download").glob("*.incomplete"))
    assert leftovers == []


def test_second_run_at_a_commit_does_not_contact_the_hub(hub_repo, tmp_path):
    hub, _unused = hub_repo
    target = str(tmp_path / "weights")
    download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)
    seen = len(hub.state.requests)
    again = download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)
    assert not again["changed"] and not again["downloaded"] and again["bytes_hashed"] == 0
    assert len(hub.state.requests) == seen


def test_branch_revision_resolves_to_a_commit_and_warns(hub_repo, tmp_path):
    hub, _unused = hub_repo
    result = download_snapshot(hub.state.repo_id, str(tmp_path / "w"), revision="main", endpoint=hub.endpoint)
    assert result["commit"] == hub.commit
    assert result["manifest"]["source"]["revision"] == hub.commit, "the manifest pins what was downloaded"
    assert any("branch and tag names move" in warning for warning in result["warnings"])


def test_patterns_limit_files_and_manifest(hub_repo, tmp_path):
    hub, _unused = hub_repo
    target = str(tmp_path / "w")
    result = download_snapshot(
        hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint, allow_patterns=["*.json"]
    )
    assert [entry["path"] for entry in result["manifest"]["files"]] == [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
    ]
    assert not list(Path(target).glob("*.safetensors"))


def test_unknown_revision_fails(hub_repo, tmp_path):
    hub, _unused = hub_repo
    with pytest.raises(Exception, match=r"RevisionNotFound|Invalid rev id"):
        download_snapshot(hub.state.repo_id, str(tmp_path / "w"), revision="f" * 40, endpoint=hub.endpoint)


def test_a_truncated_file_from_the_hub_is_refused(hub_repo, tmp_path):
    hub, _unused = hub_repo
    target = str(tmp_path / "w")
    download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)
    # The hub now lists a config.json that the local copy does not match (as after a corrupted write).
    hub.state.files["config.json"].git_blob_id = "0" * 40
    os.unlink(os.path.join(target, MANIFEST_NAME))
    with pytest.raises(HubDownloadError, match=r"config\.json: git blob id mismatch"):
        download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)


DOWNLOAD_SCRIPT = """
import json, sys
from ansible_collections.llmserve.cluster.plugins.module_utils._hub_download import download_snapshot
repo, target, revision, endpoint, progress = sys.argv[1:6]
result = download_snapshot(repo, target, revision=revision, endpoint=endpoint, progress_path=progress)
print(json.dumps({"changed": result["changed"]}))
"""


def test_a_killed_download_keeps_finished_files_and_never_shows_a_half_file(hub_repo, tmp_path):
    hub, _unused = hub_repo
    shard = "model-00001-of-00002.safetensors"
    hub.state.stall_once.add(shard)
    target = tmp_path / "weights"
    progress = tmp_path / "progress.json"
    environment = dict(os.environ, PYTHONPATH=str(COLLECTIONS_ROOT))
    arguments = [hub.state.repo_id, str(target), hub.commit, hub.endpoint, str(progress)]
    process = subprocess.Popen([sys.executable, "-c", DOWNLOAD_SCRIPT, *arguments], env=environment)
    try:
        deadline = time.monotonic() + 60
        incomplete = []
        while time.monotonic() < deadline:
            incomplete = list((target / ".cache" / "huggingface" / "download").glob("*.incomplete"))
            done = (target / "model-00002-of-00002.safetensors").exists() and (target / "config.json").exists()
            if done and incomplete and incomplete[0].stat().st_size >= 10 * 1024 * 1024:
                break
            time.sleep(0.05)
        assert incomplete, "the stalled shard was being written to a temporary file"
        assert not (target / shard).exists(), "no half-written file at the final path"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    hub.state.released.set()

    seen = len(hub.state.requests)
    subprocess.run([sys.executable, "-c", DOWNLOAD_SCRIPT, *arguments], env=environment, check=True)
    again = hub.state.requests[seen:]
    fetched = {request["path"] for request in again if request["method"] == "GET" and "/lfs/" in request["path"]}
    manifest = read_json(str(target / MANIFEST_NAME))
    by_sha = {entry["sha256"]: entry["path"] for entry in manifest["files"]}
    assert {by_sha[path.rsplit("/", 1)[1]] for path in fetched} == {shard}, "finished files are not fetched again"
    assert verify_directory(str(target), manifest, mode="full").ok
    assert json.loads(progress.read_text())["state"] == "done"


def test_bytes_on_disk_counts_final_and_incomplete_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    download_dir = tmp_path / ".cache" / "huggingface" / "download"
    download_dir.mkdir(parents=True)
    (download_dir / "abc.etag.1234.incomplete").write_bytes(b"y" * 5)
    assert bytes_on_disk(str(tmp_path), {"a.bin": 10, "b.bin": 20}) == 15


def test_list_only_reports_sizes_for_the_disk_preflight(hub_repo, tmp_path):
    hub, source = hub_repo
    target = str(tmp_path / "w")
    listed = download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint, list_only=True)
    total = sum(path.stat().st_size for path in Path(source).iterdir())
    assert listed["total_size"] == listed["bytes_to_fetch"] == total and listed["free_bytes"] > 0
    assert not Path(target).exists() or not any(Path(target).iterdir()), "nothing downloaded"
    download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint)
    again = download_snapshot(hub.state.repo_id, target, revision=hub.commit, endpoint=hub.endpoint, list_only=True)
    assert again["bytes_to_fetch"] == 0 and again["total_size"] == total
