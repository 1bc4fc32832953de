# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.llmserve.cluster.plugins.module_utils._preflight_checks import (
    HETEROGENEOUS_GPU_POLICIES,
    MIN_DRIVER_FOR_CUDA,
    run_preflight,
)
from ansible_collections.llmserve.cluster.plugins.plugin_utils._play_facts import collect_fact, play_hosts


class ActionModule(ActionBase):
    """Compare the gpu_facts and fabric_facts of every node on the controller, before any change."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts", "heterogeneous_gpus", "vllm_cuda_major", "require_gpus"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(
            argument_spec=dict(
                hosts=dict(type="list", elements="str"),
                heterogeneous_gpus=dict(type="str", default="warn", choices=list(HETEROGENEOUS_GPU_POLICIES)),
                vllm_cuda_major=dict(type="int", default=12, choices=sorted(MIN_DRIVER_FOR_CUDA)),
                require_gpus=dict(type="bool", default=True),
            )
        )
        hosts = play_hosts(task_vars, args["hosts"])
        gpu = collect_fact(task_vars, "llmserve_gpu", hosts)
        fabric = collect_fact(task_vars, "llmserve_fabric", hosts)
        report = run_preflight(
            {host: {"gpu": gpu[host], "fabric": fabric[host]} for host in hosts},
            heterogeneous_gpus=args["heterogeneous_gpus"],
            vllm_cuda_major=args["vllm_cuda_major"],
            require_gpus=args["require_gpus"],
        )
        result.update(report, changed=False)
        for warning in report["warnings"]:
            self._display.warning(warning)
        if report["failed"]:
            result["msg"] = "Cluster preflight found {} problem(s): {}".format(
                len(report["errors"]), " | ".join(report["errors"])
            )
        else:
            result["msg"] = "Cluster preflight passed for {} host(s) with {} warning(s).".format(
                len(report["hosts"]), len(report["warnings"])
            )
        return result
