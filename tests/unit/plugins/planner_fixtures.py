# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The real model configs and GPU descriptions (NVML name and total) that the planner's tests share."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"

H100 = dict(gpu_memory_mib=81559, gpu_name="NVIDIA H100 80GB HBM3")
A800 = dict(gpu_memory_mib=81920, gpu_name="NVIDIA A800-SXM4-80GB")
A100_40 = dict(gpu_memory_mib=40960, gpu_name="NVIDIA A100-SXM4-40GB")
A10 = dict(gpu_memory_mib=23028, gpu_name="NVIDIA A10")
P40 = dict(gpu_memory_mib=22919, gpu_name="Tesla P40")
RTX4090 = dict(gpu_memory_mib=24564, gpu_name="NVIDIA GeForce RTX 4090")


def model(name):
    return load_model_spec_from_dir(str(MODELS / name))


def nodes(count, gpus, kind):
    return [ClusterNode(name=f"node{index + 1}", gpus=gpus, **kind) for index in range(count)]
