#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_manifest
short_description: Verify model weights against a manifest of sizes and sha256, or build that manifest
version_added: 0.1.0
description:
  - With O(state=verified), checks every file under O(path) against a manifest and fails naming each missing,
    extra, wrongly sized or corrupted file.
  - A stamp beside the weights records, per file, the verified sha256 with the file's size, mtime, ctime and inode,
    so a re-run hashes only files that changed. O(verify=full) hashes everything again.
  - With O(state=built), hashes every file under O(path) and writes the manifest beside the weights. Files unchanged
    since the last build (by the stamp) are not read again.
  - Also reports the free space on the file system of O(path) and the bytes the node lacks, for a disk preflight.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Verifies or hashes as usual, but writes no manifest or stamp and removes nothing.
  diff_mode:
    support: none
    description: Reports the bad files instead.
options:
  path:
    description: Directory that holds the model files.
    type: path
    required: true
  state:
    description:
      - V(verified) checks O(path) against the manifest; V(built) computes the manifest from O(path).
    type: str
    choices: [verified, built]
    default: verified
  manifest:
    description:
      - For O(state=verified), the manifest to check against, as a mapping or as the path of a manifest file on the
        node. A mapping is written to O(manifest_path) when that file differs.
      - Defaults to the manifest stored at O(manifest_path).
    type: raw
  manifest_path:
    description: Where the manifest is stored beside the weights. Defaults to C(PATH/.llmserve-manifest.json).
    type: path
  stamp_path:
    description: Where the verification stamp is kept. Defaults to C(PATH/.llmserve-verified.json).
    type: path
  verify:
    description:
      - V(stamp) trusts files whose size, mtime, ctime and inode equal the stamp's record; V(full) re-hashes every file.
      - V(size) checks only presence and sizes, hashes nothing and writes nothing; it accepts a draft manifest whose
        small files have no sha256 yet (as M(llmserve.cluster.hf_snapshot) lists them before a download), for a disk
        preflight.
    type: str
    choices: [stamp, full, size]
    default: stamp
  source:
    description: For O(state=built), where the files came from, recorded in the manifest.
    type: dict
    default: {}
    suboptions:
      kind:
        description: >-
          Which model source the files came from (as llmserve_model_source names it), recorded in the manifest.
        type: str
        choices: [hub, controller_dir, shared_path]
        default: controller_dir
      repo:
        description: Hugging Face repository id, when known.
        type: str
      revision:
        description: Revision of that repository, when known.
        type: str
  fail_on_mismatch:
    description: Fail when a file does not match. With V(false), the bad files are only returned.
    type: bool
    default: true
  remove_extra:
    description: Delete files under O(path) that the manifest does not list, then report them as removed.
    type: bool
    default: false
  hash_workers:
    description: Files hashed in parallel. More helps on fast NVMe and network storage; fewer leaves CPU to other work.
    type: int
    default: 4
"""

EXAMPLES = r"""
- name: Verify the weights on every node (hashes only files changed since the last verify)
  llmserve.cluster.model_manifest:
    path: /models/Qwen2.5-7B-Instruct
    manifest: "{{ model_weights_manifest }}"

- name: Re-hash everything
  llmserve.cluster.model_manifest:
    path: /models/Qwen2.5-7B-Instruct
    verify: full

- name: Build the manifest of a directory once
  llmserve.cluster.model_manifest:
    path: /srv/models/my-finetune
    state: built
    source:
      kind: controller_dir
"""

RETURN = r"""
ok:
  description: Whether every file matched the manifest.
  returned: always
  type: bool
bad_files:
  description: Each file that did not match, with the reason.
  returned: always
  type: list
  elements: dict
  sample:
    - {path: model-00002-of-00004.safetensors, reason: sha256_mismatch, expected_size: 4976698672,
       actual_size: 4976698672, expected_sha256: "3f2a...", actual_sha256: "9c1e...", update: false}
    - {path: stray.bin, reason: extra, update: false}
  contains:
    reason:
      description: One of V(missing), V(extra), V(not_a_file), V(size_mismatch), V(sha256_mismatch).
      type: str
    update:
      description:
        - For files that are not missing, V(true) when the manifest previously stored on the node (another version)
          listed the file with other content, so a new version replaces it; V(false) when it is damage or unknown.
      type: bool
bad_file_stats:
  description: Size, mtime_ns, ctime_ns and inode of each bad file when it was checked.
  returned: O(state=verified)
  type: dict
bytes_hashed:
  description: Bytes read and hashed by this run.
  returned: always
  type: int
files_hashed:
  description: Files read and hashed by this run.
  returned: always
  type: int
files_from_stamp:
  description: Files taken as verified from the stamp without reading them.
  returned: O(state=verified)
  type: int
stamp_used:
  description: Whether the stamp spared hashing any file.
  returned: O(state=verified)
  type: bool
stamp_written:
  description: Whether the stamp was written.
  returned: O(state=verified)
  type: bool
removed:
  description: Extra files deleted because of O(remove_extra).
  returned: O(state=verified)
  type: list
  elements: str
