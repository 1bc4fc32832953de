# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The log lines are produced with llama.cpp's own format strings (llama-cpp-python 0.3.36's vendored tree):

src/llama.cpp            "%s: using device %s (%s) (%s) - %zu MiB free\\n"
src/llama-model.cpp      "%s: %12s model buffer size = %8.2f MiB\\n"          (load_tensors)
src/llama-kv-cache.cpp   "%s: %10s KV buffer size = %8.2f MiB\\n"             (llama_kv_cache)
src/llama-context.cpp    "%s: %10s compute buffer size = %8.2f MiB\\n"        (sched_reserve)
common/fit.cpp           common_memory_breakdown_print's table, columns padded as it pads them.
"""

from __future__ import annotations

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._llama_server_log import (
    compare,
    device_of_buffer,
    parse_breakdown,
    parse_buffer_lines,
    parse_devices,
    parse_memory,
    render_comparison,
)

WORKERS = ("10.77.1.12:50052", "10.77.1.13:50052")
RPC0_BUFFER = [f"RPC0[{endpoint}]" for endpoint in WORKERS]  # buffer type names: device index within the server


def printf(template, *values):
    """llama.cpp's C format strings, applied as its LLAMA_LOG_INFO applies them."""
    return template % values


def buffer_lines():
    lines = ["llama_model_loader: loaded meta data with 25 key-value pairs and 39 tensors from /srv/tiny.gguf"]
    for index, endpoint in enumerate(WORKERS):
        device = f"RPC{index}"
        # C's %zu for the free MiB is Python's %d.
        template = "%s: using device %s (%s) (%s) - %d MiB free"
        lines.append(printf(template, "llama_model_load_from_file_impl", device, endpoint, "unknown id", 7977))
    model = [("CPU_Mapped", 0.25), (RPC0_BUFFER[0], 1.51), (RPC0_BUFFER[1], 1.76)]
    lines += [printf("%s: %12s model buffer size = %8.2f MiB", "load_tensors", name, mib) for name, mib in model]
    kv = [(RPC0_BUFFER[0], 0.75), (RPC0_BUFFER[1], 0.25)]
    lines += [printf("%s: %10s KV buffer size = %8.2f MiB", "llama_kv_cache", name, mib) for name, mib in kv]
    compute = [(RPC0_BUFFER[0], 1.02), (RPC0_BUFFER[1], 1.53), ("CPU", 0.52)]
    lines += [printf("%s: %10s compute buffer size = %8.2f MiB", "sched_reserve", name, mib) for name, mib in compute]
    return lines


def breakdown_lines(rows):
    """common_memory_breakdown_print's table: column 1 padded right, the others left."""
    header = ["memory breakdown [MiB]", "total", "free", "self", "model", "context", "compute", "unaccounted"]
    table = [("header", header), *rows]
    widths = [max(len(cells[j]) for _kind, cells in table) for j in range(8)]
    lines = []
    for kind, cells in table:
        padded = [cells[0].ljust(widths[0])] + [cells[j].rjust(widths[j]) for j in range(1, 8)]
        if kind == "header":
            template = "%s: | %s | %s   %s    %s   %s   %s   %s    %s |"
        elif kind == "device":
            template = "%s: | %s | %s = %s + (%s = %s + %s + %s) + %s |"
        else:
            template = "%s: | %s | %s   %s    %s = %s + %s + %s    %s |"
        lines.append(printf(template, "common_memory_breakdown_print", *padded))
    return lines


BREAKDOWN = [
    ("device", [f"  - RPC0 ({WORKERS[0]})", "7977", "7950", "3", "1", "0", "1", "24"]),
    ("device", [f"  - RPC1 ({WORKERS[1]})", "7977", "7949", "3", "1", "0", "1", "25"]),
    ("other", ["  - Host", "", "", "0", "0", "0", "0", ""]),
]


def test_devices_are_read_with_their_endpoints():
    assert parse_devices("\n".join(buffer_lines())) == {
        "RPC0": {"description": WORKERS[0], "free_mib": 7977},
        "RPC1": {"description": WORKERS[1], "free_mib": 7977},
    }


def test_rpc_buffers_map_to_devices_through_the_endpoint():
    devices = parse_devices("\n".join(buffer_lines()))

    assert device_of_buffer(RPC0_BUFFER[1], devices) == "RPC1"
    assert device_of_buffer("CPU_Mapped", devices) == "Host"
    assert device_of_buffer("CUDA_Host", devices) == "Host"
    assert device_of_buffer("CUDA0", devices) == "CUDA0"


def test_buffer_lines_give_model_kv_and_compute_per_device():
    assert parse_buffer_lines("\n".join(buffer_lines())) == {
        "Host": {"model_mib": 0.25, "kv_cache_mib": 0.0, "compute_mib": 0.52},
        "RPC0": {"model_mib": 1.51, "kv_cache_mib": 0.75, "compute_mib": 1.02},
        "RPC1": {"model_mib": 1.76, "kv_cache_mib": 0.25, "compute_mib": 1.53},
    }


