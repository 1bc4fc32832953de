# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Model weight manifests: build them, verify a directory against them, and remember what was verified.

A manifest lists every file of a model with its size and sha256:

    {"format": 1,
     "source": {"kind": "hub" | "controller_dir" | "shared_path", "repo": ..., "revision": ...},
     "files": [{"path": "model-00001-of-00002.safetensors", "size": 4976698672, "sha256": "..."}],
     "total_size": ...}

It is stored beside the weights (``.llmserve-manifest.json``). A verification stamp
(``.llmserve-verified.json``) remembers, per file, the sha256 that was verified and the file's
size, mtime_ns, ctime_ns and inode at that moment, so that a re-run hashes only what changed.

This module runs on managed nodes: standard library only, Python >= 3.9.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

MANIFEST_FORMAT = 1
MANIFEST_NAME = ".llmserve-manifest.json"
STAMP_NAME = ".llmserve-verified.json"
BOOKKEEPING_PREFIX = ".llmserve-"
SOURCE_KINDS = ("hub", "controller_dir", "shared_path")

# Directories that hold download or copy bookkeeping, never model files.
IGNORED_DIR_NAMES = (".rsync-partial",)
IGNORED_DIR_PATHS = (".cache/huggingface",)

# 16 MiB reads keep syscall overhead negligible next to hashing (hashlib releases the GIL for these).
HASH_BUFFER_BYTES = 16 * 1024 * 1024
DEFAULT_HASH_WORKERS = 4

_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that cannot be used as it is."""


@dataclass
class BadFile:
    path: str
    reason: str  # missing | extra | not_a_file | size_mismatch | sha256_mismatch
    expected_size: Optional[int] = None
    actual_size: Optional[int] = None
    expected_sha256: Optional[str] = None
    actual_sha256: Optional[str] = None
    # True when the file belongs to the version the node held before (a new revision replaces
    # it), False when it contradicts the manifest the node already holds (damage).
    update: Optional[bool] = None

    def describe(self) -> str:
        if self.reason == "size_mismatch":
            return f"{self.path}: size {self.actual_size}, expected {self.expected_size}"
        if self.reason == "sha256_mismatch":
            return f"{self.path}: sha256 {self.actual_sha256}, expected {self.expected_sha256}"
        return f"{self.path}: {self.reason.replace('_', ' ')}"

    def to_dict(self) -> Dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class VerifyResult:
    ok: bool
    bad_files: List[BadFile]
    files_checked: int
    files_hashed: int
    bytes_hashed: int
    files_from_stamp: int
    stamp_used: bool
    manifest_digest: str
    seconds: float
    # Per-file entries for every file that verified, ready to be written as the new stamp.
    stamp_entries: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Stat of each bad file at verify time, so a later copy can tell when a new version has landed.
    bad_file_stats: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "ok": self.ok,
            "bad_files": [bad.to_dict() for bad in self.bad_files],
            "files_checked": self.files_checked,
            "files_hashed": self.files_hashed,
            "bytes_hashed": self.bytes_hashed,
            "files_from_stamp": self.files_from_stamp,
            "stamp_used": self.stamp_used,
            "manifest_digest": self.manifest_digest,
            "seconds": round(self.seconds, 3),
        }


# --- revisions -------------------------------------------------------------------------------


def is_commit_sha(revision: Optional[str]) -> bool:
    return bool(revision) and _COMMIT_SHA.match(str(revision)) is not None


def revision_warning(revision: Optional[str]) -> Optional[str]:
    """A warning for revisions that can move (branches, tags), None for a pinned commit."""
    if is_commit_sha(revision):
        return None
    shown = revision or "main (default)"
    return (
        f"revision '{shown}' is not a 40-hex commit SHA: branch and tag names move, so nodes set up at different "
        "times can get different weights. Pin the commit SHA for reproducible deployments."
    )


# --- hashing ---------------------------------------------------------------------------------


class FileHash(NamedTuple):
    sha256: str
    size: int  # bytes read
    git_blob_id: Optional[str]


def hash_file(path: str, with_git_blob_id: bool = False) -> FileHash:
    """sha256, bytes read and (when asked) git blob id of one file, in a single pass."""
    sha256 = hashlib.sha256()
    git_sha1 = None
    if with_git_blob_id:
        git_sha1 = hashlib.sha1()
        git_sha1.update(b"blob %d\0" % os.path.getsize(path))
    buffer = bytearray(HASH_BUFFER_BYTES)
    view = memoryview(buffer)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            count = os.readv(fd, [buffer])
            if count == 0:
                break
            chunk = view[:count]
            sha256.update(chunk)
            if git_sha1 is not None:
                git_sha1.update(chunk)
            total += count
    finally:
        os.close(fd)
    return FileHash(sha256.hexdigest(), total, git_sha1.hexdigest() if git_sha1 is not None else None)


def hash_files(
    paths: List[str], workers: int = DEFAULT_HASH_WORKERS, with_git_blob_id: bool = False
) -> Dict[str, FileHash]:
    """Hash files on a thread pool; large files first so one big shard does not finish last."""
    if not paths:
        return {}
    ordered = sorted(paths, key=lambda path: -os.path.getsize(path))
    if workers <= 1 or len(ordered) == 1:
        return {path: hash_file(path, with_git_blob_id) for path in ordered}
    with ThreadPoolExecutor(max_workers=min(workers, len(ordered))) as pool:
        results = pool.map(lambda path: hash_file(path, with_git_blob_id), ordered)
        return dict(zip(ordered, results))


# --- manifests -------------------------------------------------------------------------------


def canonical_json(document: Dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def manifest_digest(manifest: Dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, equal on every node that holds the same manifest."""
    return hashlib.sha256(canonical_json(manifest).encode("utf-8")).hexdigest()


