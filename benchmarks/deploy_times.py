# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Deploy times on the cluster-in-a-box, as ratios to the first deploy.

    .venv/bin/python benchmarks/deploy_times.py            # needs root; replaces any running sandbox

1. fresh sandbox of 3 hosts, first ``playbooks/deploy.yml`` (runtime, weights, vLLM, readiness);
2. the same playbook again (idempotent re-run; goal <= 15 s with changed=0);
3. ``up --hosts 4`` and the playbook again (scale-out 3 -> 4; goal <= 0.5x the first deploy).
Prints each time in seconds and as a ratio to the first deploy, plus each run's changed count.
The sandbox's shared wheelhouse and model cache are filled before the clock starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import link_collection  # noqa: E402
from tests.integration.helpers import ansible_playbook, recap  # noqa: E402

SANDBOX = REPO_ROOT / "tests" / "sandbox"
DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"


def sandbox(*arguments: str) -> None:
    subprocess.run([sys.executable, str(SANDBOX / "sandbox.py"), *arguments], check=True, timeout=1800)


def timed_deploy(label: str) -> dict:
    started = time.monotonic()
    run = ansible_playbook(DEPLOY, timeout=3600)
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"{label}: deploy failed\n{run.stdout[-4000:]}")
    changed = sum(counts["changed"] for counts in recap(run.stdout).values())
    return {"run": label, "seconds": round(seconds, 1), "changed": changed}


def main() -> int:
    link_collection()  # a fresh clone has no .build/collections yet
    subprocess.run([sys.executable, str(SANDBOX / "wheelhouse.py")], check=True)
    subprocess.run([sys.executable, str(SANDBOX / "make_tiny_model.py"), "--ensure-venv"], check=True)
    sandbox("down")
    sandbox("up", "--hosts", "3")
    results = [timed_deploy("first deploy (3 hosts)"), timed_deploy("re-run, nothing changed")]
    sandbox("up", "--hosts", "4")
    results.append(timed_deploy("scale-out 3 -> 4 hosts"))
    first = results[0]["seconds"]
    for result in results:
        result["ratio_to_first"] = round(result["seconds"] / first, 3)
        print(json.dumps(result))
    print(
        "\nre-run {:.1f} s ({:.2f}x, changed={}; goal <= 15 s, changed=0); "
        "scale-out {:.1f} s ({:.2f}x; goal <= 0.5x)".format(
            results[1]["seconds"],
            results[1]["ratio_to_first"],
            results[1]["changed"],
            results[2]["seconds"],
            results[2]["ratio_to_first"],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
