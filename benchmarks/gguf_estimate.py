# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The GGUF planner's estimate against what llama-server allocated, per device (model, KV cache, compute).

    python3 benchmarks/gguf_estimate.py                       # the sandbox's head (LLMSERVE_SANDBOX_SLOT)
    python3 benchmarks/gguf_estimate.py --plan plan.json --log llama-server.log   # saved files

With no files it reads the plan in effect (/etc/llmserve/plan.json, which the llama_cpp role writes once
llama-server answered) and llama-server's journal from the head of a sandbox deployed with
``-e @tests/integration/llama_cpp/backend.yml``. Prints one line per device (each RPC worker and the head's
``Host``) and field (model weights, KV cache, compute buffer) with the ratio actual/estimate, then a JSON summary;
exits 1 when a field is off by more than --tolerance. The compute buffer is held to --tolerance of itself too,
not only to the comparison's 1 MiB slack, since on the tiny model the whole buffer is 10-14 MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".build" / "collections"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import link_collection  # noqa: E402

link_collection()

from ansible_collections.llmserve.cluster.plugins.module_utils._llama_server_log import (  # noqa: E402
    compare,
    parse_memory,
    render_comparison,
)


def from_sandbox() -> tuple[dict, str]:
    sys.path.insert(0, str(REPO))
    from tests.integration.helpers import sandbox_hosts, ssh

    hosts, key = sandbox_hosts()
    plan = json.loads(ssh(hosts, key, "node1", "cat /etc/llmserve/plan.json").stdout)
    log = ssh(hosts, key, "node1", "journalctl -u llama-server.service --no-pager -o cat").stdout
    return plan, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, help="a saved plan (gguf_plan's `plan`, or /etc/llmserve/plan.json)")
    parser.add_argument("--log", type=Path, help="a saved llama-server log (journalctl -u llama-server -o cat)")
    parser.add_argument("--tolerance", type=float, default=0.10)
    options = parser.parse_args()
    if (options.plan is None) != (options.log is None):
        parser.error("give both --plan and --log, or neither (then the sandbox's head is read)")
    if options.plan is not None:
        plan, log = json.loads(options.plan.read_text(encoding="utf-8")), options.log.read_text(encoding="utf-8")
    else:
        try:
            plan, log = from_sandbox()
        except (OSError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"cannot read the sandbox's head: {error}") from error
    comparison = compare(plan, parse_memory(log), tolerance=options.tolerance)
    print(render_comparison(comparison))
    compute_within = all(
        row["compute_mib"]["actual"] is not None
        and abs(row["compute_mib"]["estimate"] - row["compute_mib"]["actual"])
        <= max(options.tolerance * row["compute_mib"]["actual"], 0.02)
        for row in comparison["devices"].values()
    )
    within = comparison["within"] and compute_within
    print(json.dumps({"within": within, "compute_within": compute_within, "tolerance": comparison["tolerance"]}))
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
