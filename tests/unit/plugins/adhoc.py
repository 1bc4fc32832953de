# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run one of the collection's modules through ansible-core itself (`ansible localhost -m ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COLLECTIONS_ROOT = Path(__file__).resolve().parents[3] / ".build" / "collections"
ANSIBLE = str(Path(sys.executable).parent / "ansible")


def run_module(module: str, arguments: dict, check: bool = False) -> dict:
    """The module's result on localhost, with ``_failed`` telling whether Ansible reported a failure."""
    command = [ANSIBLE, "localhost", "-c", "local", "-m", f"llmserve.cluster.{module}", "-a", json.dumps(arguments)]
    command += ["-e", f"ansible_python_interpreter={sys.executable}", "-o"]
    if check:
        command.append("--check")
    environment = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
    )
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120, check=False)
    # One-line output: "localhost | SUCCESS => {...}" or "localhost | FAILED! => {...}"
    status, _separator, payload = completed.stdout.partition(" => ")
    assert payload, completed.stdout + completed.stderr
    result = json.loads(payload)
    result["_failed"] = "FAILED" in status
    return result
