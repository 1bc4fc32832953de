# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A local stand-in for the Hugging Face Hub that serves one directory as one model repository.

It answers the routes huggingface_hub 2.x calls for ``HfApi.model_info`` and ``snapshot_download``
(read from huggingface_hub's source: hf_api.py ``model_info`` / ``_iter_repo_tree_pages``,
file_download.py ``get_hf_file_metadata`` / ``http_get``), with the headers it checks:

- ``GET /api/models/{repo}/revision/{rev}[?blobs=True]``: ``{id, sha, siblings}``; with blobs, each sibling
  has ``size``, ``blobId`` and, for LFS files, ``lfs: {size, sha256, pointerSize}``.
- ``GET /api/models/{repo}/tree/{rev}?recursive=True``: ``[{type, path, oid, size, lfs: {oid, size, pointerSize}}]``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a small (git) file answers 200 with ``X-Repo-Commit``, ``ETag`` (its
  git blob id) and ``Content-Length``. An LFS file answers 302 to a second origin (the "CDN"), carrying
  ``X-Repo-Commit``, ``X-Linked-Etag`` (its sha256) and ``X-Linked-Size``, as the real Hub does.
- ``GET /lfs/{sha256}`` on the CDN origin: the bytes, with ``Range`` support (206 + ``Content-Range``).

``drop_once`` makes the first GET of a file stop half-way through its body and close the
connection, to exercise huggingface_hub's resume with a ``Range`` request; ``stall_once`` holds it
half-way until ``released`` is set, so a test can kill the downloading process mid-file. ``requests`` records
every request (method, path, Range and whether an Authorization header came along).

