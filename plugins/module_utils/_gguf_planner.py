# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Place a GGUF model's layers on llama.cpp devices (local GPUs and RPC servers) and size each device's memory.

This follows llama.cpp itself, so that the flags it prints are the ones that produce the placement it reports:

- Devices are listed as llama.cpp lists them (``llama_model_load`` in src/llama.cpp): every ``--rpc`` device
  first, in the order given, then the local GPUs. The head's CPU is not a device; what is not offloaded stays
  in its RAM.
- Layer ``il`` of ``n_layer + 1`` (the output layer counts as the last) goes to the CPU when
  ``il < n_layer + 1 - n_gpu_layers``, otherwise to the first device whose cumulative ``--tensor-split``
  fraction is above ``(il - first_offloaded) / offloaded`` (``upper_bound`` in ``llama_model::load_tensors``,
  in float32, which is emulated here). Without ``--tensor-split`` llama.cpp weighs devices by free memory.
  The input layer (``token_embd``) always stays on the CPU.
- A device's memory is what ``common_memory_breakdown_print`` reports as its "self": the model buffer (its
  tensors' bytes), the context (KV cache of its layers: ``ctx_size`` rounded up to 256 cells, times K and V rows
  of ``head_count_kv x head_dim`` values in ``cache_type_k``/``cache_type_v``), and the compute buffer (the
  activation peak of one micro-batch, estimated per layer the way gguf-parser does, plus the logits on the
  device that holds the output layer).

The planner first lets free memory weigh the devices, as llama.cpp would; when that overfills one device it
moves whole layers to devices with room, and prints the resulting split as layer counts
(``--tensor-split 40,41``), which llama.cpp turns back into exactly those layers.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import GGUFModel
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import render_box

MIB = 1024 * 1024
# ggml block sizes (values per block, bytes per block) of the KV cache types llama.cpp accepts here
# (ggml-common.h: block_q8_0 = fp16 scale + 32 int8, block_q4_0 = fp16 scale + 16 bytes of nibbles).
KV_CACHE_TYPES: Dict[str, Tuple[int, int]] = {
    "f16": (1, 2),
    "bf16": (1, 2),
    "f32": (1, 4),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
}
DEVICE_KINDS = ("rpc", "gpu", "cpu")
# llama.cpp pads the context to a multiple of 256 cells (llama_context: GGML_PAD(n_ctx, 256)).
CONTEXT_PADDING = 256
DEFAULT_CTX_SIZE = 4096
# Memory the CUDA context takes on a GPU before any buffer (gguf-parser's default VRAM platform footprint).
DEVICE_RESERVE_MIB = 250.0
# With several devices llama.cpp's scheduler keeps this many copies of each split's inputs for pipelining
# (GGML_SCHED_MAX_COPIES).
PIPELINE_COPIES = 4


class GGUFPlanError(Exception):
    """The request cannot be planned; ``field`` names the option to change."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass
class Device:
    name: str
    node: str
    kind: str
    memory_free_mib: float
    llama_name: str = ""


def _f32(value: float) -> float:
    """Round to float32, as llama.cpp computes split points (double rounding is exact for these divisions)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def layer_placement(block_count: int, n_gpu_layers: int, split_weights: Sequence[float]) -> List[Optional[int]]:
    """Device index (or None for the CPU) of each of ``block_count + 1`` layers, the output layer last."""
    devices = len(split_weights)
    if devices == 0 or n_gpu_layers <= 0:
        return [None] * (block_count + 1)
    points: List[float] = []
    running = 0.0
    for weight in split_weights:
        running = _f32(running + _f32(weight))
        points.append(running)
    points = [_f32(point / running) for point in points]
    first_offloaded = max(block_count + 1 - n_gpu_layers, 0)
    offloaded = min(n_gpu_layers, block_count + 1)
    placement: List[Optional[int]] = []
    for layer in range(block_count + 1):
        if layer < first_offloaded:
            placement.append(None)
            continue
        position = _f32(float(layer - first_offloaded) / offloaded)
        placement.append(min(bisect.bisect_right(points, position), devices - 1))
    return placement