def make_manifest(source: Dict[str, Any], files: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    entries = sorted(
        ({"path": entry["path"], "size": int(entry["size"]), "sha256": entry["sha256"]} for entry in files),
        key=lambda entry: entry["path"],
    )
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {
            "kind": source.get("kind"),
            "repo": source.get("repo"),
            "revision": source.get("revision"),
        },
        "files": entries,
        "total_size": sum(entry["size"] for entry in entries),
    }
    validate_manifest(manifest)
    return manifest


def _check_relative_path(path: Any) -> Optional[str]:
    if not isinstance(path, str) or not path:
        return "a file path must be a non-empty string"
    if path.startswith("/") or "\\" in path:
        return f"file path '{path}' must be relative and use '/'"
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"file path '{path}' must not contain empty, '.' or '..' segments"
    return None


def validate_manifest(manifest: Any, sizes_only: bool = False) -> None:
    """Raise ManifestError naming every problem in a manifest.

    sizes_only accepts a draft whose small git files have no sha256 yet (the hub's listing before
    download), which is enough to check presence and sizes.
    """
    if not isinstance(manifest, dict):
        raise ManifestError(f"the manifest must be a mapping, got {type(manifest).__name__}")
    problems = []
    if manifest.get("format") != MANIFEST_FORMAT:
        problems.append(f"format must be {MANIFEST_FORMAT}, got {manifest.get('format')!r}")
    source = manifest.get("source")
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        problems.append(f"source.kind must be one of {', '.join(SOURCE_KINDS)}")
    files = manifest.get("files")
    if not isinstance(files, list):
        problems.append("files must be a list")
        files = []
    seen = set()
    for index, entry in enumerate(files):
        if not isinstance(entry, dict):
            problems.append(f"files[{index}] must be a mapping")
            continue
        path_problem = _check_relative_path(entry.get("path"))
        if path_problem:
            problems.append(path_problem)
        elif entry["path"] in seen:
            problems.append(f"file path '{entry['path']}' is listed twice")
        else:
            seen.add(entry["path"])
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"files[{index}].size must be a non-negative integer")
        if sizes_only and entry.get("sha256") is None:
            continue
        if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            problems.append(f"files[{index}].sha256 must be 64 lowercase hex characters")
    if not problems and manifest.get("total_size") != sum(entry["size"] for entry in files):
        problems.append("total_size does not equal the sum of the file sizes")
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))


def is_ignored(relative_path: str) -> bool:
    """Bookkeeping that lives beside the weights and is never part of a manifest."""
    if relative_path.startswith(BOOKKEEPING_PREFIX):
        # The manifest, the stamp, and their temporary files while they are written.
        return True
    parts = relative_path.split("/")
    if any(part in IGNORED_DIR_NAMES for part in parts[:-1]):
        return True
    return any(relative_path.startswith(prefix + "/") for prefix in IGNORED_DIR_PATHS)


