# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner's KV-cache estimate against real vLLM startup logs: median and worst error, per release and family.

    python3 benchmarks/planner_accuracy.py            # table, then the summaries
    python3 benchmarks/planner_accuracy.py --check    # exit 1 when the goal (median <= 2%, worst <= 6%) is missed

The logs, their sources and run conditions are tests/unit/fixtures/planner/vllm_kv_observations.yaml; the error
is the planner's KV tokens over the tokens vLLM logged, minus one. No GPU is needed: this runs the planner only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / ".build" / "collections"))
sys.path.insert(0, str(REPO / "tests"))

from conftest import link_collection  # noqa: E402

link_collection()
sys.path.insert(0, str(REPO / "tests" / "unit" / "plugins"))

from planner_observations import rows, summary, table  # noqa: E402

GOAL_MEDIAN = 0.02
GOAL_WORST = 0.06


def _line(label: str, stats: dict) -> str:
    return f"{label:48} {stats['count']:>3} logs  median {stats['median']:>5.1%}  worst {stats['worst']:>5.1%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the median or worst error misses the goal")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON only")
    options = parser.parse_args()
    measured = rows()
    overall = summary(measured)
    by_release = {
        label: summary([r for r in measured if r.release == label]) for label in sorted({r.release for r in measured})
    }
    by_family = {
        family: summary([r for r in measured if r.family == family]) for family in sorted({r.family for r in measured})
    }
    if options.json:
        print(json.dumps({"overall": overall, "release": by_release, "family": by_family}, indent=2))
    else:
        print(table(measured))
        print()
        print(_line("all observations", overall))
        print("per vLLM release range:")
        for label, stats in by_release.items():
            print(_line("  " + label, stats))
        print("per model family (config.json model_type):")
        for family, stats in by_family.items():
            print(_line("  " + family, stats))
        print(f"goal: median <= {GOAL_MEDIAN:.0%}, worst <= {GOAL_WORST:.0%}")
    met = overall["median"] <= GOAL_MEDIAN and overall["worst"] <= GOAL_WORST
    return 0 if met or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
