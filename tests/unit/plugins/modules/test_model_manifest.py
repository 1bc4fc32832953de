# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""model_manifest run by ansible-core itself on localhost, on a real model directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from adhoc import run_module as run_adhoc
from hub_fixture_server import write_model_dir

from ansible_collections.llmserve.cluster.plugins.module_utils._weights_manifest import MANIFEST_NAME, STAMP_NAME


def run_module(arguments: dict, check: bool = False) -> dict:
    return run_adhoc("model_manifest", arguments, check)


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "weights"
    write_model_dir(str(directory), [2 * 1024 * 1024, 1024 * 1024])
    return str(directory)


def test_build_then_verify_then_verify_from_stamp(model_dir):
    built = run_module({"path": model_dir, "state": "built"})
    assert not built["_failed"] and built["changed"] and built["file_count"] == 5
    assert os.path.exists(os.path.join(model_dir, MANIFEST_NAME))

    rebuilt = run_module({"path": model_dir, "state": "built"})
    assert not rebuilt["changed"] and rebuilt["bytes_hashed"] == 0, "an unchanged directory is hashed once"

    # Building hashed every file once: verifying right after reads nothing.
    first = run_module({"path": model_dir})
    assert first["ok"] and first["stamp_used"] and first["files_hashed"] == 0 and not first["changed"]
    assert first["manifest_digest"] == built["manifest_digest"]
    full = run_module({"path": model_dir, "verify": "full"})
    assert full["ok"] and full["files_hashed"] == 5 and full["bytes_hashed"] == built["total_size"]
    assert full["free_bytes"] > 0 and full["bytes_to_fetch"] == 0


def test_flipped_byte_fails_naming_file_and_host(model_dir):
    run_module({"path": model_dir, "state": "built"})
    run_module({"path": model_dir})
    shard = os.path.join(model_dir, "model-00001-of-00002.safetensors")
    with open(shard, "r+b") as handle:
        handle.seek(100000)
        byte = handle.read(1)
        handle.seek(100000)
        handle.write(bytes([byte[0] ^ 0x80]))
    result = run_module({"path": model_dir})
    assert result["_failed"]
    assert f"on {socket.gethostname()}" in result["msg"]
    assert "model-00001-of-00002.safetensors: sha256" in result["msg"]
    assert [bad["path"] for bad in result["bad_files"]] == ["model-00001-of-00002.safetensors"]


def test_manifest_given_as_mapping_is_written_and_check_mode_writes_nothing(model_dir, tmp_path):
    built = run_module({"path": model_dir, "state": "built"})
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(model_dir):
        if not name.startswith(".llmserve"):
            (copy / name).write_bytes(Path(model_dir, name).read_bytes())
    checked = run_module({"path": str(copy), "manifest": built["manifest"]}, check=True)
    assert checked["ok"] and checked["changed"]
    assert not (copy / MANIFEST_NAME).exists() and not (copy / STAMP_NAME).exists()
    applied = run_module({"path": str(copy), "manifest": built["manifest"]})
    assert applied["ok"] and applied["changed"] and (copy / MANIFEST_NAME).exists()
    again = run_module({"path": str(copy), "manifest": built["manifest"]})
    assert not again["changed"] and again["stamp_used"]


def test_extra_file_is_reported_then_removed_on_request(model_dir):
    run_module({"path": model_dir, "state": "built"})
    Path(model_dir, "stray.bin").write_bytes(b"left over from another revision")
    reported = run_module({"path": model_dir, "fail_on_mismatch": False})
    assert not reported["_failed"] and not reported["ok"]
    assert reported["bad_files"] == [{"path": "stray.bin", "reason": "extra", "update": False}]
    repaired = run_module({"path": model_dir, "remove_extra": True})
    assert repaired["ok"] and repaired["removed"] == ["stray.bin"] and repaired["changed"]
    assert not Path(model_dir, "stray.bin").exists()