def test_model_buffers_of_split_files_add_up_and_a_reload_starts_over():
    lines = buffer_lines()
    # With mmap, llama.cpp maps each split file into its own buffer.
    lines.insert(4, printf("%s: %12s model buffer size = %8.2f MiB", "load_tensors", "CPU_Mapped", 0.5))
    reloaded = lines + [line.replace("1.51", "2.00") for line in lines]

    assert parse_buffer_lines("\n".join(lines))["Host"]["model_mib"] == 0.75
    assert parse_buffer_lines("\n".join(reloaded))["RPC0"]["model_mib"] == 2.0


def test_the_breakdown_table_is_parsed_in_whole_mib():
    assert parse_breakdown("\n".join(breakdown_lines(BREAKDOWN))) == {
        "RPC0": {"model_mib": 1.0, "kv_cache_mib": 0.0, "compute_mib": 1.0},
        "RPC1": {"model_mib": 1.0, "kv_cache_mib": 0.0, "compute_mib": 1.0},
        "Host": {"model_mib": 0.0, "kv_cache_mib": 0.0, "compute_mib": 0.0},
    }


def test_a_cuda_breakdown_row_with_a_long_description():
    rows = [("device", ["  - CUDA0 (Tesla P40)", "22919", "5520", "17031", "14166", "1248", "409", "368"])]
    assert parse_breakdown("\n".join(breakdown_lines(rows))) == {
        "CUDA0": {"model_mib": 14166.0, "kv_cache_mib": 1248.0, "compute_mib": 409.0}
    }


def test_older_releases_lines_are_understood():
    log = "\n".join(
        [
            "llm_load_tensors:        CPU buffer size =  4685.30 MiB",
            "llama_kv_cache_init:      CUDA0 KV buffer size =   256.00 MiB",
            "llama_new_context_with_model:      CUDA0 compute buffer size =   164.01 MiB",
            "llama_new_context_with_model:  CUDA_Host compute buffer size =    12.01 MiB",
        ]
    )
    assert parse_buffer_lines(log) == {
        "Host": {"model_mib": 4685.3, "kv_cache_mib": 0.0, "compute_mib": 12.01},
        "CUDA0": {"model_mib": 0.0, "kv_cache_mib": 256.0, "compute_mib": 164.01},
    }


def test_two_decimal_lines_win_and_the_table_fills_gaps():
    # The log cut after the model buffers: KV and compute come from the table only.
    log = "\n".join(buffer_lines()[:6] + breakdown_lines(BREAKDOWN))
    memory = parse_memory(log)

    assert memory["RPC0"] == {"model_mib": 1.51, "kv_cache_mib": 0.0, "compute_mib": 1.0}
    assert memory["RPC1"] == {"model_mib": 1.76, "kv_cache_mib": 0.0, "compute_mib": 1.0}
    assert memory["Host"] == {"model_mib": 0.25, "kv_cache_mib": 0.0, "compute_mib": 0.0}


def test_ansi_colours_do_not_hide_lines():
    coloured = "\x1b[0m" + buffer_lines()[1] + "\x1b[0m"
    assert parse_devices(coloured)["RPC0"]["description"] == WORKERS[0]


PLAN = {
    "devices": [
        {"llama_device": "RPC0", "weights_mib": 1.5, "kv_cache_mib": 0.75, "compute_buffer_mib": 1.0},
        {"llama_device": "RPC1", "weights_mib": 1.7, "kv_cache_mib": 0.25, "compute_buffer_mib": 3.5},
    ],
    "head": {"weights_mib": 0.25, "kv_cache_mib": 0.0, "compute_buffer_mib": 0.5},
}


def test_compare_gives_ratios_and_fails_outside_the_tolerance():
    actual = parse_buffer_lines("\n".join(buffer_lines()))
    comparison = compare(PLAN, actual, tolerance=0.10, slack_mib=0.0)

    rpc1 = comparison["devices"]["RPC1"]
    assert rpc1["model_mib"]["ratio"] == pytest.approx(1.76 / 1.7, abs=0.001) and rpc1["model_mib"]["within"]
    assert rpc1["compute_mib"]["ratio"] == pytest.approx(1.53 / 3.5, abs=0.001)
    assert rpc1["compute_mib"]["within"] is False
    assert comparison["within"] is False
    assert "RPC1" in render_comparison(comparison) and "NO" in render_comparison(comparison)


def test_small_absolute_differences_are_within():
    actual = parse_buffer_lines("\n".join(buffer_lines()))
    plan = {"devices": [dict(PLAN["devices"][1], compute_buffer_mib=1.6)], "head": PLAN["head"]}

    assert compare(plan, actual, slack_mib=0.1)["within"] is True


def test_a_device_missing_from_the_log_is_not_within():
    comparison = compare(PLAN, {"RPC0": {"model_mib": 1.5, "kv_cache_mib": 0.75, "compute_mib": 1.0}})

    assert comparison["devices"]["RPC1"]["model_mib"]["actual"] is None
    assert comparison["within"] is False
