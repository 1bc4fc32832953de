# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline batch inference with Ray Data and vLLM, submitted by the llmserve.cluster batch_inference role.

The driver (on the Ray head) reads the prompts (JSONL, Parquet or text), hands them to an actor pool of
``num_instances`` copies of ``vllm.LLM`` (vLLM's Ray Data example, with one placement group per instance
when an instance spans several GPUs), and streams the answers into one Parquet file: one row per prompt
(row, prompt, generated_text, finish_reason, node). It writes a temporary file next to the output and
renames it over the output only when every prompt has its row, so a failed or interrupted run leaves
the previous output whole.

    python batch_job.py --config job.json            # run the job
    python batch_job.py --config job.json --check    # prints {"current": true, ...} when the output
                                                     # already answers this input with these settings

Self-contained on purpose: it runs on the head with the runtime venv (Ray, vLLM, pyarrow), where the
collection is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

# The role's ray_job task prints the log lines that carry this marker while the job runs.
PROGRESS_MARKER = "[llmserve-batch]"
FINGERPRINT_KEY = b"llmserve.batch.fingerprint"
# Settings that change the generated text; the instance count and batch size only change the speed.
RESULT_SETTINGS = (
    "model",
    "engine_arguments",
    "sampling",
    "input_format",
    "prompt_field",
    "tensor_parallel_size",
    "pipeline_parallel_size",
)
FORMATS_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
OUTPUT_COLUMNS = ("row", "prompt", "generated_text", "finish_reason", "node")


class BatchInputError(ValueError):
    """The prompts cannot be read as declared."""


def progress(message: str) -> None:
    print(f"{PROGRESS_MARKER} {message}", flush=True)


def input_format(path: str, declared: str = "auto") -> str:
    """The declared format, or the one the file's suffix names."""
    if declared != "auto":
        return declared
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS_BY_SUFFIX:
        raise BatchInputError(
            f"Cannot tell the format of {path} from its suffix; set the input format to jsonl, parquet or text."
        )
    return FORMATS_BY_SUFFIX[suffix]


def read_prompts(path: str, fmt: str, prompt_field: str = "prompt") -> List[str]:
    """Every prompt of the file, in file order. Text: one prompt per non-blank line. JSONL: one object per
    line with the prompt under PROMPT_FIELD (or a bare JSON string). Parquet: the PROMPT_FIELD column."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if prompt_field not in schema.names:
            raise BatchInputError(
                "{} has no column {!r} (columns: {}).".format(path, prompt_field, ", ".join(schema.names))
            )
        prompts = pq.read_table(path, columns=[prompt_field]).column(prompt_field).to_pylist()
        missing = [index for index, prompt in enumerate(prompts) if not isinstance(prompt, str)]
        if missing:
            raise BatchInputError(f"{path}: rows {missing[:10]} have no text in {prompt_field!r}.")
        return prompts
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if fmt == "text":
                prompts.append(line.rstrip("\r\n"))
                continue
            if fmt != "jsonl":
                raise BatchInputError(f"Unknown input format {fmt!r} (jsonl, parquet or text).")
            try:
                value = json.loads(line)
            except ValueError as error:
                raise BatchInputError(f"{path} line {number}: not JSON ({error}).") from error
            if isinstance(value, dict):
                value = value.get(prompt_field)
            if not isinstance(value, str):
                raise BatchInputError(
                    f"{path} line {number}: expected a string or an object with a string {prompt_field!r}."
                )
            prompts.append(value)
    return prompts


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(config: Mapping[str, Any], input_sha256: str) -> str:
    """What the output answers: the input's content and every setting that changes the text."""
    payload = {name: config.get(name) for name in RESULT_SETTINGS}
    payload["input_sha256"] = input_sha256
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def output_fingerprint(path: str) -> Optional[str]:
    """The fingerprint stored in an existing output's Parquet metadata; None without one."""
    if not os.path.isfile(path):
        return None
    import pyarrow
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pyarrow.ArrowInvalid, OSError):
        return None
    value = metadata.get(FINGERPRINT_KEY)
    return value.decode("utf-8") if value else None


