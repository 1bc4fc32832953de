# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Download a Hugging Face model repository at a pinned revision into a directory, and describe it as a manifest.

What huggingface_hub (read in its 2.x source, file_download.py and _local_folder.py) does for
``snapshot_download(local_dir=...)``, and what this relies on:

- Each file is written to a temporary ``<local_dir>/.cache/huggingface/download/<hash>.<etag>.<random>.incomplete``
  and renamed into place only when complete, so a half-written file never shows at the final path.
- A file whose ``.cache/huggingface/download/<file>.metadata`` records the requested commit is not fetched
  again, so an interrupted snapshot continues with the files it lacks.
- Within one run, a dropped connection is resumed with an HTTP ``Range`` request (``http_get``, 5 tries).
  The partial file of a killed process is deleted, not resumed (huggingface_hub PR #4228): after a kill,
  completed files are kept and the interrupted file starts again.
- hf_xet is used by itself when installed and the repo is stored on Xet.

The manifest takes sha256 and size of LFS files from the hub (``model_info(files_metadata=True)``);
small files kept in git have only a git blob id (SHA-1), so they are hashed once after download and
checked against that id. huggingface_hub is imported only when a download is asked for, so the rest
of the collection does not need it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ansible_collections.llmserve.cluster.plugins.module_utils._transfer_progress import (
    PollingReporter,
    ProgressFile,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    BadFile,
    ManifestError,
    canonical_json,
    complete_hub_manifest,
    free_bytes,
    hub_file_entries,
    is_commit_sha,
    read_json,
    revision_warning,
    summarize_bad_files,
    write_json_atomic,
)


class HubDownloadError(RuntimeError):
    """The download could not produce the files the hub lists."""


def sibling_to_dict(sibling: Any) -> Dict[str, Any]:
    """A huggingface_hub RepoSibling back in the API's JSON shape, which the manifest code reads."""
    entry: Dict[str, Any] = {"rfilename": sibling.rfilename, "size": sibling.size, "blobId": sibling.blob_id}
    if sibling.lfs is not None:
        entry["lfs"] = {"size": sibling.lfs.size, "sha256": sibling.lfs.sha256}
    return entry


def fetch_repo_files(api: Any, repo_id: str, revision: Optional[str]) -> Dict[str, Any]:
    """Resolve the revision to a commit and list the repository's files with hub metadata."""
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    if not info.sha:
        raise HubDownloadError(f"the hub did not return a commit for {repo_id}@{revision}")
    return {"commit": info.sha, "siblings": [sibling_to_dict(sibling) for sibling in info.siblings or []]}


def _stat_snapshot(directory: str, paths: List[str]) -> Dict[str, Any]:
    snapshot = {}
    for path in paths:
        try:
            file_stat = os.stat(os.path.join(directory, *path.split("/")))
        except FileNotFoundError:
            snapshot[path] = None
            continue
        snapshot[path] = (file_stat.st_size, file_stat.st_mtime_ns, file_stat.st_ino)
    return snapshot


def stored_manifest_if_complete(local_dir: str, repo_id: str, revision: Optional[str]) -> Optional[Dict[str, Any]]:
    """The manifest beside the weights when it is for this repo at this commit and every file is there.

    Only a commit SHA can be checked without asking the hub; the files' hashes are checked later
    by the verify step, which is why sizes are enough here.
    """
    if not is_commit_sha(revision):
        return None
    manifest = read_json(os.path.join(local_dir, MANIFEST_NAME))
    if not manifest or manifest.get("source") != {"kind": "hub", "repo": repo_id, "revision": revision}:
        return None
    for entry in manifest.get("files", []):
        absolute = os.path.join(local_dir, *entry["path"].split("/"))
        if not os.path.isfile(absolute) or os.path.getsize(absolute) != entry["size"]:
            return None
    return manifest


def bytes_on_disk(local_dir: str, expected: Dict[str, int]) -> int:
    """Bytes of the expected files already in place plus those being written by huggingface_hub."""
    done = 0
    for path, size in expected.items():
        absolute = os.path.join(local_dir, *path.split("/"))
        if os.path.isfile(absolute):
            done += min(os.path.getsize(absolute), size)
    download_dir = os.path.join(local_dir, ".cache", "huggingface", "download")
    for root, _directories, names in os.walk(download_dir):
        for name in names:
            if name.endswith(".incomplete"):
                done += os.path.getsize(os.path.join(root, name))
    return min(done, sum(expected.values()))


def download_snapshot(
    repo_id: str,
    local_dir: str,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
    allow_patterns: Optional[List[str]] = None,
    ignore_patterns: Optional[List[str]] = None,
    max_workers: int = 8,
    progress_path: Optional[str] = None,
    hash_workers: int = 4,
    list_only: bool = False,
) -> Dict[str, Any]:
    """Download repo_id at revision into local_dir, write the manifest beside it, and report what happened.

    With list_only, ask the hub for the file list only and report the bytes still to download and
    the free space at local_dir, for a disk preflight.
    """
    warnings = [warning for warning in [revision_warning(revision)] if warning]
    stored = stored_manifest_if_complete(local_dir, repo_id, revision)
    if stored is not None and list_only:
        return {"changed": False, "commit": revision, "manifest": stored, "total_size": stored["total_size"],
                "bytes_to_fetch": 0, "free_bytes": free_bytes(local_dir), "warnings": warnings}  # fmt: skip
    if stored is not None:
        return {
            "changed": False,
            "commit": revision,
            "manifest": stored,
            "warnings": warnings,
            "downloaded": False,
            "bytes_hashed": 0,
        }

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint, token=token)
    listing = fetch_repo_files(api, repo_id, revision)
    commit = listing["commit"]
    wanted = set(
        filter_repo_objects(
            [sibling["rfilename"] for sibling in listing["siblings"]],
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
        )
    )
    entries = [entry for entry in hub_file_entries(listing["siblings"]) if entry["path"] in wanted]
    if not entries:
        raise HubDownloadError(f"no files of {repo_id}@{commit} match allow_patterns/ignore_patterns")
    expected_sizes = {entry["path"]: entry["size"] for entry in entries}
    before = _stat_snapshot(local_dir, sorted(expected_sizes))
    if list_only:
        present = sum(size for path, size in expected_sizes.items() if (before[path] or (None,))[0] == size)
        return {
            "changed": False,
            "commit": commit,
            "manifest": {
                "format": MANIFEST_FORMAT,
                "source": {"kind": "hub", "repo": repo_id, "revision": commit},
                "files": [
                    {"path": entry["path"], "size": entry["size"], "sha256": entry["sha256"]} for entry in entries
                ],
                "total_size": sum(expected_sizes.values()),
            },
            "total_size": sum(expected_sizes.values()),
            "bytes_to_fetch": sum(expected_sizes.values()) - present,
            "free_bytes": free_bytes(local_dir),
            "warnings": warnings,
        }

    os.makedirs(local_dir, exist_ok=True)
    progress = ProgressFile(progress_path, "download", sum(expected_sizes.values()))
    with PollingReporter(progress, lambda: bytes_on_disk(local_dir, expected_sizes)):
        snapshot_download(
            repo_id,
            revision=commit,
            local_dir=local_dir,
            token=token,
            endpoint=endpoint,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            max_workers=max_workers,
        )

    source = {"kind": "hub", "repo": repo_id, "revision": commit}
    manifest, bad, bytes_hashed = complete_hub_manifest(local_dir, source, entries, workers=hash_workers)
    bad += _size_mismatches(local_dir, manifest.get("files", []) if manifest else [])
    if bad:
        raise HubDownloadError(
            f"the download of {repo_id}@{commit} into {local_dir} does not match the hub: {summarize_bad_files(bad)}"
        )
    manifest_path = os.path.join(local_dir, MANIFEST_NAME)
    stored_manifest = read_json(manifest_path)
    manifest_changed = stored_manifest is None or canonical_json(stored_manifest) != canonical_json(manifest)
    if manifest_changed:
        write_json_atomic(manifest_path, manifest)
    files_changed = _stat_snapshot(local_dir, sorted(expected_sizes)) != before
    return {
        "changed": manifest_changed or files_changed,
        "commit": commit,
        "manifest": manifest,
        "warnings": warnings,
        "downloaded": files_changed,
        "bytes_hashed": bytes_hashed,
    }


def _size_mismatches(local_dir: str, files: List[Dict[str, Any]]) -> List[BadFile]:
    bad = []
    for entry in files:
        absolute = os.path.join(local_dir, *entry["path"].split("/"))
        if not os.path.isfile(absolute):
            bad.append(BadFile(entry["path"], "missing", expected_size=entry["size"]))
        elif os.path.getsize(absolute) != entry["size"]:
            bad.append(
                BadFile(
                    entry["path"], "size_mismatch", expected_size=entry["size"], actual_size=os.path.getsize(absolute)
                )
            )
    return bad


__all__ = ["HubDownloadError", "ManifestError", "download_snapshot", "fetch_repo_files", "sibling_to_dict"]