def list_files(directory: str) -> List[str]:
    """Relative '/'-separated paths of the files under directory (symlinks to files count as files)."""
    found = []
    for root, dirnames, filenames in os.walk(directory):
        relative_root = os.path.relpath(root, directory)
        prefix = "" if relative_root == "." else relative_root.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(name for name in dirnames if not is_ignored(prefix + name + "/x"))
        for name in filenames:
            relative = prefix + name
            if not is_ignored(relative):
                found.append(relative)
    return sorted(found)


def build_manifest_from_directory(
    directory: str,
    source: Dict[str, Any],
    workers: int = DEFAULT_HASH_WORKERS,
    stamp: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, Any], int, Dict[str, Dict[str, Any]]]:
    """Hash the files of a directory; return (manifest, bytes hashed, stamp entries).

    A file whose size, mtime_ns, ctime_ns and inode equal its entry in stamp keeps the sha256
    recorded there, so rebuilding the manifest of an unchanged directory reads nothing.
    """
    stamped = (stamp or {}).get("files") or {}
    files = []
    entries: Dict[str, Dict[str, Any]] = {}
    to_hash: Dict[str, Tuple[str, Dict[str, int]]] = {}
    for relative in list_files(directory):
        absolute = os.path.join(directory, *relative.split("/"))
        current = _stat_entry(os.stat(absolute))
        recorded = stamped.get(relative) or {}
        if recorded and dict(current, sha256=recorded.get("sha256")) == recorded:
            files.append({"path": relative, "size": current["size"], "sha256": recorded["sha256"]})
            entries[relative] = recorded
        else:
            to_hash[absolute] = (relative, current)
    hashes = hash_files(list(to_hash), workers)
    for absolute, file_hash in hashes.items():
        relative, before = to_hash[absolute]
        digest, size = file_hash.sha256, file_hash.size
        files.append({"path": relative, "size": size, "sha256": digest})
        if _stat_entry(os.stat(absolute)) == before:
            entries[relative] = dict(before, sha256=digest)
    return make_manifest(source, files), sum(file_hash.size for file_hash in hashes.values()), entries