Run it by hand (e.g. for the sandbox's seed node): ``python hub_fixture_server.py DIR --repo org/name``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Set, Tuple
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5", ".onnx")
LFS_POINTER_SIZE = 134


@dataclass
class RepoFile:
    path: str
    absolute: str
    size: int
    git_blob_id: str
    sha256: Optional[str]  # set for LFS files only, as on the Hub


@dataclass
class HubState:
    repo_id: str
    files: Dict[str, RepoFile]
    commit: str
    branches: Dict[str, str]
    drop_once: Set[str] = field(default_factory=set)
    stall_once: Set[str] = field(default_factory=set)
    released: threading.Event = field(default_factory=threading.Event)
    requests: List[Dict[str, object]] = field(default_factory=list)
    cdn_origin: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


def _digests(path: str) -> Tuple[str, str, int]:
    size = os.path.getsize(path)
    git = hashlib.sha1(b"blob %d\0" % size)
    sha256 = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            git.update(chunk)
            sha256.update(chunk)
    return git.hexdigest(), sha256.hexdigest(), size


def load_repo(directory: str, repo_id: str) -> HubState:
    files = {}
    for root, _unused, names in os.walk(directory):
        for name in names:
            absolute = os.path.join(root, name)
            relative = os.path.relpath(absolute, directory).replace(os.sep, "/")
            git_blob_id, sha256, size = _digests(absolute)
            is_lfs = relative.endswith(LFS_SUFFIXES) or size > 10 * 1024 * 1024
            files[relative] = RepoFile(relative, absolute, size, git_blob_id, sha256 if is_lfs else None)
    listing = "".join(f"{path}\0{files[path].git_blob_id}\n" for path in sorted(files))
    commit = hashlib.sha1(listing.encode()).hexdigest()
    return HubState(repo_id=repo_id, files=files, commit=commit, branches={"main": commit})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    serves_cdn = False

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # --- plumbing ---
    def _record(self) -> None:
        with self.state.lock:
            self.state.requests.append(
                {
                    "origin": "cdn" if self.serves_cdn else "hub",
                    "method": self.command,
                    "path": unquote(urlsplit(self.path).path),
                    "range": self.headers.get("Range"),
                    "authorization": self.headers.get("Authorization") is not None,
                }
            )

    def _send(self, status: int, headers: Dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, document: object) -> None:
        body = json.dumps(document).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}, body)

    def _resolve_revision(self, revision: str) -> Optional[str]:
        revision = unquote(revision)
        if revision == self.state.commit:
            return revision
        return self.state.branches.get(revision)

    # --- routes ---
    def do_HEAD(self):
        self._record()
        self._route()

    def do_GET(self):
        self._record()
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        if self.serves_cdn:
            if path.startswith("/lfs/"):
                return self._serve_lfs(path[len("/lfs/") :])
            return self._error(404, "EntryNotFound", "no such object")
        repo = self.state.repo_id
        api_prefix = f"/api/models/{repo}"
        if path.startswith(api_prefix + "/revision/"):
            return self._model_info(path[len(api_prefix + "/revision/") :])
        if path == api_prefix:
            return self._model_info("main")
        if path.startswith(api_prefix + "/tree/"):
            return self._tree(path[len(api_prefix + "/tree/") :].split("/", 1)[0])
        if path.startswith(f"/{repo}/resolve/"):
            revision, _unused, filename = path[len(f"/{repo}/resolve/") :].partition("/")
            return self._resolve(revision, unquote(filename))
        if path.startswith("/api/models/") or path.count("/resolve/"):
            return self._error(404, "RepoNotFound", "Repository not found")
        return self._error(404, "EntryNotFound", "not found")

    def _model_info(self, revision: str) -> None:
        commit = self._resolve_revision(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = "blobs=true" in (urlsplit(self.path).query or "").lower()
        siblings = []
        for repo_file in sorted(self.state.files.values(), key=lambda item: item.path):
            sibling: Dict[str, object] = {"rfilename": repo_file.path}
            if blobs:
                sibling["size"] = repo_file.size
                sibling["blobId"] = repo_file.git_blob_id
                if repo_file.sha256 is not None:
                    sibling["lfs"] = {
                        "size": repo_file.size,
                        "sha256": repo_file.sha256,
                        "pointerSize": LFS_POINTER_SIZE,
                    }
            siblings.append(sibling)
        self._json({"id": self.state.repo_id, "modelId": self.state.repo_id, "sha": commit, "private": False,
                    "siblings": siblings})  # fmt: skip

    def _tree(self, revision: str) -> None:
        commit = self._resolve_revision(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        entries = []
        for repo_file in sorted(self.state.files.values(), key=lambda item: item.path):
            entry: Dict[str, object] = {"type": "file", "path": repo_file.path, "oid": repo_file.git_blob_id}
            entry["size"] = repo_file.size
            if repo_file.sha256 is not None:
                entry["lfs"] = {"oid": repo_file.sha256, "size": repo_file.size, "pointerSize": LFS_POINTER_SIZE}
            entries.append(entry)
        self._json(entries)

    def _resolve(self, revision: str, filename: str) -> None:
        commit = self._resolve_revision(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        repo_file = self.state.files.get(filename)
        if repo_file is None:
            return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        if repo_file.sha256 is not None:
            return self._send(
                302,
                {
                    "Location": f"{self.state.cdn_origin}/lfs/{repo_file.sha256}",
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{repo_file.sha256}"',
                    "X-Linked-Size": str(repo_file.size),
                    "ETag": f'W/"{repo_file.git_blob_id}"',
                },
            )
        self._serve_bytes(repo_file, {"X-Repo-Commit": commit, "ETag": f'"{repo_file.git_blob_id}"'})

    def _serve_lfs(self, sha256: str) -> None:
        for repo_file in self.state.files.values():
            if repo_file.sha256 == sha256:
                return self._serve_bytes(repo_file, {"ETag": f'"{sha256}"'})
        return self._error(404, "EntryNotFound", "no such object")

    def _serve_bytes(self, repo_file: RepoFile, headers: Dict[str, str]) -> None:
        start, end = 0, repo_file.size - 1
        status = 200
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes="):
            first, _unused, last = requested[len("bytes=") :].partition("-")
            start = int(first)
            end = int(last) if last else repo_file.size - 1
            status = 206
            headers = dict(headers, **{"Content-Range": f"bytes {start}-{end}/{repo_file.size}"})
        length = end - start + 1
        headers = dict(headers, **{"Content-Length": str(length), "Accept-Ranges": "bytes"})
        self._send(status, headers)
        if self.command == "HEAD":
            return
        drop = stall = False
        with self.state.lock:
            if repo_file.path in self.state.drop_once:
                self.state.drop_once.discard(repo_file.path)
                drop = True
            if repo_file.path in self.state.stall_once:
                self.state.stall_once.discard(repo_file.path)
                stall = True
        with open(repo_file.absolute, "rb") as handle:
            handle.seek(start)
            remaining = length // 2 if drop or stall else length
            while remaining > 0:
                chunk = handle.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if stall:
            # Hold the connection half-way, as a slow origin would, until the test lets go.
            self.wfile.flush()
            self.state.released.wait()
            drop = True
        if drop:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


class HubFixture:
    """Two local origins, hub and CDN, serving one directory as repository ``repo_id``."""

    def __init__(self, directory: str, repo_id: str = "llmserve-test/tiny-model", host: str = "127.0.0.1") -> None:
        self.state = load_repo(directory, repo_id)
        hub_handler = type("HubHandler", (_Handler,), {"state": self.state, "serves_cdn": False})
        cdn_handler = type("CdnHandler", (_Handler,), {"state": self.state, "serves_cdn": True})
        self._hub = ThreadingHTTPServer((host, 0), hub_handler)
        self._cdn = ThreadingHTTPServer((host, 0), cdn_handler)
        self._hub.daemon_threads = self._cdn.daemon_threads = True
        self.endpoint = f"http://{host}:{self._hub.server_address[1]}"
        self.state.cdn_origin = f"http://{host}:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=server.serve_forever, daemon=True) for server in (self._hub, self._cdn)
        ]

    @property
    def commit(self) -> str:
        return self.state.commit

    def __enter__(self) -> HubFixture:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.state.released.set()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--repo", default="llmserve-test/tiny-model")
    parser.add_argument("--host", default="127.0.0.1")
    arguments = parser.parse_args()
    with HubFixture(arguments.directory, arguments.repo, arguments.host) as fixture:
        print(json.dumps({"endpoint": fixture.endpoint, "repo": arguments.repo, "commit": fixture.commit}), flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()


def write_model_dir(directory: str, shard_sizes: List[int], seed: int = 7) -> Dict[str, int]:
    """Write a small sharded safetensors model laid out like a hub snapshot; returns {path: size}.

    Each shard is a valid safetensors file: an 8-byte little-endian header length, a JSON header
    describing one uint8 tensor, then the tensor's bytes.
    """
    import random

    generator = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    count = len(shard_sizes)
    weight_map = {}
    for index, data_size in enumerate(shard_sizes, start=1):
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        tensor = f"model.layers.{index - 1}.mlp.weight"
        header = json.dumps({tensor: {"dtype": "U8", "shape": [data_size], "data_offsets": [0, data_size]}})
        header_bytes = header.encode().ljust((len(header) + 7) // 8 * 8, b" ")
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(len(header_bytes).to_bytes(8, "little") + header_bytes)
            remaining = data_size
            while remaining:
                block = min(remaining, 1 << 20)
                handle.write(generator.getrandbits(block * 8).to_bytes(block, "little"))
                remaining -= block
        weight_map[tensor] = name
    documents = {
        "config.json": {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_attention_heads": 4,
                        "num_key_value_heads": 2, "num_hidden_layers": count, "vocab_size": 512,
                        "torch_dtype": "bfloat16", "model_type": "llama"},
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2},
        "model.safetensors.index.json": {"metadata": {"total_size": sum(shard_sizes)}, "weight_map": weight_map},
    }  # fmt: skip
    for name, document in documents.items():
        with open(os.path.join(directory, name), "w") as handle:
            json.dump(document, handle, indent=2)
    return {
        os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
        for root, _unused, names in os.walk(directory)
        for name in names
    }