manifest_digest:
  description: sha256 of the manifest's canonical JSON; equal on nodes that hold the same manifest.
  returned: always
  type: str
total_size:
  description: Bytes listed by the manifest.
  returned: always
  type: int
file_count:
  description: Files listed by the manifest.
  returned: always
  type: int
bytes_to_fetch:
  description: Bytes of the missing and mismatched files, which the node must receive.
  returned: O(state=verified)
  type: int
free_bytes:
  description: Bytes free for writing on the file system that holds O(path).
  returned: O(state=verified)
  type: int
manifest:
  description: The manifest that was built.
  returned: O(state=built)
  type: dict
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import (
    MANIFEST_NAME,
    STAMP_NAME,
    ManifestError,
    build_manifest_from_directory,
    bytes_to_fetch,
    canonical_json,
    free_bytes,
    make_stamp,
    manifest_digest,
    mark_updates,
    read_json,
    remove_extra_files,
    resolve_manifest,
    summarize_bad_files,
    verify_and_stamp,
    write_json_atomic,
)


def build(module, path, manifest_path, stamp_path):
    if not os.path.isdir(path):
        module.fail_json(msg=f"{path} is not a directory on {socket.gethostname()}")
    stamp = read_json(stamp_path)
    manifest, bytes_hashed, entries = build_manifest_from_directory(
        path, module.params["source"], workers=module.params["hash_workers"], stamp=stamp
    )
    on_disk = read_json(manifest_path)
    changed = on_disk is None or canonical_json(on_disk) != canonical_json(manifest)
    if not module.check_mode:
        if changed:
            write_json_atomic(manifest_path, manifest)
        if stamp is None or stamp.get("files") != entries or stamp.get("manifest_digest") != manifest_digest(manifest):
            write_json_atomic(stamp_path, make_stamp(manifest, entries))
    module.exit_json(
        changed=changed,
        ok=True,
        bad_files=[],
        manifest=manifest,
        manifest_digest=manifest_digest(manifest),
        bytes_hashed=bytes_hashed,
        files_hashed=len(manifest["files"]) - len([path for path in entries if path in (stamp or {}).get("files", {})]),
        total_size=manifest["total_size"],
        file_count=len(manifest["files"]),
    )


def verify(module, path, manifest_path, stamp_path):
    sizes_only = module.params["verify"] == "size"
    manifest, manifest_differs = resolve_manifest(module.params["manifest"], manifest_path, sizes_only=sizes_only)
    previous = read_json(manifest_path) if manifest_differs else None
    writing = not module.check_mode and not sizes_only
    manifest_differs = manifest_differs and not sizes_only
    if manifest_differs and writing:
        os.makedirs(path, exist_ok=True)
        write_json_atomic(manifest_path, manifest)
    result, stamp_written = verify_and_stamp(
        path,
        manifest,
        stamp_path,
        mode=module.params["verify"],
        workers=module.params["hash_workers"],
        write=writing,
    )
    mark_updates(result.bad_files, previous, manifest)
    removed = []
    bad_files = result.bad_files
    if module.params["remove_extra"] and writing:
        removed = remove_extra_files(path, bad_files)
        bad_files = [bad for bad in bad_files if bad.reason != "extra"]
    outcome = dict(
        result.to_dict(),
        ok=not bad_files,
        bad_files=[bad.to_dict() for bad in bad_files],
        bad_file_stats=result.bad_file_stats,
        stamp_written=stamp_written,
        removed=removed,
        total_size=manifest["total_size"],
        file_count=len(manifest["files"]),
        bytes_to_fetch=bytes_to_fetch(bad_files, manifest),
        free_bytes=free_bytes(path),
        changed=manifest_differs or bool(removed),
    )
    if bad_files and module.params["fail_on_mismatch"]:
        module.fail_json(
            msg=(
                f"{len(bad_files)} of the model files under {path} on {socket.gethostname()} do not match the "
                f"manifest: {summarize_bad_files(bad_files)}"
            ),
            **outcome,
        )
    module.exit_json(**outcome)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["verified", "built"], default="verified"),
            manifest=dict(type="raw"),
            manifest_path=dict(type="path"),
            stamp_path=dict(type="path"),
            verify=dict(type="str", choices=["stamp", "full", "size"], default="stamp"),
            source=dict(
                type="dict",
                default={},
                options=dict(
                    kind=dict(type="str", choices=["hub", "controller_dir", "shared_path"], default="controller_dir"),
                    repo=dict(type="str"),
                    revision=dict(type="str"),
                ),
            ),
            fail_on_mismatch=dict(type="bool", default=True),
            remove_extra=dict(type="bool", default=False),
            hash_workers=dict(type="int", default=4),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    manifest_path = module.params["manifest_path"] or os.path.join(path, MANIFEST_NAME)
    stamp_path = module.params["stamp_path"] or os.path.join(path, STAMP_NAME)
    try:
        if module.params["state"] == "built":
            build(module, path, manifest_path, stamp_path)
        else:
            verify(module, path, manifest_path, stamp_path)
    except ManifestError as error:
        module.fail_json(msg=str(error))


if __name__ == "__main__":
    main()
