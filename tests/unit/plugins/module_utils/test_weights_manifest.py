# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    MANIFEST_NAME,
    STAMP_NAME,
    ManifestError,
    build_manifest_from_directory,
    bytes_to_fetch,
    complete_hub_manifest,
    free_bytes,
    hash_file,
    hub_file_entries,
    list_files,
    load_manifest,
    make_manifest,
    manifest_digest,
    mark_updates,
    read_json,
    remove_extra_files,
    resolve_manifest,
    revision_warning,
    validate_manifest,
    verify_and_stamp,
    verify_directory,
    write_json_atomic,
)

SOURCE = {"kind": "controller_dir", "repo": None, "revision": None}


def write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "model"
    write(str(directory / "config.json"), json.dumps({"model_type": "llama", "hidden_size": 256}).encode())
    write(str(directory / "model-00001-of-00002.safetensors"), os.urandom(3 * 1024 * 1024 + 17))
    write(str(directory / "model-00002-of-00002.safetensors"), os.urandom(2 * 1024 * 1024))
    write(str(directory / "original" / "params.json"), b'{"dim": 256}')
    return str(directory)


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x01]))


# --- hashing and building ---------------------------------------------------------------------


def test_hash_file_matches_sha256sum_and_git(model_dir):
    path = os.path.join(model_dir, "model-00001-of-00002.safetensors")
    digest, size, git_blob_id = hash_file(path, with_git_blob_id=True)
    assert digest == subprocess.run(["sha256sum", path], capture_output=True, text=True, check=True).stdout.split()[0]
    assert size == os.path.getsize(path)
    # git hash-object's definition of a blob id
    with open(path, "rb") as handle:
        content = handle.read()
    assert git_blob_id == hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def test_build_manifest_lists_every_file_once_with_sizes(model_dir):
    manifest, bytes_hashed, _unused = build_manifest_from_directory(model_dir, SOURCE, workers=3)
    paths = [entry["path"] for entry in manifest["files"]]
    assert paths == sorted(
        ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "original/params.json"]
    )
    assert (
        manifest["total_size"]
        == bytes_hashed
        == sum(os.path.getsize(os.path.join(model_dir, *path.split("/"))) for path in paths)
    )
    assert manifest["format"] == 1 and manifest["source"]["kind"] == "controller_dir"


def test_listing_ignores_bookkeeping_but_not_other_dotfiles(model_dir):
    write(os.path.join(model_dir, MANIFEST_NAME), b"{}")
    write(os.path.join(model_dir, STAMP_NAME), b"{}")
    write(os.path.join(model_dir, ".cache", "huggingface", "download", "x.metadata"), b"meta")
    write(os.path.join(model_dir, ".rsync-partial", "model-00001-of-00002.safetensors"), b"partial")
    write(os.path.join(model_dir, ".gitattributes"), b"*.safetensors filter=lfs")
    files = list_files(model_dir)
    assert ".gitattributes" in files
    assert not [path for path in files if path.startswith((".cache", ".rsync-partial", ".llmserve"))]


