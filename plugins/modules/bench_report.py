#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bench_report
short_description: Tabulate and plot C(vllm bench serve) results across concurrencies
version_added: 0.1.0
description:
  - Reads the JSON files that C(vllm bench serve --save-result) wrote, one per C(--max-concurrency), and
    returns request throughput, output tokens/s, and TTFT and ITL at p50 and p99 per concurrency as a table.
  - Writes one summary JSON with those rows and, with O(plot_path), a small PNG of throughput against
    concurrency (needs C(matplotlib) where the module runs, usually the controller).
  - Fails when a run lost requests, since its numbers would mislead.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Reads the results and reports; writes nothing.
  diff_mode:
    support: none
    description: No diff is shown.
options:
  result_files:
    description: Paths of the C(vllm bench serve) result files, one per concurrency.
    type: list
    elements: path
    required: true
  summary_path:
    description: Where to write the summary JSON (the rows and the run's settings).
    type: path
    required: true
  plot_path:
    description: Where to write the PNG plot. Omit to skip the plot.
    type: path
  title:
    description: Title of the table and the plot.
    type: str
    default: vllm bench serve
  fail_on_failed_requests:
    description: Fail when any concurrency completed no request or lost some.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Tabulate the benchmark and plot it
  llmserve.cluster.bench_report:
    result_files:
      - /tmp/bench/concurrency-1.json
      - /tmp/bench/concurrency-8.json
    summary_path: /tmp/bench/summary.json
    plot_path: /tmp/bench/throughput.png
    title: Llama-3.1-70B, TP 8 x PP 2, input 1024, output 128
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
rows:
  description:
    - One row per concurrency with C(max_concurrency), C(completed), C(failed), C(request_throughput) (req/s),
      C(output_throughput) (tokens/s), C(ttft_p50_ms), C(ttft_p99_ms), C(itl_p50_ms) and C(itl_p99_ms).
  returned: success
  type: list
  elements: dict
table:
  description: The rows as a Markdown table.
  returned: success
  type: str
summary_path:
  description: The summary JSON written.
  returned: success
  type: str
plot_path:
  description: The PNG written, when O(plot_path) was given.
  returned: success
  type: str
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._bench_results import (
    BenchResultError,
    plot_throughput,
    problems,
    results_table,
    summarize_all,
)


def write_if_changed(path, content):
    """Write CONTENT atomically unless the file already holds it; True when written."""
    if os.path.exists(path):
        with open(path, "rb") as handle:
            if handle.read() == content:
                return False
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=".bench-report-")
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            result_files=dict(type="list", elements="path", required=True),
            summary_path=dict(type="path", required=True),
            plot_path=dict(type="path"),
            title=dict(type="str", default="vllm bench serve"),
            fail_on_failed_requests=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    results = []
    for path in params["result_files"]:
        try:
            with open(path, encoding="utf-8") as handle:
                results.append(json.load(handle))
        except (OSError, ValueError) as error:
            module.fail_json(msg=f"cannot read the benchmark result {path}: {error}")
    try:
        rows = summarize_all(results)
    except BenchResultError as error:
        module.fail_json(msg=str(error))
    table = results_table(rows, params["title"])
    outcome = dict(rows=rows, table=table, summary_path=params["summary_path"], plot_path=params["plot_path"])

    lost = problems(rows)
    if lost and params["fail_on_failed_requests"]:
        module.fail_json(msg="the endpoint lost requests:\n" + "\n".join(lost) + "\n" + table, **outcome)

    changed = False
    if not module.check_mode:
        summary = {"title": params["title"], "rows": rows, "result_files": params["result_files"]}
        changed = write_if_changed(params["summary_path"], (json.dumps(summary, indent=2) + "\n").encode())
        if params["plot_path"]:
            try:
                image = plot_throughput(rows, params["title"])
            except ImportError:
                module.fail_json(
                    msg="matplotlib is needed for the plot where this module runs: "
                    "pip install matplotlib there, or leave plot_path out",
                    **outcome,
                )
            changed = write_if_changed(params["plot_path"], image) or changed
    module.exit_json(changed=changed, **outcome)


if __name__ == "__main__":
    main()
