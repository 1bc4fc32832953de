#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nccl_report
short_description: Judge an all-reduce run from its NCCL logs and timings, and tabulate its bus bandwidth
version_added: 0.1.0
description:
  - Reads each node's C(NCCL_DEBUG=INFO) output from an all-reduce run (the C(llmserve.cluster.nccl_check)
    role starts it) and tells which network transport NCCL used on each node and whether GPUDirect RDMA was on.
  - Fails when a node with InfiniBand or RoCE devices used C(NET/Socket) instead of C(NET/IB)
    (about 10 times slower for tensor parallelism across nodes); warns when GPUDirect RDMA is off.
  - Turns the timings into algorithm and bus bandwidth per message size, with the nccl-tests formula for
    all-reduce, busbw = algbw * 2(n-1)/n.
  - Runs wherever it is called, usually on the controller with C(run_once).
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Only reads its arguments.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  logs:
    description: Each node's output of the run (stdout and stderr), by node name.
    type: dict
    required: true
  timings:
    description:
      - One entry per message size, C({bytes, seconds}), with the mean seconds per all-reduce on the slowest rank.
    type: list
    elements: dict
    default: []
  world_size:
    description: Number of ranks in the all-reduce.
    type: int
    required: true
  backend:
    description: The torch.distributed backend of the run. With C(gloo), no NCCL transport is judged.
    type: str
    choices: [nccl, gloo]
    required: true
  rdma_nodes:
    description: Nodes whose fabric probe found InfiniBand or RoCE devices (C(llmserve_fabric.ib_present)).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Judge the all-reduce and show its bandwidth
  llmserve.cluster.nccl_report:
    logs: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, 'nccl_check_output'))) }}"
    timings: "{{ nccl_check_result.timings }}"
    world_size: "{{ nccl_check_result.world_size }}"
    backend: nccl
    rdma_nodes: [gpu1, gpu2]
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
table:
  description:
    - Markdown table of time, algorithm bandwidth and bus bandwidth per message size, then one line per node
      with the network NCCL used and the state of GPUDirect RDMA.
  returned: always
  type: str
bandwidth:
  description: One row per message size, C({bytes, time_us, algbw_gbps, busbw_gbps}); rates in GB/s (10^9 bytes).
  returned: always
  type: list
  elements: dict
transports:
  description:
    - What each node's log says, by node. C(networks) lists NCCL's inter-node transports (C(IB), C(IBext_v8),
      C(Socket)); C(gdrdma) is C(on), C(partial), C(off), C(unknown), or null without a verbs transport.
  returned: always
  type: dict
concerns:
  description: What is slower than it could be (GPUDirect RDMA off, transport not named); also shown as warnings.
  returned: always
  type: list
  elements: str
failures:
  description: Why the check failed; empty when it passed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._allreduce_bandwidth import (
    bandwidth_rows,
    bandwidth_table,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._nccl_log import judge, read_nccl_log


def transport_lines(transports, backend, rdma_nodes):
    """One line per node: the network NCCL used and the state of GPUDirect RDMA."""
    if backend == "gloo":
        return ["gloo on CPU: no NCCL transport to judge"]
    lines = []
    for node in sorted(transports):
        transport = transports[node]
        networks = ", ".join(transport["networks"]) or "no network transport named"
        fabric = "IB/RoCE present" if node in rdma_nodes else "no IB/RoCE"
        gdrdma = f", GPUDirect RDMA {transport['gdrdma']}" if transport["gdrdma"] else ""
        lines.append(f"{node}: NCCL {transport['nccl_version'] or ''} over {networks} ({fabric}){gdrdma}")
    return lines


def main():
    module = AnsibleModule(
        argument_spec=dict(
            logs=dict(type="dict", required=True),
            timings=dict(type="list", elements="dict", default=[]),
            world_size=dict(type="int", required=True),
            backend=dict(type="str", choices=["nccl", "gloo"], required=True),
            rdma_nodes=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        rows = bandwidth_rows(params["timings"], params["world_size"])
    except (KeyError, TypeError, ValueError) as error:
        module.fail_json(msg=f"unusable timings: {error}")
    table = bandwidth_table(rows, params["world_size"], params["backend"])

    transports = {}
    failures = []
    concerns = []
    if params["backend"] == "nccl":
        summaries = {node: read_nccl_log(str(text or "")) for node, text in params["logs"].items()}
        transports = {node: summary.as_dict() for node, summary in summaries.items()}
        verdict = judge(summaries, params["rdma_nodes"], multi_node=len(summaries) > 1)
        failures, concerns = verdict.failures, verdict.warnings
    elif params["rdma_nodes"]:
        concerns = ["gloo ran on CPU: NCCL's use of the IB/RoCE devices was not checked"]
    for concern in concerns:
        module.warn(concern)

    result = dict(
        changed=False,
        table="\n".join([table, *transport_lines(transports, params["backend"], params["rdma_nodes"])]),
        bandwidth=rows,
        transports=transports,
        failures=failures,
        concerns=concerns,
    )
    if failures:
        module.fail_json(msg="NCCL is not using the fast fabric:\n" + "\n".join(failures) + "\n" + table, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
