# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""GGUF files in the shapes of real models, written with gguf.GGUFWriter.

Only the header, the metadata and the tensor infos are written; each file is then truncated to its full length,
so the data region is a hole in a sparse file. gguf.GGUFReader maps such a file like a downloaded one, and the
30 GB of Qwen2.5-72B's seven splits cost a few hundred KB on disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import gguf
import numpy as np

# name, shape in ggml order (ne0 first, the row length), ggml type name
TensorSpec = Tuple[str, Tuple[int, ...], str]
MetadataValue = Union[int, float, str, Sequence[int]]


def tensor_bytes(shape: Sequence[int], type_name: str) -> int:
    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return math.prod(shape) * type_size // block_size


def write_sparse_gguf(
    path: Path,
    architecture: str,
    metadata: Dict[str, MetadataValue],
    tensors: Sequence[TensorSpec],
    splits: int = 1,
) -> List[Path]:
    """Write the model at ``path`` (or its ``splits`` split files next to it); returns the files written."""
    writer = gguf.GGUFWriter(
        str(path), architecture, split_max_tensors=math.ceil(len(tensors) / splits) if splits > 1 else 0
    )
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    for name, shape, type_name in tensors:
        # GGUFWriter takes numpy's order (outermost first) and writes ggml's order.
        writer.add_tensor_info(
            name,
            tuple(reversed(shape)),
            np.dtype(np.float32),
            tensor_bytes(shape, type_name),
            raw_dtype=gguf.GGMLQuantizationType[type_name],
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    files = writer.format_shard_names(Path(path))
    for handle, shard in zip(writer.fout, writer.tensors):
        data_start = gguf.GGUFWriter.ggml_pad(handle.tell(), writer.data_alignment)
        data_length = sum(gguf.GGUFWriter.ggml_pad(info.nbytes, writer.data_alignment) for info in shard.values())
        handle.truncate(data_start + data_length)
    writer.close()
    return files


def llama_style_tensors(
    block_count: int,
    embedding_length: int,
    feed_forward_length: int,
    head_count: int,
    head_count_kv: int,
    vocab_size: int,
    layer_types: Dict[str, str],
    embedding_type: str,
    output_type: Union[str, None],
    attention_bias: bool = False,
) -> List[TensorSpec]:
    """The tensors convert_hf_to_gguf.py writes for a Llama/Qwen2 model; ``output_type`` None ties the output."""
    head_dim = embedding_length // head_count
    kv_width = head_dim * head_count_kv
    tensors: List[TensorSpec] = [("token_embd.weight", (embedding_length, vocab_size), embedding_type)]
    for layer in range(block_count):
        prefix = f"blk.{layer}."
        tensors += [
            (prefix + "attn_norm.weight", (embedding_length,), "F32"),
            (prefix + "attn_q.weight", (embedding_length, embedding_length), layer_types["attn_q"]),
            (prefix + "attn_k.weight", (embedding_length, kv_width), layer_types["attn_k"]),
            (prefix + "attn_v.weight", (embedding_length, kv_width), layer_types["attn_v"]),
            (prefix + "attn_output.weight", (embedding_length, embedding_length), layer_types["attn_output"]),
            (prefix + "ffn_norm.weight", (embedding_length,), "F32"),
            (prefix + "ffn_gate.weight", (embedding_length, feed_forward_length), layer_types["ffn_gate"]),
            (prefix + "ffn_up.weight", (embedding_length, feed_forward_length), layer_types["ffn_up"]),
            (prefix + "ffn_down.weight", (feed_forward_length, embedding_length), layer_types["ffn_down"]),
        ]
        if attention_bias:
            tensors += [
                (prefix + "attn_q.bias", (embedding_length,), "F32"),
                (prefix + "attn_k.bias", (kv_width,), "F32"),
                (prefix + "attn_v.bias", (kv_width,), "F32"),
            ]
    tensors.append(("output_norm.weight", (embedding_length,), "F32"))
    if output_type is not None:
        tensors.append(("output.weight", (embedding_length, vocab_size), output_type))
    return tensors


# Qwen2.5-72B-Instruct (config.json: 80 layers, hidden 8192, 64 heads, 8 KV heads, intermediate 29568,
# vocab 152064, max_position_embeddings 32768). The q2_k file's types follow llama.cpp's Q2_K mix
# (llama_tensor_get_type): Q2_K by default; attn_v Q4_K bumped to Q5_K on a 70B-class model with GQA;
# attn_output and ffn_down Q3_K, where ffn_down's rows of 29568 are not a multiple of 256, so it falls back to
# a 32-block 4.5-bit type (IQ4_NL in the 2024 quantizer); output Q6_K; token_embd Q2_K. That makes
# 29.80 GB in 963 tensors, the size the hub lists for the seven q2_k splits.
QWEN25_72B_METADATA: Dict[str, MetadataValue] = {
    "general.name": "qwen2.5-72b-instruct",
    "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q2_K),
    "qwen2.block_count": 80,
    "qwen2.context_length": 32768,
    "qwen2.embedding_length": 8192,
    "qwen2.feed_forward_length": 29568,
    "qwen2.attention.head_count": 64,
    "qwen2.attention.head_count_kv": 8,
    "qwen2.rope.freq_base": 1000000.0,
    "qwen2.attention.layer_norm_rms_epsilon": 1e-06,
    "general.quantization_version": 2,
}
QWEN25_72B_Q2_K_LAYER_TYPES = {
    "attn_q": "Q2_K",
    "attn_k": "Q2_K",
    "attn_v": "Q5_K",
    "attn_output": "Q3_K",
    "ffn_gate": "Q2_K",
    "ffn_up": "Q2_K",
    "ffn_down": "IQ4_NL",
}


def write_qwen25_72b_q2_k(directory: Path) -> List[Path]:
    tensors = llama_style_tensors(
        block_count=80,
        embedding_length=8192,
        feed_forward_length=29568,
        head_count=64,
        head_count_kv=8,
        vocab_size=152064,
        layer_types=QWEN25_72B_Q2_K_LAYER_TYPES,
        embedding_type="Q2_K",
        output_type="Q6_K",
        attention_bias=True,
    )
    return write_sparse_gguf(
        directory / "qwen2.5-72b-instruct-q2_k.gguf", "qwen2", QWEN25_72B_METADATA, tensors, splits=7
    )


# Llama-3.1-8B-Instruct (32 layers, hidden 4096, 32 heads, 8 KV heads, intermediate 14336, vocab 128256,
# max_position_embeddings 131072) at Q4_K_M: Q4_K with Q6_K on half of attn_v and ffn_down (use_more_bits:
# the first and last eighth and every third layer between), output Q6_K.
LLAMA31_8B_METADATA: Dict[str, MetadataValue] = {
    "general.name": "Meta Llama 3.1 8B Instruct",
    "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q4_K_M),
    "llama.block_count": 32,
    "llama.context_length": 131072,
    "llama.embedding_length": 4096,
    "llama.feed_forward_length": 14336,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
    "llama.rope.freq_base": 500000.0,
    "llama.vocab_size": 128256,
}


def use_more_bits(layer: int, layer_count: int) -> bool:
    return layer < layer_count // 8 or layer >= 7 * layer_count // 8 or (layer - layer_count // 8) % 3 == 2


def write_llama31_8b_q4_k_m(directory: Path) -> List[Path]:
    tensors = llama_style_tensors(
        block_count=32,
        embedding_length=4096,
        feed_forward_length=14336,
        head_count=32,
        head_count_kv=8,
        vocab_size=128256,
        layer_types={name: "Q4_K" for name in QWEN25_72B_Q2_K_LAYER_TYPES},
        embedding_type="Q4_K",
        output_type="Q6_K",
    )
    # Llama 3.1's rope scaling factors, one per frequency (head_dim / 2), as the converter adds them.
    mixed = [("rope_freqs.weight", (64,), "F32")]
    for name, shape, type_name in tensors:
        if name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(int(name.split(".")[1]), 32):
            type_name = "Q6_K"
        mixed.append((name, shape, type_name))
    return write_sparse_gguf(directory / "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "llama", LLAMA31_8B_METADATA, mixed)


# The sandbox's tiny random Llama (hidden 256, 4 heads, 2 KV heads, 4 layers, vocab 512) as
# convert_hf_to_gguf.py writes it in f16, with tied embeddings (no output.weight).
TINY_LLAMA_METADATA: Dict[str, MetadataValue] = {
    "general.name": "tiny-llama",
    "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
    "llama.block_count": 4,
    "llama.context_length": 2048,
    "llama.embedding_length": 256,
    "llama.feed_forward_length": 512,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.vocab_size": 512,
}


def write_tiny_llama_f16(directory: Path, tied_embeddings: bool = True) -> List[Path]:
    """The tiny Llama in f16; ``tied_embeddings=False`` adds an f16 ``output.weight``, as the sandbox's
    converted model has (its llama-server log counts the output layer's bytes on the last device)."""
    tensors = llama_style_tensors(
        block_count=4,
        embedding_length=256,
        feed_forward_length=512,
        head_count=4,
        head_count_kv=2,
        vocab_size=512,
        layer_types={name: "F16" for name in QWEN25_72B_Q2_K_LAYER_TYPES},
        embedding_type="F16",
        output_type=None if tied_embeddings else "F16",
    )
    return write_sparse_gguf(directory / "tiny-llama-f16.gguf", "llama", TINY_LLAMA_METADATA, tensors)