def order_devices(devices: Sequence[Dict[str, Any]]) -> Tuple[List[Device], Optional[Device]]:
    """llama.cpp's device order (RPC devices, then local GPUs) and the head's CPU, if listed."""
    parsed: List[Device] = []
    for index, raw in enumerate(devices):
        kind = str(raw.get("kind", "gpu"))
        if kind not in DEVICE_KINDS:
            raise GGUFPlanError(
                "devices[{}].kind: {!r} is not one of {}.".format(index, kind, ", ".join(DEVICE_KINDS)), "devices"
            )
        free = raw.get("memory_free_mib")
        if free is None or float(free) < 0:
            raise GGUFPlanError(f"devices[{index}].memory_free_mib: give the device's free memory in MiB.", "devices")
        parsed.append(Device(str(raw.get("name") or index), str(raw.get("node") or ""), kind, float(free)))
    cpus = [device for device in parsed if device.kind == "cpu"]
    if len(cpus) > 1:
        raise GGUFPlanError(
            "devices: list at most one cpu device, the head's RAM (the others serve as rpc).", "devices"
        )
    ordered = [device for device in parsed if device.kind == "rpc"] + [
        device for device in parsed if device.kind == "gpu"
    ]
    rpc_index = gpu_index = 0
    for device in ordered:
        if device.kind == "rpc":
            device.llama_name = f"RPC{rpc_index}"
            rpc_index += 1
        else:
            device.llama_name = f"CUDA{gpu_index}"
            gpu_index += 1
    return ordered, (cpus[0] if cpus else None)


def kv_row_bytes(values: int, cache_type: str) -> int:
    block, size = KV_CACHE_TYPES[cache_type]
    return values // block * size


def kv_cache_layer_bytes(model: GGUFModel, ctx_cells: int, cache_type_k: str, cache_type_v: str) -> List[int]:
    """KV cache bytes of each layer (llama_kv_cache: one K and one V tensor of ctx_cells rows per layer)."""
    sizes = []
    for layer in range(model.block_count):
        heads_kv = model.head_count_kv[layer] if layer < len(model.head_count_kv) else model.head_count_kv[-1]
        k_row = kv_row_bytes(model.key_length * heads_kv, cache_type_k)
        v_row = kv_row_bytes(model.value_length * heads_kv, cache_type_v)
        sizes.append(ctx_cells * (k_row + v_row))
    return sizes


def _f32_bytes(*dimensions: int) -> int:
    size = 4
    for dimension in dimensions:
        size *= dimension
    return size


def compute_buffer_bytes(
    model: GGUFModel,
    ctx_cells: int,
    ubatch_tokens: int,
    flash_attention: bool,
    has_layers: bool,
    has_output: bool,
    copies: int,
) -> int:
    """Estimated compute buffer of one device for the reserve graph (``ubatch_tokens`` tokens at full context).

    The graph allocator reuses memory between layers, so what counts is the largest layer's live tensors
    (gguf-parser's method): the attention step (Q, K, V of the micro-batch and, without flash attention, the
    KQ scores of every head over the whole context) or the FFN step (gate and up projections); plus the
    inputs each graph split copies in (the hidden state and the attention mask), once per pipeline copy;
    plus the logits of every micro-batch token on the device with the output layer.
    """
    if not has_layers and not has_output:
        return 0
    tokens = ubatch_tokens
    hidden = model.embedding_length
    heads_kv = max(model.head_count_kv) if model.head_count_kv else model.head_count
    q_width = model.key_length * model.head_count
    kv_width = (model.key_length + model.value_length) * heads_kv
    mask_bytes = (2 if flash_attention else 4) * ctx_cells * tokens
    inputs = copies * (_f32_bytes(hidden, tokens) + mask_bytes)
    peak = 0
    if has_layers:
        attention = _f32_bytes(hidden, tokens) * 2 + _f32_bytes(q_width, tokens) * 2 + _f32_bytes(kv_width, tokens)
        if not flash_attention:
            attention += _f32_bytes(ctx_cells, tokens, model.head_count)
        feed_forward = _f32_bytes(hidden, tokens) * 2 + _f32_bytes(model.feed_forward_length, tokens) * 2
        peak = max(attention, feed_forward)
    if has_output:
        peak = max(peak, _f32_bytes(hidden, tokens) + _f32_bytes(model.vocab_size, tokens))
    return inputs + peak


def host_compute_buffer_bytes(model: GGUFModel, ctx_cells: int, ubatch_tokens: int, flash_attention: bool) -> int:
    """The CPU's compute buffer when every layer is offloaded: the token embeddings of one micro-batch and inputs."""
    mask_bytes = (2 if flash_attention else 4) * ctx_cells * ubatch_tokens
    return _f32_bytes(model.embedding_length, ubatch_tokens) + mask_bytes