def test_manifest_digest_is_stable_across_key_order():
    manifest = make_manifest(SOURCE, [{"path": "a", "size": 1, "sha256": "0" * 64}])
    reordered = json.loads(json.dumps(manifest, sort_keys=False))
    reordered = {key: reordered[key] for key in reversed(list(reordered))}
    assert manifest_digest(reordered) == manifest_digest(manifest)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(format=2), "format must be 1"),
        (lambda m: m["files"].append({"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}), "'..'"),
        (lambda m: m["files"].append({"path": "/abs", "size": 1, "sha256": "0" * 64}), "relative"),
        (lambda m: m["files"][0].update(sha256="XYZ"), "sha256 must be 64"),
        (lambda m: m.update(total_size=5), "total_size"),
        (lambda m: m["files"].append(dict(m["files"][0])), "listed twice"),
    ],
)
def test_validate_manifest_names_the_problem(mutate, message):
    manifest = make_manifest(SOURCE, [{"path": "a.bin", "size": 1, "sha256": "0" * 64}])
    mutate(manifest)
    with pytest.raises(ManifestError, match=message):
        validate_manifest(manifest)


# --- verification -----------------------------------------------------------------------------


def test_verify_passes_on_the_same_files(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    result = verify_directory(model_dir, manifest, mode="full")
    assert result.ok and result.bad_files == []
    assert result.files_hashed == 4 and result.bytes_hashed == manifest["total_size"]


def test_one_flipped_byte_is_named(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    shard = os.path.join(model_dir, "model-00002-of-00002.safetensors")
    flip_byte(shard, 1234567)
    result = verify_directory(model_dir, manifest, mode="full")
    assert not result.ok
    [bad] = result.bad_files
    assert bad.path == "model-00002-of-00002.safetensors" and bad.reason == "sha256_mismatch"
    assert bad.actual_sha256 == hash_file(shard)[0] != bad.expected_sha256
    assert "model-00002-of-00002.safetensors: sha256" in bad.describe()


def test_missing_extra_and_size_mismatch(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    os.unlink(os.path.join(model_dir, "original", "params.json"))
    write(os.path.join(model_dir, "stray.bin"), b"not in the manifest")
    with open(os.path.join(model_dir, "config.json"), "ab") as handle:
        handle.write(b" ")
    result = verify_directory(model_dir, manifest)
    reasons = {bad.path: bad.reason for bad in result.bad_files}
    assert reasons == {"original/params.json": "missing", "stray.bin": "extra", "config.json": "size_mismatch"}
    # A size mismatch is decided without reading the file.
    assert result.files_hashed == 2


def test_a_directory_where_a_file_should_be(model_dir):
    manifest = make_manifest(SOURCE, [{"path": "original", "size": 12, "sha256": "0" * 64}])
    result = verify_directory(model_dir, manifest)
    assert ("original", "not_a_file") in [(bad.path, bad.reason) for bad in result.bad_files]


def test_missing_directory_reports_every_file_missing(tmp_path):
    manifest = make_manifest(SOURCE, [{"path": "a.bin", "size": 1, "sha256": "0" * 64}])
    result = verify_directory(str(tmp_path / "absent"), manifest)
    assert [(bad.path, bad.reason) for bad in result.bad_files] == [("a.bin", "missing")]


# --- stamp ------------------------------------------------------------------------------------


def test_second_verify_hashes_nothing(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    first, written = verify_and_stamp(model_dir, manifest, stamp_path)
    assert first.ok and written and first.files_hashed == 4 and not first.stamp_used
    second, written_again = verify_and_stamp(model_dir, manifest, stamp_path)
    assert second.ok and second.files_hashed == 0 and second.bytes_hashed == 0
    assert second.stamp_used and second.files_from_stamp == 4
    assert not written_again, "an unchanged stamp is not rewritten"


def test_full_mode_rehashes_despite_the_stamp(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    verify_and_stamp(model_dir, manifest, stamp_path)
    result, _unused = verify_and_stamp(model_dir, manifest, stamp_path, mode="full")
    assert result.files_hashed == 4 and not result.stamp_used


def test_mtime_change_forces_a_rehash_of_that_file_only(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    verify_and_stamp(model_dir, manifest, stamp_path)
    config = os.path.join(model_dir, "config.json")
    old = os.stat(config)
    os.utime(config, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000_000))
    result, written = verify_and_stamp(model_dir, manifest, stamp_path)
    assert result.ok and result.files_hashed == 1 and result.files_from_stamp == 3
    assert written, "the new mtime is recorded"


def test_stamp_does_not_hide_a_flip_that_changed_mtime(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    verify_and_stamp(model_dir, manifest, stamp_path)
    shard = os.path.join(model_dir, "model-00001-of-00002.safetensors")
    before = os.stat(shard)
    flip_byte(shard, 10)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    result, _unused = verify_and_stamp(model_dir, manifest, stamp_path)
    assert [(bad.path, bad.reason) for bad in result.bad_files] == [(os.path.basename(shard), "sha256_mismatch")]


def test_flip_with_restored_mtime_is_caught_by_ctime_or_full(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    verify_and_stamp(model_dir, manifest, stamp_path)
    shard = os.path.join(model_dir, "model-00001-of-00002.safetensors")
    before = os.stat(shard)
    flip_byte(shard, 10)
    # Restoring the mtime by hand still moves ctime, which the stamp records.
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    result, _unused = verify_and_stamp(model_dir, manifest, stamp_path)
    assert not result.ok
    full, _unused = verify_and_stamp(model_dir, manifest, stamp_path, mode="full")
    assert not full.ok


def test_stamp_for_another_sha256_is_not_trusted(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    verify_and_stamp(model_dir, manifest, stamp_path)
    other = json.loads(json.dumps(manifest))
    other["files"][0]["sha256"] = "f" * 64
    result, _unused = verify_and_stamp(model_dir, other, stamp_path)
    assert [bad.path for bad in result.bad_files] == [other["files"][0]["path"]]
    assert result.files_from_stamp == 3


def test_failed_verify_still_stamps_the_good_files(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    flip_byte(os.path.join(model_dir, "config.json"), 3)
    result, written = verify_and_stamp(model_dir, manifest, stamp_path)
    assert not result.ok and written
    assert sorted(read_json(stamp_path)["files"]) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "original/params.json",
    ]
    assert "config.json" in result.bad_file_stats


def test_check_mode_writes_no_stamp(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    stamp_path = os.path.join(model_dir, STAMP_NAME)
    _unused, written = verify_and_stamp(model_dir, manifest, stamp_path, write=False)
    assert not written and not os.path.exists(stamp_path)


# --- manifests on disk ------------------------------------------------------------------------


def test_resolve_manifest_from_mapping_file_and_default(model_dir, tmp_path):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    manifest_path = os.path.join(model_dir, MANIFEST_NAME)
    resolved, must_write = resolve_manifest(manifest, manifest_path)
    assert resolved == manifest and must_write
    write_json_atomic(manifest_path, manifest)
    assert resolve_manifest(manifest, manifest_path) == (manifest, False)
    assert resolve_manifest(None, manifest_path) == (manifest, False)
    elsewhere = str(tmp_path / "elsewhere.json")
    write_json_atomic(elsewhere, manifest)
    assert resolve_manifest(elsewhere, manifest_path) == (manifest, False)


def test_load_manifest_reports_unreadable_and_invalid(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(str(bad))


def test_write_json_atomic_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / MANIFEST_NAME)
    write_json_atomic(path, {"a": 1})
    assert os.listdir(tmp_path) == [MANIFEST_NAME]
    assert read_json(path) == {"a": 1}


def test_remove_extra_files_deletes_only_extras(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    write(os.path.join(model_dir, "leftover", "old.bin"), b"x")
    result = verify_directory(model_dir, manifest)
    assert remove_extra_files(model_dir, result.bad_files) == ["leftover/old.bin"]
    assert verify_directory(model_dir, manifest).ok


# --- the hub's metadata -----------------------------------------------------------------------

# The shape of GET /api/models/{repo}/revision/{sha}?blobs=True siblings (huggingface_hub ModelInfo input).
HUB_SIBLINGS = [
    {"rfilename": ".gitattributes", "size": 1519, "blobId": "a6344aac8c09253b3b630fb776ae94478aa0275b"},
    {
        "rfilename": "model.safetensors",
        "size": 4194304,
        "blobId": "36a2ed3f5d0a7a5c0b8d1b0b6b3c8e1a5f1e2d3c",
        "lfs": {"size": 4194304, "sha256": None, "pointerSize": 135},
    },
    {"rfilename": "config.json", "size": None, "blobId": None},
]


def test_hub_entries_take_lfs_sha256_and_leave_git_files_to_hash(model_dir):
    lfs_digest = "ab" * 32
    siblings = json.loads(json.dumps(HUB_SIBLINGS[:2]))
    siblings[1]["lfs"]["sha256"] = lfs_digest
    entries = hub_file_entries(siblings)
    assert entries == [
        {"path": ".gitattributes", "size": 1519, "sha256": None, "git_blob_id": HUB_SIBLINGS[0]["blobId"]},
        {"path": "model.safetensors", "size": 4194304, "sha256": lfs_digest},
    ]


def test_hub_entries_without_metadata_are_refused():
    with pytest.raises(ManifestError, match="files_metadata=True"):
        hub_file_entries([HUB_SIBLINGS[2]])


def test_complete_hub_manifest_checks_git_blob_ids(model_dir):
    config = os.path.join(model_dir, "config.json")
    _unused, size, git_blob_id = hash_file(config, with_git_blob_id=True)
    shard_digest, shard_size, _unused = hash_file(os.path.join(model_dir, "model-00001-of-00002.safetensors"))
    siblings = [
        {"rfilename": "config.json", "size": size, "blobId": git_blob_id},
        {
            "rfilename": "model-00001-of-00002.safetensors",
            "size": shard_size,
            "blobId": "0" * 40,
            "lfs": {"size": shard_size, "sha256": shard_digest, "pointerSize": 135},
        },
    ]
    source = {"kind": "hub", "repo": "org/model", "revision": "1" * 40}
    manifest, bad, bytes_hashed = complete_hub_manifest(model_dir, source, hub_file_entries(siblings))
    assert bad == [] and bytes_hashed == size, "only the git-stored file is hashed"
    assert manifest["files"][0] == {"path": "config.json", "size": size, "sha256": hash_file(config)[0]}

    siblings[0]["blobId"] = "f" * 40
    manifest, bad, _unused = complete_hub_manifest(model_dir, source, hub_file_entries(siblings))
    assert manifest == {} and [(item.path, item.reason) for item in bad] == [("config.json", "git_blob_id_mismatch")]


def test_revision_warning_only_for_moving_names():
    assert revision_warning("a09a35458c702b33eeacc393d103063234e8bc28") is None
    assert "branch and tag names move" in revision_warning("main")
    assert "main (default)" in revision_warning(None)
    assert revision_warning("A09A35458C702B33EEACC393D103063234E8BC28") is not None, "the hub's SHAs are lowercase"


def test_rebuild_reuses_the_stamp_and_hashes_only_changed_files(model_dir):
    manifest, _unused, entries = build_manifest_from_directory(model_dir, SOURCE)
    stamp = {"files": entries}
    again, hashed_again, _unused = build_manifest_from_directory(model_dir, SOURCE, stamp=stamp)
    assert again == manifest and hashed_again == 0
    flip_byte(os.path.join(model_dir, "config.json"), 2)
    changed, hashed_changed, _unused = build_manifest_from_directory(model_dir, SOURCE, stamp=stamp)
    assert hashed_changed == os.path.getsize(os.path.join(model_dir, "config.json"))
    assert manifest_digest(changed) != manifest_digest(manifest)


def test_new_version_marks_replaced_files_as_updates_and_damage_as_not(model_dir):
    old, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    new = json.loads(json.dumps(old))
    new["files"] = [entry for entry in new["files"] if entry["path"] != "original/params.json"]
    new["files"][0]["sha256"] = "e" * 64  # config.json changes in the new version
    new["total_size"] = sum(entry["size"] for entry in new["files"])
    write(os.path.join(model_dir, "unknown.txt"), b"user file")
    flip_byte(os.path.join(model_dir, "model-00001-of-00002.safetensors"), 5)
    result = verify_directory(model_dir, new, mode="full")
    mark_updates(result.bad_files, old, new)
    assert {bad.path: bad.update for bad in result.bad_files} == {
        "config.json": True,
        "original/params.json": True,
        "model-00001-of-00002.safetensors": False,
        "unknown.txt": False,
    }
    # With the same manifest stored before, every mismatch is damage.
    mark_updates(result.bad_files, new, new)
    assert not any(bad.update for bad in result.bad_files)


def test_bytes_to_fetch_and_free_bytes(model_dir, tmp_path):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    os.unlink(os.path.join(model_dir, "model-00002-of-00002.safetensors"))
    write(os.path.join(model_dir, "extra.bin"), b"x" * 100)
    result = verify_directory(model_dir, manifest)
    assert bytes_to_fetch(result.bad_files, manifest) == 2 * 1024 * 1024
    assert free_bytes(str(tmp_path / "not" / "yet" / "there")) == free_bytes(str(tmp_path)) > 0


def test_size_mode_checks_a_draft_without_hashing(model_dir):
    manifest, _unused, _unused = build_manifest_from_directory(model_dir, SOURCE)
    draft = json.loads(json.dumps(manifest))
    draft["files"][0]["sha256"] = None  # a git file the hub gives no sha256 for
    flip_byte(os.path.join(model_dir, "model-00001-of-00002.safetensors"), 9)
    os.unlink(os.path.join(model_dir, "original", "params.json"))
    result = verify_directory(model_dir, draft, mode="size")
    assert result.files_hashed == 0 and result.stamp_entries == {}
    assert [(bad.path, bad.reason) for bad in result.bad_files] == [("original/params.json", "missing")]
    with pytest.raises(ManifestError):
        verify_directory(model_dir, draft, mode="stamp")
