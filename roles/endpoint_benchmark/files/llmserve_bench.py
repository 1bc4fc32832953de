# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a command with the endpoint's API key in OPENAI_API_KEY, read here from its root-only file.

    llmserve_bench.py --api-key-file /etc/llmserve/api-key -- vllm bench serve ...

`vllm bench serve` sends OPENAI_API_KEY as the bearer token. Reading the file on the node keeps the
key off every command line, out of Ansible's variables and out of its logs.
"""

from __future__ import annotations

import os
import sys


def main(argv):
    if len(argv) < 4 or argv[0] != "--api-key-file" or argv[2] != "--":
        raise SystemExit("usage: llmserve_bench.py --api-key-file PATH -- COMMAND [ARGUMENT ...]")
    with open(argv[1], encoding="utf-8") as handle:
        api_key = handle.read().strip()
    if not api_key:
        raise SystemExit(f"{argv[1]} is empty: the endpoint would refuse every request")
    command = argv[3:]
    os.execvpe(command[0], command, dict(os.environ, OPENAI_API_KEY=api_key))


if __name__ == "__main__":
    main(sys.argv[1:])