def _mib(value: float) -> float:
    return round(value / MIB, 2)


def format_size(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.2f} MiB"


class _Evaluation:
    """Memory of every device and of the head's RAM for one placement."""

    def __init__(self, request: GGUFRequest, n_gpu_layers: int, split_weights: Sequence[float]):
        model = request.model
        self.n_gpu_layers = n_gpu_layers
        self.split_weights = list(split_weights)
        self.placement = layer_placement(model.block_count, n_gpu_layers, split_weights)
        layer_bytes = model.layer_bytes()
        kv_bytes = kv_cache_layer_bytes(model, request.ctx_cells, request.cache_type_k, request.cache_type_v)
        count = len(request.devices)
        self.blocks = [0] * count
        self.weights = [0] * count
        self.kv = [0] * count
        self.output_device: Optional[int] = self.placement[-1]
        host_blocks = 0
        host_weights = model.input_bytes
        host_kv = 0
        for layer, device in enumerate(self.placement[:-1]):
            if device is None:
                host_blocks += 1
                host_weights += layer_bytes[layer]
                host_kv += kv_bytes[layer]
            else:
                self.blocks[device] += 1
                self.weights[device] += layer_bytes[layer]
                self.kv[device] += kv_bytes[layer]
        if self.output_device is None:
            host_weights += model.output_bytes
        else:
            self.weights[self.output_device] += model.output_bytes
        copies = PIPELINE_COPIES if count > 1 and n_gpu_layers > model.block_count else 1
        self.compute = [
            compute_buffer_bytes(
                model,
                request.ctx_cells,
                request.ubatch_tokens,
                request.flash_attention,
                has_layers=self.blocks[index] > 0,
                has_output=self.output_device == index,
                copies=copies,
            )
            for index in range(count)
        ]
        host_compute = host_compute_buffer_bytes(
            model, request.ctx_cells, request.ubatch_tokens, request.flash_attention
        )
        if host_blocks or self.output_device is None:
            host_compute += compute_buffer_bytes(
                model,
                request.ctx_cells,
                request.ubatch_tokens,
                request.flash_attention,
                has_layers=host_blocks > 0,
                has_output=self.output_device is None,
                copies=1,
            )
        # The logits llama.cpp copies back for the one sequence being decoded (llama_context's output buffer).
        host_compute += _f32_bytes(model.vocab_size)
        self.host_blocks = host_blocks
        self.host = {"weights": host_weights, "kv": host_kv, "compute": host_compute}
        self.totals = [self.weights[i] + self.kv[i] + self.compute[i] for i in range(count)]
        self.device_fits = [
            self.totals[i] / MIB + request.reserve_mib(device) <= device.memory_free_mib
            for i, device in enumerate(request.devices)
        ]
        self.host_total = host_weights + host_kv + host_compute
        self.host_fits = request.head_ram_free_mib is None or self.host_total / MIB <= request.head_ram_free_mib

    @property
    def fits(self) -> bool:
        return all(self.device_fits) and self.host_fits

    def overflow_mib(self, request: GGUFRequest) -> float:
        """How much more memory the devices would need, summed over those that overflow."""
        over = 0.0
        for index, device in enumerate(request.devices):
            need = self.totals[index] / MIB + request.reserve_mib(device)
            over += max(0.0, need - device.memory_free_mib)
        return over

    def tensor_split(self) -> List[float]:
        """Layer counts that reproduce this placement, the output layer counted on its device."""
        counts = [float(blocks) for blocks in self.blocks]
        if self.output_device is not None:
            counts[self.output_device] += 1
        return counts


