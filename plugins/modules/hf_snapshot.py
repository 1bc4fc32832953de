#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: hf_snapshot
short_description: Download a Hugging Face model repository at a pinned revision and return its manifest
version_added: 0.1.0
description:
  - Downloads O(repo_id) at O(revision) into O(path) with C(huggingface_hub.snapshot_download), which writes each file
    under C(PATH/.cache/huggingface/download/) and renames it into place when complete, and skips files already
    downloaded for that commit.
  - Builds a manifest of sizes and sha256 from the hub's LFS metadata, hashing once the small files the hub only gives a
    git blob id for (and checking them against it), and writes it to C(PATH/.llmserve-manifest.json).
  - When O(revision) is a commit SHA and the stored manifest already lists that commit with every file present at its
    size, the hub is not contacted.
  - Uses hf_xet when it is installed. Needs C(huggingface_hub) in the Python that runs the module.
author: llmserve.cluster contributors (@llmserve)
requirements:
  - huggingface_hub >= 0.34
attributes:
  check_mode:
    support: full
    description: Reports whether a download would be needed from the stored manifest only; downloads nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  repo_id:
    description: Repository id on the hub, for example C(Qwen/Qwen2.5-7B-Instruct).
    type: str
    required: true
  revision:
    description:
      - Commit SHA (recommended), branch or tag. A branch or tag gives a warning, since it can move between runs.
    type: str
    default: main
  path:
    description: Directory the files are written to.
    type: path
    required: true
  token:
    description: Hugging Face access token for gated or private repositories. Never logged.
    type: str
  endpoint:
    description: Hub endpoint, for a mirror or a local test server. Defaults to C(HF_ENDPOINT) or the public hub.
    type: str
  allow_patterns:
    description: Only files matching one of these glob patterns are downloaded.
    type: list
    elements: str
  ignore_patterns:
    description: Files matching one of these glob patterns are not downloaded.
    type: list
    elements: str
  max_workers:
    description: Files huggingface_hub downloads in parallel (its C(max_workers)).
    type: int
    default: 8
  progress_path:
    description: JSON file rewritten every few seconds with bytes done, rate and ETA.
    type: path
  hash_workers:
    description: Files hashed in parallel after the download.
    type: int
    default: 4
  list_only:
    description:
      - Ask the hub for the file list only, download nothing, and return RV(total_size), RV(bytes_to_fetch) and
        RV(free_bytes) for a disk preflight.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Download the model once on the seed node
  llmserve.cluster.hf_snapshot:
    repo_id: Qwen/Qwen2.5-7B-Instruct
    revision: a09a35458c702b33eeacc393d103063234e8bc28
    path: /models/Qwen2.5-7B-Instruct
    token: "{{ model_weights_hf_token | default(omit, true) }}"
  no_log: true
"""

RETURN = r"""
commit:
  description: The commit the revision resolved to.
  returned: success
  type: str
  sample: a09a35458c702b33eeacc393d103063234e8bc28
manifest:
  description: Files with size and sha256, as stored beside the weights.
  returned: success
  type: dict
  sample:
    format: 1
    source: {kind: hub, repo: Qwen/Qwen2.5-7B-Instruct, revision: a09a35458c702b33eeacc393d103063234e8bc28}
    files: [{path: config.json, size: 663, sha256: "a1b2..."}]
    total_size: 15231271864
downloaded:
  description: Whether any file was fetched or replaced.
  returned: success
  type: bool
bytes_hashed:
  description: Bytes hashed to complete the manifest.
  returned: success and not O(list_only)
  type: int
total_size:
  description: Bytes of the files to download.
  returned: O(list_only)
  type: int
bytes_to_fetch:
  description: Bytes of the files not yet present at their size under O(path).
  returned: O(list_only)
  type: int
free_bytes:
  description: Bytes free for writing on the file system that holds O(path).
  returned: O(list_only)
  type: int
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.llmserve.cluster.plugins.module_utils._hub_download import (
    HubDownloadError,
    download_snapshot,
    stored_manifest_if_complete,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import ManifestError, revision_warning


def main():
    module = AnsibleModule(
        argument_spec=dict(
            repo_id=dict(type="str", required=True),
            revision=dict(type="str", default="main"),
            path=dict(type="path", required=True),
            token=dict(type="str", no_log=True),
            endpoint=dict(type="str"),
            allow_patterns=dict(type="list", elements="str"),
            ignore_patterns=dict(type="list", elements="str"),
            max_workers=dict(type="int", default=8),
            progress_path=dict(type="path"),
            hash_workers=dict(type="int", default=4),
            list_only=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    warning = revision_warning(params["revision"])
    if warning:
        module.warn(warning)
    if module.check_mode and not params["list_only"]:
        stored = stored_manifest_if_complete(params["path"], params["repo_id"], params["revision"])
        module.exit_json(changed=stored is None, commit=params["revision"], manifest=stored, downloaded=False)
    try:
        import huggingface_hub  # noqa: F401 - only to report a missing library clearly
    except ImportError:
        module.fail_json(msg=missing_required_lib("huggingface_hub"))
    try:
        result = download_snapshot(
            params["repo_id"],
            params["path"],
            revision=params["revision"],
            token=params["token"],
            endpoint=params["endpoint"],
            allow_patterns=params["allow_patterns"],
            ignore_patterns=params["ignore_patterns"],
            max_workers=params["max_workers"],
            progress_path=params["progress_path"],
            hash_workers=params["hash_workers"],
            list_only=params["list_only"],
        )
    except (HubDownloadError, ManifestError) as error:
        module.fail_json(msg=str(error))
    except Exception as error:  # huggingface_hub raises many HTTP and OS error types; name the repo in any of them
        module.fail_json(
            msg=f"downloading {params['repo_id']}@{params['revision']} failed: {type(error).__name__}: {error}"
        )
    result.pop("warnings", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
