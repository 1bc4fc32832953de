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
  of ``head_count_kv x head_dim`` values in ``cache_type_k``/``cache_type_v``), and the compute buffer that
  ``sched_reserve`` sizes from the reserve graph (one micro-batch over the whole cache): the split inputs the
  scheduler copies onto the device, plus the intermediate tensors of its layers as ggml-alloc places them
  (``compute_buffer_bytes``). Checked against fourteen llama-server runs
  (tests/unit/fixtures/llama_cpp/captured/); dense Llama-style blocks only, mixture-of-experts FFNs are not
  modelled.

The planner first lets free memory weigh the devices, as llama.cpp would; when that overfills one device it
moves whole layers to devices with room, and prints the resulting split as layer counts
(``--tensor-split 40,41``), which llama.cpp turns back into exactly those layers.
"""

from __future__ import annotations

import bisect
import functools
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
# llama-server's --parallel auto: four sequences sharing one KV cache (kv_unified), each with its logits row.
DEFAULT_PARALLEL = 4


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


class _GraphAllocator:
    """ggml-alloc's dynamic allocator (``ggml_dyn_tallocr`` in ggml/src/ggml-alloc.c) for one backend buffer.

    Free blocks are kept sorted by offset, the last one being the open end of the buffer. A tensor goes into the
    smallest free block that holds it (the last such block among equals), else at the open end, which grows the
    buffer; freed memory merges with its neighbours. The buffer's size is the highest end ever used, so it
    includes the holes the order of allocation leaves, which a sum of live tensors would miss.
    """

    def __init__(self) -> None:
        self.free: List[List[int]] = [[0, 1 << 62]]
        self.size = 0

    def allocate(self, size: int) -> int:
        best = -1
        for index, (_offset, room) in enumerate(self.free[:-1]):
            if room >= size and (best < 0 or room <= self.free[best][1]):
                best = index
        if best < 0:
            best = len(self.free) - 1
        block = self.free[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.free[best]
        self.size = max(self.size, offset + size)
        return offset

    def release(self, offset: int, size: int) -> None:
        for index, block in enumerate(self.free):
            if block[0] + block[1] == offset:
                block[1] += size
                if index + 1 < len(self.free) and block[0] + block[1] == self.free[index + 1][0]:
                    block[1] += self.free.pop(index + 1)[1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if index > 0 and self.free[index - 1][0] + self.free[index - 1][1] == offset:
                    self.free[index - 1][1] += self.free.pop(index)[1]
                return
        position = 0
        while position < len(self.free) and self.free[position][0] < offset:
            position += 1
        self.free.insert(position, [offset, size])


# A graph node: (name, bytes, parents, in-place). ggml-alloc lets an op that can work in place (add, mul, norm,
# rope, softmax: ggml_op_can_inplace) take over a same-sized parent that has no other consumer; a tensor is
# freed once its last consumer is allocated. Nodes of 0 bytes stand for writes into the KV cache (set_rows
# returns a view of the cache, which lives in its own buffer).
_Node = Tuple[str, int, Tuple[str, ...], bool]


def _peak_of(nodes: Sequence[_Node]) -> int:
    """The buffer ggml-alloc needs for ``nodes`` in this order; parents that are not nodes are the split's
    inputs, which live elsewhere in the buffer and are never freed."""
    consumers: Dict[str, int] = {}
    for _name, _size, parents, _inplace in nodes:
        for parent in parents:
            consumers[parent] = consumers.get(parent, 0) + 1
    allocator = _GraphAllocator()
    placed: Dict[str, Tuple[int, int]] = {}
    for name, size, parents, inplace in nodes:
        reused = None
        if inplace:
            reused = next(
                (p for p in parents if p in placed and consumers[p] == 1 and placed[p][1] == size),
                None,
            )
        if reused is not None:
            placed[name] = placed.pop(reused)
        elif size > 0:
            placed[name] = (allocator.allocate(size), size)
        for parent in parents:
            consumers[parent] -= 1
            if consumers[parent] == 0 and parent in placed:
                allocator.release(*placed.pop(parent))
    return allocator.size


def _layer_nodes(
    index: int, residual: str, tokens: int, outputs: int, shape: Tuple[int, ...], flash_attention: bool, last: bool
) -> Tuple[List[_Node], str]:
    """One transformer block of llama.cpp's graph (src/models/llama.cpp and its kin: pre-norm attention, then a
    gated FFN), as it reaches ggml-alloc. The last block keeps only the rows of the tokens that produce logits
    (``get_rows`` with ``inp_out_ids``) before its FFN."""
    hidden, q_width, k_width, v_width, attn_width, feed_forward, heads, ctx_cells = shape
    i = str(index)
    nodes: List[_Node] = [
        ("attn_norm" + i, _f32_bytes(hidden, tokens), (residual,), False),  # rms_norm: the residual is used again
        ("attn_norm_w" + i, _f32_bytes(hidden, tokens), ("attn_norm" + i,), True),
        ("Qcur" + i, _f32_bytes(q_width, tokens), ("attn_norm_w" + i,), False),
        ("Qrope" + i, _f32_bytes(q_width, tokens), ("Qcur" + i,), True),
        ("Vcur" + i, _f32_bytes(v_width, tokens), ("attn_norm_w" + i,), False),
        ("Kcur" + i, _f32_bytes(k_width, tokens), ("attn_norm_w" + i,), False),
        ("Krope" + i, _f32_bytes(k_width, tokens), ("Kcur" + i,), True),
        ("cache_k" + i, 0, ("Krope" + i,), False),
        ("cache_v" + i, 0, ("Vcur" + i,), False),
    ]
    if flash_attention:
        # flash_attn_ext reads Q and the cache and writes [head_dim_v, heads, tokens] in f32.
        nodes.append(("kqv_out" + i, _f32_bytes(attn_width, tokens), ("Qrope" + i,), False))
    else:
        # KQ scores of every head over the whole cache, softmax in place, then KQV and its contiguous copy.
        nodes += [
            ("kq" + i, _f32_bytes(ctx_cells, tokens, heads), ("Qrope" + i,), False),
            ("kq_soft_max" + i, _f32_bytes(ctx_cells, tokens, heads), ("kq" + i,), True),
            ("kqv" + i, _f32_bytes(attn_width, tokens), ("kq_soft_max" + i,), False),
            ("kqv_out" + i, _f32_bytes(attn_width, tokens), ("kqv" + i,), False),
        ]
    nodes.append(("attn_out" + i, _f32_bytes(hidden, tokens), ("kqv_out" + i,), False))
    attention, rows = "attn_out" + i, tokens
    if last:
        rows = outputs
        nodes += [
            ("attn_rows" + i, _f32_bytes(hidden, rows), (attention,), False),
            ("residual_rows" + i, _f32_bytes(hidden, rows), (residual,), False),
        ]
        attention, residual = "attn_rows" + i, "residual_rows" + i
    nodes += [
        ("ffn_inp" + i, _f32_bytes(hidden, rows), (attention, residual), True),
        ("ffn_norm" + i, _f32_bytes(hidden, rows), ("ffn_inp" + i,), False),
        ("ffn_norm_w" + i, _f32_bytes(hidden, rows), ("ffn_norm" + i,), True),
        ("ffn_gate" + i, _f32_bytes(feed_forward, rows), ("ffn_norm_w" + i,), False),
        ("ffn_up" + i, _f32_bytes(feed_forward, rows), ("ffn_norm_w" + i,), False),
        ("ffn_swiglu" + i, _f32_bytes(feed_forward, rows), ("ffn_gate" + i, "ffn_up" + i), False),
        ("ffn_out" + i, _f32_bytes(hidden, rows), ("ffn_swiglu" + i,), False),
        ("l_out" + i, _f32_bytes(hidden, rows), ("ffn_out" + i, "ffn_inp" + i), True),
    ]
    return nodes, "l_out" + i


# Layers are alike, so the allocator's pattern repeats after a couple of them; simulating more changes nothing.
_STEADY_LAYERS = 3


@functools.lru_cache(maxsize=4096)
def _activation_bytes(
    shape: Tuple[int, ...],
    vocab: int,
    tokens: int,
    outputs: int,
    flash_attention: bool,
    layers: int,
    last_layer: bool,
    output: bool,
    embeddings: bool,
) -> int:
    """The intermediate tensors of one backend's part of the reserve graph (its compute buffer minus inputs).

    ``layers`` blocks (the model's last among them when ``last_layer``), then the output norm and logits when
    ``output``. With ``embeddings`` the backend computes the input embeddings (``get_rows`` of ``token_embd``,
    freed after the first block); otherwise its first block reads the hidden state copied in from the previous
    backend, which the scheduler keeps for the whole graph and which is counted with the inputs.
    """
    hidden = shape[0]
    nodes: List[_Node] = []
    residual = "split_input"
    if embeddings:
        nodes.append(("split_input", _f32_bytes(hidden, tokens), (), False))
    full = layers - (1 if last_layer else 0)
    for index in range(min(full, _STEADY_LAYERS)):
        block, residual = _layer_nodes(index, residual, tokens, outputs, shape, flash_attention, last=False)
        nodes += block
    if last_layer:
        block, residual = _layer_nodes(full, residual, tokens, outputs, shape, flash_attention, last=True)
        nodes += block
    if output:
        nodes += [
            ("result_norm", _f32_bytes(hidden, outputs), (residual,), True),
            ("result_norm_w", _f32_bytes(hidden, outputs), ("result_norm",), True),
            ("result_output", _f32_bytes(vocab, outputs), ("result_norm_w",), False),
        ]
    return _peak_of(nodes)


def _graph_shape(model: GGUFModel, ctx_cells: int) -> Tuple[int, ...]:
    heads_kv = max(model.head_count_kv) if model.head_count_kv else model.head_count
    return (
        model.embedding_length,
        model.key_length * model.head_count,
        model.key_length * heads_kv,
        model.value_length * heads_kv,
        model.value_length * model.head_count,
        model.feed_forward_length,
        model.head_count,
        ctx_cells,
    )


def graph_input_bytes(
    model: GGUFModel, ctx_cells: int, tokens: int, outputs: int, flash_attention: bool
) -> Dict[str, int]:
    """The reserve graph's input tensors (llm_graph_input_* in src/llama-graph.cpp) for a micro-batch of ``tokens``.

    The KQ mask covers every cache cell for every token, in f16 with flash attention and f32 without; without
    flash attention the V cache is transposed, so its row indices (``v_idxs``) name every value, not every token.
    """
    heads_kv = max(model.head_count_kv) if model.head_count_kv else model.head_count
    return {
        "tokens": 4 * tokens,
        "embd": _f32_bytes(model.embedding_length, tokens),
        "pos": 4 * tokens,
        "k_idxs": 8 * tokens,
        "v_idxs": 8 * tokens * (1 if flash_attention else model.value_length * heads_kv),
        "kq_mask": (2 if flash_attention else 4) * ctx_cells * tokens,
        "out_ids": 4 * outputs,
    }


def compute_buffer_bytes(
    model: GGUFModel,
    ctx_cells: int,
    tokens: int,
    outputs: int,
    flash_attention: bool,
    layers: int,
    last_layer: bool,
    output: bool,
    copies: int,
) -> int:
    """An offload device's compute buffer after llama.cpp's reserve (``sched_reserve`` in src/llama-context.cpp).

    The reserve graph is one micro-batch of ``tokens`` over the whole cache with ``outputs`` logits rows. The
    scheduler gives the device one split; what the split reads from other backends (the hidden state, the
    positions, the cache row indices, the KQ mask, and on the device with the last block the output row ids) is
    copied into this buffer once per pipeline copy and never freed. The rest is the peak of the split's
    intermediate tensors as ggml-alloc places them (``_activation_bytes``).
    """
    if layers <= 0 and not output:
        return 0
    inputs = graph_input_bytes(model, ctx_cells, tokens, outputs, flash_attention)
    if layers > 0:
        copied = inputs["embd"] + inputs["pos"] + inputs["k_idxs"] + inputs["v_idxs"] + inputs["kq_mask"]
        copied += inputs["out_ids"] if last_layer else 0
    else:
        copied = _f32_bytes(model.embedding_length, outputs)  # only the output layer: the last block's rows
    activations = _activation_bytes(
        _graph_shape(model, ctx_cells),
        model.vocab_size,
        tokens,
        outputs,
        flash_attention,
        layers,
        last_layer,
        output,
        embeddings=False,
    )
    return copies * copied + activations


def host_compute_buffer_bytes(
    model: GGUFModel,
    ctx_cells: int,
    tokens: int,
    outputs: int,
    flash_attention: bool,
    layers: int,
    output: bool,
    copies: int,
) -> int:
    """The CPU's compute buffer on the head: the graph's inputs (set there, then copied to the devices), once
    per pipeline copy, and the input embeddings (``get_rows`` of ``token_embd``, which stays on the CPU); with
    layers kept on the CPU, their intermediate tensors as well (the first ``layers`` blocks)."""
    inputs = sum(graph_input_bytes(model, ctx_cells, tokens, outputs, flash_attention).values())
    activations = _activation_bytes(
        _graph_shape(model, ctx_cells),
        model.vocab_size,
        tokens,
        outputs,
        flash_attention,
        layers,
        layers == model.block_count,
        output,
        embeddings=True,
    )
    return copies * inputs + activations


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
        # llama.cpp pipelines micro-batches across devices (four copies of every split input) when there are
        # several devices and every layer, the output layer included, is offloaded (llama_context's constructor).
        copies = PIPELINE_COPIES if count > 1 and n_gpu_layers > model.block_count else 1
        last_block_device = self.placement[model.block_count - 1]
        self.compute = [
            compute_buffer_bytes(
                model,
                request.ctx_cells,
                request.graph_tokens,
                request.graph_outputs,
                request.flash_attention,
                layers=self.blocks[index],
                last_layer=last_block_device == index,
                output=self.output_device == index,
                copies=copies,
            )
            for index in range(count)
        ]
        host_compute = host_compute_buffer_bytes(
            model,
            request.ctx_cells,
            request.graph_tokens,
            request.graph_outputs,
            request.flash_attention,
            layers=host_blocks,
            output=self.output_device is None,
            copies=copies,
        )
        # llama_context's host "output buffer": one row of logits per sequence, copied back after each step.
        host_output = _f32_bytes(model.vocab_size, request.parallel)
        self.host_blocks = host_blocks
        self.host = {"weights": host_weights, "kv": host_kv, "compute": host_compute, "output": host_output}
        self.totals = [self.weights[i] + self.kv[i] + self.compute[i] for i in range(count)]
        self.device_fits = [
            self.totals[i] / MIB + request.reserve_mib(device) <= device.memory_free_mib
            for i, device in enumerate(request.devices)
        ]
        self.host_total = host_weights + host_kv + host_compute + host_output
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
        parallel: int = DEFAULT_PARALLEL,
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
        if parallel <= 0:
            raise GGUFPlanError(
                "parallel: give a positive number of sequences (llama-server's --parallel).", "parallel"
            )
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
        self.parallel = parallel
        # The reserve graph (llama_context::graph_reserve): the micro-batch rounded up to a whole number of tokens
        # per sequence, with one logits row per sequence.
        self.graph_tokens = -(-self.ubatch_tokens // parallel) * parallel
        self.graph_outputs = min(self.graph_tokens, parallel)
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
        parallel=request.parallel,
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
        "parallel": request.parallel,
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
            "output_buffer_mib": _mib(evaluation.host["output"]),
            "total_mib": _mib(evaluation.host_total),
            "free_mib": request.head_ram_free_mib,
            "fits": evaluation.host_fits,
        },
        "table": render_table(request, evaluation),
        "advice": None if fits else advice(request, evaluation),
        "model": model.to_dict(),
    }