class GGUFRequest:
    def __init__(
        self,
        model: GGUFModel,
        devices: Sequence[Dict[str, Any]],
        ctx_size: Optional[int] = None,
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
        n_gpu_layers: Optional[int] = None,
        tensor_split: Optional[Sequence[float]] = None,
        head_ram_free_mib: Optional[float] = None,
        ubatch_size: int = 512,
        flash_attention: bool = True,
    ):
        self.model = model
        self.devices, self.head_cpu = order_devices(devices)
        if ctx_size is None:
            ctx_size = min(DEFAULT_CTX_SIZE, model.context_length) if model.context_length else DEFAULT_CTX_SIZE
        if ctx_size <= 0:
            raise GGUFPlanError("ctx_size: give a positive number of tokens.", "ctx_size")
        for option, cache_type in (("cache_type_k", cache_type_k), ("cache_type_v", cache_type_v)):
            if cache_type not in KV_CACHE_TYPES:
                raise GGUFPlanError(
                    "{}: {!r} is not one of {}.".format(option, cache_type, ", ".join(KV_CACHE_TYPES)), option
                )
        if cache_type_v not in ("f16", "bf16", "f32") and not flash_attention:
            raise GGUFPlanError(
                "cache_type_v: llama.cpp quantizes the V cache only with flash attention; keep f16 or enable it.",
                "cache_type_v",
            )
        if ubatch_size <= 0:
            raise GGUFPlanError("ubatch_size: give a positive number of tokens.", "ubatch_size")
        if model.block_count <= 0 or model.embedding_length <= 0 or model.head_count <= 0:
            raise GGUFPlanError(
                f"model_files: {model.files[0]} lacks block_count/embedding_length/head_count metadata; it is not "
                "a transformer llama.cpp can split by layers.",
                "model_files",
            )
        self.ctx_size = ctx_size
        self.ctx_cells = -(-ctx_size // CONTEXT_PADDING) * CONTEXT_PADDING
        self.ubatch_tokens = min(ubatch_size, self.ctx_cells)
        self.ubatch_size = ubatch_size
        self.cache_type_k = cache_type_k
        self.cache_type_v = cache_type_v
        self.flash_attention = flash_attention
        self.n_gpu_layers = n_gpu_layers
        self.tensor_split = list(tensor_split) if tensor_split else None
        if head_ram_free_mib is None and self.head_cpu is not None:
            head_ram_free_mib = self.head_cpu.memory_free_mib
        self.head_ram_free_mib = head_ram_free_mib
        if self.tensor_split is not None:
            if len(self.tensor_split) != len(self.devices):
                raise GGUFPlanError(
                    "tensor_split: give one value per offload device ({} in llama.cpp's order: {}), not {}.".format(
                        len(self.devices), ", ".join(d.llama_name for d in self.devices), len(self.tensor_split)
                    ),
                    "tensor_split",
                )
            if any(value < 0 for value in self.tensor_split) or sum(self.tensor_split) <= 0:
                raise GGUFPlanError("tensor_split: values must be >= 0 and not all 0.", "tensor_split")
        if n_gpu_layers is not None and n_gpu_layers < 0:
            raise GGUFPlanError("n_gpu_layers: give 0 or more layers.", "n_gpu_layers")

    def reserve_mib(self, device: Device) -> float:
        return DEVICE_RESERVE_MIB

    def capacity_mib(self, device: Device) -> float:
        return max(0.0, device.memory_free_mib - self.reserve_mib(device))


def _rebalance(request: GGUFRequest, evaluation: _Evaluation) -> _Evaluation:
    """Move whole layers from devices that overflow to devices with room, keeping llama.cpp's contiguous ranges."""
    best = evaluation
    counts = evaluation.tensor_split()
    for _attempt in range(request.model.block_count * max(1, len(request.devices))):
        if all(best.device_fits):
            return best
        spare = [request.capacity_mib(device) - best.totals[i] / MIB for i, device in enumerate(request.devices)]
        donor = min(range(len(spare)), key=lambda i: spare[i])
        receivers = [i for i in range(len(spare)) if i != donor and spare[i] > 0]
        if spare[donor] >= 0 or not receivers or counts[donor] < 1:
            return best
        receiver = max(receivers, key=lambda i: spare[i])
        counts[donor] -= 1
        counts[receiver] += 1
        candidate = _Evaluation(request, best.n_gpu_layers, counts)
        if candidate.overflow_mib(request) >= best.overflow_mib(request):
            return best
        best = candidate
    return best


def _place(request: GGUFRequest) -> _Evaluation:
    model = request.model
    if not request.devices:
        return _Evaluation(request, 0, [])
    n_gpu_layers = model.block_count + 1 if request.n_gpu_layers is None else request.n_gpu_layers
    if request.tensor_split is not None:
        return _Evaluation(request, n_gpu_layers, request.tensor_split)
    by_free_memory = _Evaluation(request, n_gpu_layers, [device.memory_free_mib for device in request.devices])
    if by_free_memory.fits:
        return by_free_memory
    # Weigh by the room left after each device's fixed costs, then settle what is left layer by layer.
    fixed = [
        by_free_memory.compute[i] / MIB + (model.output_bytes / MIB if i == len(request.devices) - 1 else 0.0)
        for i in range(len(request.devices))
    ]
    room = [max(0.0, request.capacity_mib(device) - fixed[i]) for i, device in enumerate(request.devices)]
    if sum(room) <= 0:
        return by_free_memory
    by_room = _Evaluation(request, n_gpu_layers, room)
    return _rebalance(request, by_room)


def _fits_with(request: GGUFRequest, **changes: Any) -> bool:
    settings = dict(
        model=request.model,
        devices=[vars(device) for device in request.devices]
        + ([vars(request.head_cpu)] if request.head_cpu is not None else []),
        ctx_size=request.ctx_size,
        cache_type_k=request.cache_type_k,
        cache_type_v=request.cache_type_v,
        n_gpu_layers=request.n_gpu_layers,
        tensor_split=request.tensor_split,
        head_ram_free_mib=request.head_ram_free_mib,
        ubatch_size=request.ubatch_size,
        flash_attention=request.flash_attention,
    )
    settings.update(changes)
    return _place(GGUFRequest(**settings)).fits


def advice(request: GGUFRequest, evaluation: _Evaluation) -> str:
    """Why the plan does not fit, and what would."""
    model = request.model
    reasons = []
    for index, device in enumerate(request.devices):
        if not evaluation.device_fits[index]:
            need = format_size(evaluation.totals[index] / MIB + request.reserve_mib(device))
            free = format_size(device.memory_free_mib)
            reasons.append(f"{device.name} ({device.llama_name}) needs {need} but has {free} free")
    if not evaluation.host_fits:
        need = format_size(evaluation.host_total / MIB)
        free = format_size(request.head_ram_free_mib or 0.0)
        reasons.append(f"the head's RAM needs {need} but has {free} free")
    options = []
    if request.tensor_split is not None and _fits_with(request, tensor_split=None):
        options.append("drop tensor_split and let the planner split by memory")
    ctx = request.ctx_size
    while ctx > CONTEXT_PADDING:
        ctx = max(CONTEXT_PADDING, (ctx // 2) // CONTEXT_PADDING * CONTEXT_PADDING)
        if _fits_with(request, ctx_size=ctx, tensor_split=None):
            options.append(f"ctx_size {ctx} (now {request.ctx_size})")
            break
    cache_is_f16 = request.cache_type_k == "f16" and request.cache_type_v == "f16"
    for cache_type in ("q8_0", "q4_0") if request.flash_attention and cache_is_f16 else ():
        if _fits_with(request, cache_type_k=cache_type, cache_type_v=cache_type, tensor_split=None):
            options.append(f"cache_type_k/cache_type_v {cache_type}")
            break
    if request.devices:
        largest = max(request.devices, key=lambda device: device.memory_free_mib)
        for extra in range(1, 33):
            more = [vars(device) for device in request.devices] + [
                dict(
                    name=f"more{n}",
                    node=f"more{n}",
                    kind="rpc",
                    memory_free_mib=largest.memory_free_mib,
                )
                for n in range(extra)
            ]
            if request.head_cpu is not None:
                more.append(vars(request.head_cpu))
            if _fits_with(request, devices=more, tensor_split=None):
                free = format_size(largest.memory_free_mib)
                options.append(f"{extra} more device(s) with {free} free like {largest.name} (RPC workers or GPUs)")
                break
    needed = sum(evaluation.totals) / MIB + sum(request.reserve_mib(device) for device in request.devices)
    capacity = sum(device.memory_free_mib for device in request.devices)
    weights_mib = (model.total_bytes - model.input_bytes) / MIB
    if weights_mib > 0 and needed > capacity:
        target = max(0.0, weights_mib - (needed - capacity))
        bits_now = 8.0 * model.total_bytes / model.n_parameters if model.n_parameters else 0.0
        if target > 0:
            bits_needed = bits_now * target / weights_mib
            options.append(
                f"a smaller quantization: at most ~{bits_needed:.1f} bits per weight "
                f"(this file averages {bits_now:.2f})"
            )
    summary = "Does not fit: {}.".format("; ".join(reasons) or "not enough memory")
    if options:
        summary += " Any of these would fit: {}.".format("; ".join(options))
    else:
        summary += " Add devices or use a smaller model."
    return summary


def _layers_text(input_layers: int, blocks: int, output: int) -> str:
    return f"{input_layers} + {blocks} + {output}"


def render_table(request: GGUFRequest, evaluation: _Evaluation) -> str:
    model = request.model
    title = "ESTIMATE  {} ({}, {}, {}, {} layers)  ctx {:,}, KV {}/{}, ubatch {}, flash attention {}".format(
        model.name or model.architecture,
        model.architecture,
        model.file_type or "?",
        format_size(model.total_bytes / MIB),
        model.block_count,
        request.ctx_cells,
        request.cache_type_k,
        request.cache_type_v,
        request.ubatch_tokens,
        "on" if request.flash_attention else "off",
    )
    # llama-server runs where the head's RAM and local GPUs are.
    local = [device.node for device in request.devices if device.kind == "gpu" and device.node]
    head_node = request.head_cpu.node if request.head_cpu is not None and request.head_cpu.node else None
    head_node = head_node or (local[0] if local else "head")
    host = evaluation.host
    rows = [
        [
            "RAM",
            head_node,
            "cpu",
            _layers_text(1, evaluation.host_blocks, 1 if evaluation.output_device is None else 0),
            format_size(host["weights"] / MIB),
            format_size(host["kv"] / MIB),
            format_size(host["compute"] / MIB),
            format_size(evaluation.host_total / MIB),
            format_size(request.head_ram_free_mib) if request.head_ram_free_mib is not None else "?",
            "yes" if evaluation.host_fits else "NO",
        ]
    ]
    for index, device in enumerate(request.devices):
        rows.append(
            [
                f"{device.llama_name} {device.name}" if device.name != device.llama_name else device.name,
                device.node,
                device.kind,
                _layers_text(0, evaluation.blocks[index], 1 if evaluation.output_device == index else 0),
                format_size(evaluation.weights[index] / MIB),
                format_size(evaluation.kv[index] / MIB),
                format_size(evaluation.compute[index] / MIB),
                format_size(evaluation.totals[index] / MIB),
                format_size(device.memory_free_mib),
                "yes" if evaluation.device_fits[index] else "NO",
            ]
        )
    headers = [
        "device",
        "node",
        "kind",
        "layers (i + t + o)",
        "weights",
        "kv cache",
        "compute",
        "total",
        "free",
        "fits",
    ]
    return render_box(title, headers, rows)


def plan_gguf(model: GGUFModel, devices: Sequence[Dict[str, Any]], **options: Any) -> Dict[str, Any]:
    """The placement, flags and memory of serving ``model`` on ``devices`` with llama.cpp (see the module doc)."""
    request = GGUFRequest(model, devices, **options)
    evaluation = _place(request)
    split = evaluation.tensor_split() if request.devices else []
    fits = evaluation.fits
    device_rows = []
    for index, device in enumerate(request.devices):
        device_rows.append(
            {
                "name": device.name,
                "node": device.node,
                "kind": device.kind,
                "llama_device": device.llama_name,
                "layers": evaluation.blocks[index],
                "output_layer": evaluation.output_device == index,
                "weights_mib": _mib(evaluation.weights[index]),
                "kv_cache_mib": _mib(evaluation.kv[index]),
                "compute_buffer_mib": _mib(evaluation.compute[index]),
                "total_mib": _mib(evaluation.totals[index]),
                "reserve_mib": request.reserve_mib(device),
                "free_mib": device.memory_free_mib,
                "fits": evaluation.device_fits[index],
            }
        )
    offloaded = sum(evaluation.blocks)
    return {
        "fits": fits,
        "n_gpu_layers": evaluation.n_gpu_layers,
        "tensor_split": split,
        "tensor_split_arg": ",".join(f"{value:g}" for value in split),
        "ctx_size": request.ctx_size,
        "ctx_cells": request.ctx_cells,
        "cache_type_k": request.cache_type_k,
        "cache_type_v": request.cache_type_v,
        "ubatch_size": request.ubatch_size,
        "flash_attention": request.flash_attention,
        "layers": {
            "input": 1,
            "transformer": offloaded,
            "output": 0 if evaluation.output_device is None else 1,
            "on_head": evaluation.host_blocks,
        },
        "devices": device_rows,
        "head_ram_mib": _mib(evaluation.host_total),
        "head": {
            "weights_mib": _mib(evaluation.host["weights"]),
            "kv_cache_mib": _mib(evaluation.host["kv"]),
            "compute_buffer_mib": _mib(evaluation.host["compute"]),
            "total_mib": _mib(evaluation.host_total),
            "free_mib": request.head_ram_free_mib,
            "fits": evaluation.host_fits,
        },
        "table": render_table(request, evaluation),
        "advice": None if fits else advice(request, evaluation),
        "model": model.to_dict(),
    }