def engine_arguments(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``vllm.LLM`` keyword arguments for one instance."""
    arguments = dict(config.get("engine_arguments") or {})
    tensor = int(config.get("tensor_parallel_size") or 1)
    pipeline = int(config.get("pipeline_parallel_size") or 1)
    arguments.update(model=config["model"], tensor_parallel_size=tensor, pipeline_parallel_size=pipeline)
    if tensor * pipeline > 1:
        # Workers of one instance are Ray actors inside the instance's placement group.
        arguments.setdefault("distributed_executor_backend", "ray")
    return arguments


def actor_resources(
    config: Mapping[str, Any],
    placement_group: Optional[Callable[..., Any]] = None,
    scheduling_strategy: Optional[Callable[..., Any]] = None,
) -> Dict[str, Any]:
    """``map_batches`` resource arguments for the instances.

    One GPU: the actor takes it. Several: the actor takes none and ``ray_remote_args_fn`` creates a new
    placement group (one bundle per GPU worker) for every actor Ray Data starts, so each instance has its
    own, as in vLLM's example. PLACEMENT_GROUP and SCHEDULING_STRATEGY are Ray's
    ``ray.util.placement_group`` and ``PlacementGroupSchedulingStrategy``.
    """
    cpus = float(config.get("cpus_per_instance") or 1.0)
    if config.get("device") == "cpu":
        return {"num_cpus": cpus}
    placement = config.get("placement") or {}
    bundles = [dict(bundle) for bundle in placement.get("bundles") or []]
    if not bundles:
        return {"num_cpus": cpus, "num_gpus": 1}
    if placement_group is None or scheduling_strategy is None:
        raise ValueError("An instance of several GPUs needs Ray's placement_group and its scheduling strategy.")

    def instance_placement_group() -> Dict[str, Any]:
        group = placement_group(bundles, strategy=placement.get("strategy") or "STRICT_PACK")
        return {"scheduling_strategy": scheduling_strategy(group, placement_group_capture_child_tasks=True)}

    return {"num_cpus": cpus, "num_gpus": 0, "ray_remote_args_fn": instance_placement_group}


class LLMPredictor:
    """One vLLM instance in a Ray Data actor: a batch of prompts in, their completions out."""

    def __init__(self, engine_arguments: Mapping[str, Any], sampling: Mapping[str, Any]) -> None:
        import ray
        from vllm import LLM, SamplingParams

        self.llm = LLM(**engine_arguments)
        self.sampling = SamplingParams(**sampling)
        self.node = ray.util.get_node_ip_address()

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, List[Any]]:
        prompts = [str(prompt) for prompt in batch["prompt"]]
        outputs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
        return {
            "row": [int(row) for row in batch["row"]],
            "prompt": prompts,
            "generated_text": [output.outputs[0].text for output in outputs],
            "finish_reason": [str(output.outputs[0].finish_reason) for output in outputs],
            "node": [self.node] * len(prompts),
        }


def output_schema(fingerprint_value: str):
    import pyarrow as pa

    return pa.schema(
        [
            ("row", pa.int64()),
            ("prompt", pa.string()),
            ("generated_text", pa.string()),
            ("finish_reason", pa.string()),
            ("node", pa.string()),
        ],
        metadata={FINGERPRINT_KEY: fingerprint_value.encode("utf-8")},
    )


def remove_stale_temporaries(directory: str, name: str) -> List[str]:
    """Remove temporary outputs left by drivers that were killed (SIGKILL skips any cleanup); keep those of
    processes still running. Returns the removed paths."""
    prefix = f".{name}.tmp-"
    removed = []
    for entry in os.listdir(directory):
        if not entry.startswith(prefix) or not entry[len(prefix) :].isdigit():
            continue
        try:
            os.kill(int(entry[len(prefix) :]), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, under another user
        os.remove(os.path.join(directory, entry))
        removed.append(os.path.join(directory, entry))
    return removed


def write_output(
    tables: Iterable[Any],
    path: str,
    fingerprint_value: str,
    expected_rows: int,
    report: Callable[[str], None] = progress,
) -> int:
    """Stream TABLES (pyarrow tables with OUTPUT_COLUMNS) into a temporary file next to PATH, check that every
    row from 0 to EXPECTED_ROWS - 1 came exactly once, then rename it over PATH. On any failure the temporary
    file goes and PATH is left as it was."""
    import pyarrow.parquet as pq

    schema = output_schema(fingerprint_value)
    directory, name = os.path.split(os.path.abspath(path))
    remove_stale_temporaries(directory, name)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    seen = bytearray(expected_rows)
    written = 0
    started = time.monotonic()
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for table in tables:
                table = table.select(list(OUTPUT_COLUMNS)).cast(schema)
                for row in table.column("row").to_pylist():
                    if not 0 <= row < expected_rows or seen[row]:
                        raise RuntimeError(f"Row {row} came back twice or was never asked for.")
                    seen[row] = 1
                writer.write_table(table)
                written += table.num_rows
                percent = 100.0 * written / max(1, expected_rows)
                report(f"{written}/{expected_rows} prompts done ({percent:.0f}%), {time.monotonic() - started:.0f} s")
        if written != expected_rows:
            raise RuntimeError(f"{written} rows came back for {expected_rows} prompts; the output is left as it was.")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return written


def check(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Whether the output already answers this input with these settings."""
    expected = fingerprint(config, file_sha256(config["input_path"]))
    found = output_fingerprint(config["output_path"])
    return {"current": found == expected, "fingerprint": expected, "output_fingerprint": found}


def run(config: Mapping[str, Any]) -> int:
    import pyarrow as pa
    import ray
    import ray.data
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    fmt = input_format(config["input_path"], config.get("input_format") or "auto")
    prompts = read_prompts(config["input_path"], fmt, config.get("prompt_field") or "prompt")
    fingerprint_value = fingerprint(config, file_sha256(config["input_path"]))
    batch_size = int(config.get("batch_size") or 32)
    instances = int(config["num_instances"])
    progress(
        "{} prompts from {} ({}); {} instance(s) of TP {} x PP {} on {}".format(
            len(prompts),
            config["input_path"],
            fmt,
            instances,
            config.get("tensor_parallel_size") or 1,
            config.get("pipeline_parallel_size") or 1,
            config.get("device") or "gpu",
        )
    )
    if not prompts:
        return write_output([], config["output_path"], fingerprint_value, 0)

    ray.init()  # the job's driver: RAY_ADDRESS and the token come from the job supervisor
    rows = pa.table({"row": pa.array(range(len(prompts)), pa.int64()), "prompt": pa.array(prompts, pa.string())})
    # One block per batch, so every instance of the pool gets work (one big block would feed one actor).
    dataset = ray.data.from_arrow([rows.slice(start, batch_size) for start in range(0, len(prompts), batch_size)])
    dataset = dataset.map_batches(
        LLMPredictor,
        fn_constructor_kwargs={
            "engine_arguments": engine_arguments(config),
            "sampling": dict(config.get("sampling") or {}),
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=instances),
        **actor_resources(config, placement_group, PlacementGroupSchedulingStrategy),
    )
    written = write_output(
        dataset.iter_batches(batch_format="pyarrow", batch_size=None),
        config["output_path"],
        fingerprint_value,
        len(prompts),
    )
    progress("wrote {} rows to {}".format(written, config["output_path"]))
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the job's JSON settings, written by the role")
    parser.add_argument("--check", action="store_true", help="only say whether the output is current")
    arguments = parser.parse_args(argv)
    with open(arguments.config, encoding="utf-8") as handle:
        config = json.load(handle)
    if arguments.check:
        print(json.dumps(check(config)))
        return 0
    # `ray job stop` sends SIGTERM first: exit through the cleanup that removes the temporary output.
    signal.signal(signal.SIGTERM, lambda _number, _frame: sys.exit(143))
    started = time.monotonic()
    try:
        run(config)
    except BatchInputError as error:
        progress(f"failed: {error}")
        return 2
    progress(f"finished in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
