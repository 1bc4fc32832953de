# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``vllm serve`` flags that change how much memory the KV cache gets, read from the extra arguments.

A deployment passes its own flags to vLLM through ``vllm_serve_extra_args``; the ones listed in ``FLAGS`` move
the memory accounting, so the planner reads them from there instead of assuming vLLM's defaults. vLLM's parser
accepts ``--flag value`` and ``--flag=value``, and underscores for dashes (FlexibleArgumentParser); so does this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

EXTRA_ARGS_VARIABLE = "vllm_serve_extra_args"

# flag -> (planner option, kind). Options the planner already has keep their names; "bool" flags take no value
# and have a --no- form (argparse.BooleanOptionalAction in vLLM's EngineArgs).
FLAGS = {
    "--quantization": ("quantization", "str"),
    "-q": ("quantization", "str"),
    "--kv-cache-dtype": ("kv_cache_dtype", "str"),
    "--block-size": ("block_size", "int"),
    "--enforce-eager": ("enforce_eager", "bool"),
    "--max-num-seqs": ("max_num_seqs", "int"),
    "--max-num-batched-tokens": ("max_num_batched_tokens", "int"),
    "--cpu-offload-gb": ("cpu_offload_gb", "float"),
    "--enable-prefix-caching": ("enable_prefix_caching", "bool"),
    "--kv-transfer-config": ("kv_transfer_config", "json"),
    "--gpu-memory-utilization": ("gpu_memory_utilization", "float"),
    "--max-model-len": ("max_model_len", "int"),
    "--tensor-parallel-size": ("tensor_parallel_size", "int"),
    "-tp": ("tensor_parallel_size", "int"),
    "--pipeline-parallel-size": ("pipeline_parallel_size", "int"),
    "-pp": ("pipeline_parallel_size", "int"),
    "--data-parallel-size": ("data_parallel_size", "int"),
    "-dp": ("data_parallel_size", "int"),
    "--enable-expert-parallel": ("enable_expert_parallel", "bool"),
    "-ep": ("enable_expert_parallel", "bool"),
}


class EngineFlagError(ValueError):
    """An extra argument the planner needs cannot be read; the message names vllm_serve_extra_args."""


@dataclass
class EngineFlags:
    """The memory-relevant flags found in the extra arguments, by planner option name."""

    values: Dict[str, Any] = field(default_factory=dict)
    # The flag each value came from, for messages ("--max-num-seqs 64").
    sources: Dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


def _canonical(flag: str) -> str:
    if flag.startswith("--"):
        return "--" + flag[2:].replace("_", "-")
    return flag


def _convert(flag: str, kind: str, raw: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "json":
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
    except ValueError as error:
        raise EngineFlagError(
            f"{EXTRA_ARGS_VARIABLE}: {flag} {raw!r} is not a valid {kind} ({error}); fix the value or remove the flag."
        ) from error
    return raw


def parse_engine_flags(args: Optional[Sequence[Any]]) -> EngineFlags:
    """Read the memory-relevant flags from ``vllm_serve_extra_args`` (a list of strings, as the role passes them).

    Later occurrences win, as in argparse. Other flags are ignored.
    """
    flags = EngineFlags()
    if not args:
        return flags
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
        raise EngineFlagError(
            f"{EXTRA_ARGS_VARIABLE} must be a list of strings (one argument each), got {type(args).__name__}."
        )
    items: List[str] = [str(item) for item in args]
    index = 0
    while index < len(items):
        item = items[index]
        index += 1
        if not item.startswith("-"):
            continue
        name, has_value, inline = item.partition("=")
        negated = False
        flag = _canonical(name)
        if flag not in FLAGS and flag.startswith("--no-") and "--" + flag[5:] in FLAGS:
            flag, negated = "--" + flag[5:], True
        if flag not in FLAGS:
            continue
        option, kind = FLAGS[flag]
        if kind == "bool":
            if has_value:
                raise EngineFlagError(f"{EXTRA_ARGS_VARIABLE}: {flag} takes no value, got {item!r}.")
            flags.values[option] = not negated
            flags.sources[option] = item
            continue
        if has_value:
            raw = inline
        elif index < len(items):
            raw = items[index]
            index += 1
        else:
            raise EngineFlagError(f"{EXTRA_ARGS_VARIABLE}: {flag} needs a value and is the last argument.")
        flags.values[option] = _convert(flag, kind, raw)
        flags.sources[option] = f"{flag} {raw}"
    return flags