def hub_file_entries(siblings: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Normalise hub file metadata (model_info(files_metadata=True) siblings, in the API's JSON shape).

    LFS files carry their sha256 from the hub. Small files kept in git carry only a git blob id
    (SHA-1), so their sha256 stays None until they are hashed after download.
    """
    entries = []
    for sibling in siblings:
        if sibling.get("size") is None and not sibling.get("lfs"):
            raise ManifestError(f"the hub gave no size for {sibling.get('rfilename')}: ask with files_metadata=True")
        lfs = sibling.get("lfs") or None
        if lfs:
            entries.append({"path": sibling["rfilename"], "size": int(lfs["size"]), "sha256": lfs["sha256"]})
        else:
            entries.append(
                {
                    "path": sibling["rfilename"],
                    "size": int(sibling["size"]),
                    "sha256": None,
                    "git_blob_id": sibling.get("blobId"),
                }
            )
    return sorted(entries, key=lambda entry: entry["path"])


def complete_hub_manifest(
    directory: str, source: Dict[str, Any], entries: List[Dict[str, Any]], workers: int = DEFAULT_HASH_WORKERS
) -> Tuple[Dict[str, Any], List[BadFile], int]:
    """Hash the downloaded files that the hub gave no sha256 for, checking each against its git blob id.

    Returns (manifest, bad files, bytes hashed). The manifest is None when a file is missing or
    does not match the hub's git blob id.
    """
    pending = [entry for entry in entries if entry["sha256"] is None]
    bad: List[BadFile] = []
    present = {}
    for entry in pending:
        absolute = os.path.join(directory, *entry["path"].split("/"))
        if not os.path.isfile(absolute):
            bad.append(BadFile(entry["path"], "missing", expected_size=entry["size"]))
        else:
            present[absolute] = entry
    hashes = hash_files(list(present), workers, with_git_blob_id=True)
    for absolute, (digest, size, git_blob_id) in hashes.items():
        entry = present[absolute]
        if size != entry["size"]:
            bad.append(BadFile(entry["path"], "size_mismatch", expected_size=entry["size"], actual_size=size))
        elif entry.get("git_blob_id") and git_blob_id != entry["git_blob_id"]:
            bad.append(BadFile(entry["path"], "git_blob_id_mismatch", expected_size=entry["size"], actual_size=size))
        else:
            entry["sha256"] = digest
    bytes_hashed = sum(file_hash.size for file_hash in hashes.values())
    if bad:
        return {}, sorted(bad, key=lambda item: item.path), bytes_hashed
    return make_manifest(source, entries), [], bytes_hashed


# --- files on disk ---------------------------------------------------------------------------


def write_json_atomic(path: str, document: Dict[str, Any], mode: int = 0o644) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.tmp.", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The JSON document at path, or None when there is none or it cannot be parsed."""
    try:
        with open(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def load_manifest(path: str) -> Dict[str, Any]:
    try:
        with open(path) as handle:
            manifest = json.load(handle)
    except OSError as error:
        raise ManifestError(f"cannot read manifest {path}: {error.strerror}") from error
    except ValueError as error:
        raise ManifestError(f"manifest {path} is not valid JSON: {error}") from error
    validate_manifest(manifest)
    return manifest


def _stat_entry(file_stat: os.stat_result) -> Dict[str, int]:
    return {
        "size": file_stat.st_size,
        "mtime_ns": file_stat.st_mtime_ns,
        "ctime_ns": file_stat.st_ctime_ns,
        "inode": file_stat.st_ino,
    }


def make_stamp(manifest: Dict[str, Any], entries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "manifest_digest": manifest_digest(manifest),
        "verified_at": int(time.time()),
        "files": entries,
    }


# --- verification ----------------------------------------------------------------------------


def verify_directory(
    directory: str,
    manifest: Dict[str, Any],
    mode: str = "stamp",
    stamp: Optional[Dict[str, Any]] = None,
    workers: int = DEFAULT_HASH_WORKERS,
) -> VerifyResult:
    """Check a directory against a manifest: missing, extra, wrong size, wrong sha256.

    With mode "stamp", a file whose size, mtime_ns, ctime_ns and inode equal the stamp's record
    for the same expected sha256 is taken as verified without reading it; any change re-hashes it.
    With mode "full" every file is hashed. Mode "size" hashes nothing and checks presence and size.
    """
    if mode not in ("stamp", "full", "size"):
        raise ValueError(f"mode must be 'stamp', 'full' or 'size', got {mode!r}")
    validate_manifest(manifest, sizes_only=mode == "size")
    started = time.monotonic()
    stamped = ((stamp or {}).get("files") or {}) if mode == "stamp" else {}
    expected = {entry["path"]: entry for entry in manifest["files"]}
    bad: List[BadFile] = []
    bad_stats: Dict[str, Dict[str, int]] = {}
    verified: Dict[str, Dict[str, Any]] = {}
    to_hash: Dict[str, Tuple[str, Dict[str, Any], Dict[str, int]]] = {}
    from_stamp = 0

    for relative, entry in expected.items():
        absolute = os.path.join(directory, *relative.split("/"))
        try:
            file_stat = os.stat(absolute)
        except FileNotFoundError:
            bad.append(BadFile(relative, "missing", expected_size=entry["size"]))
            continue
        current = _stat_entry(file_stat)
        if not stat.S_ISREG(file_stat.st_mode):
            bad.append(BadFile(relative, "not_a_file", expected_size=entry["size"]))
            bad_stats[relative] = current
        elif file_stat.st_size != entry["size"]:
            bad.append(BadFile(relative, "size_mismatch", expected_size=entry["size"], actual_size=file_stat.st_size))
            bad_stats[relative] = current
        elif mode == "size":
            continue  # presence and size only, for a disk preflight before the hashes are known
        elif stamped.get(relative) == dict(current, sha256=entry["sha256"]):
            verified[relative] = stamped[relative]
            from_stamp += 1
        else:
            to_hash[absolute] = (relative, entry, current)

    hashes = hash_files(list(to_hash), workers)
    for absolute, file_hash in hashes.items():
        relative, entry, before = to_hash[absolute]
        digest = file_hash.sha256
        after = _stat_entry(os.stat(absolute))
        if digest != entry["sha256"]:
            bad.append(
                BadFile(
                    relative,
                    "sha256_mismatch",
                    expected_size=entry["size"],
                    actual_size=after["size"],
                    expected_sha256=entry["sha256"],
                    actual_sha256=digest,
                )
            )
            bad_stats[relative] = after
        elif after == before:
            # Only a file that did not change while it was read can be trusted by a later run.
            verified[relative] = dict(after, sha256=digest)

    for relative in list_files(directory):
        if relative not in expected:
            bad.append(BadFile(relative, "extra"))

    bad.sort(key=lambda item: item.path)
    return VerifyResult(
        ok=not bad,
        bad_files=bad,
        files_checked=len(expected),
        files_hashed=len(hashes),
        bytes_hashed=sum(file_hash.size for file_hash in hashes.values()),
        files_from_stamp=from_stamp,
        stamp_used=from_stamp > 0,
        manifest_digest=manifest_digest(manifest),
        seconds=time.monotonic() - started,
        stamp_entries=verified,
        bad_file_stats=bad_stats,
    )


def mark_updates(bad_files: List[BadFile], previous: Optional[Dict[str, Any]], manifest: Dict[str, Any]) -> None:
    """Tell a file a new manifest replaces apart from a damaged one.

    A file counts as an update when the node's previous manifest (another version) listed it with
    other content, or listed an extra file that the new version dropped. Everything else that is
    not simply missing is damage, or something this role did not put there.
    """
    before = {}
    if previous and canonical_json(previous) != canonical_json(manifest):
        before = {entry["path"]: entry["sha256"] for entry in previous.get("files", [])}
    now = {entry["path"]: entry["sha256"] for entry in manifest["files"]}
    for bad in bad_files:
        if bad.reason == "missing":
            continue
        bad.update = bad.path in before and before[bad.path] != now.get(bad.path)


def free_bytes(path: str) -> int:
    """Bytes available to unprivileged writers on the filesystem that holds path (or would hold it)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    usage = os.statvfs(probe)
    return usage.f_bavail * usage.f_frsize


def bytes_to_fetch(bad_files: List[BadFile], manifest: Dict[str, Any]) -> int:
    """Bytes of the files a node must receive: the missing and the mismatched ones."""
    sizes = {entry["path"]: entry["size"] for entry in manifest["files"]}
    return sum(sizes.get(bad.path, 0) for bad in bad_files if bad.reason != "extra")


def summarize_bad_files(bad_files: List[BadFile], limit: int = 20) -> str:
    lines = [bad.describe() for bad in bad_files[:limit]]
    if len(bad_files) > limit:
        lines.append(f"... and {len(bad_files) - limit} more")
    return "; ".join(lines)


# --- what the modules do on a node -------------------------------------------------------------


def resolve_manifest(manifest: Any, manifest_path: str, sizes_only: bool = False) -> Tuple[Dict[str, Any], bool]:
    """The manifest to verify against and whether it must be written to manifest_path.

    manifest may be a mapping (given by the play), a path to a manifest file, or None (use the
    manifest already stored beside the weights).
    """
    if isinstance(manifest, dict):
        validate_manifest(manifest, sizes_only=sizes_only)
        on_disk = read_json(manifest_path)
        return manifest, on_disk is None or canonical_json(on_disk) != canonical_json(manifest)
    return load_manifest(manifest or manifest_path), False


def verify_and_stamp(
    directory: str,
    manifest: Dict[str, Any],
    stamp_path: str,
    mode: str = "stamp",
    workers: int = DEFAULT_HASH_WORKERS,
    write: bool = True,
) -> Tuple[VerifyResult, bool]:
    """Verify directory against manifest and record what verified; returns (result, stamp written).

    The stamp is rewritten only when its entries change, so a run that hashed nothing writes nothing.
    It is written after a failed verify too: the files that did verify need no hashing next time.
    """
    stamp = read_json(stamp_path)
    result = verify_directory(directory, manifest, mode=mode, stamp=stamp, workers=workers)
    digest = manifest_digest(manifest)
    unchanged = (
        stamp is not None and stamp.get("manifest_digest") == digest and stamp.get("files") == result.stamp_entries
    )
    if not write or unchanged or not os.path.isdir(directory):
        return result, False
    write_json_atomic(stamp_path, make_stamp(manifest, result.stamp_entries))
    return result, True


def remove_extra_files(directory: str, bad_files: List[BadFile]) -> List[str]:
    """Delete the files verify found that the manifest does not list; returns their paths."""
    removed = []
    for bad in bad_files:
        if bad.reason == "extra":
            os.unlink(os.path.join(directory, *bad.path.split("/")))
            removed.append(bad.path)
    return removed
