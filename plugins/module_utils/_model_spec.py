# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the parallel planner needs to know about a model, read from its files without its weights.

The shape comes from ``config.json`` (nested ``text_config`` and the key spellings of the common
architectures included). The weight size comes from ``model.safetensors.index.json``
(``metadata.total_size``) or from the safetensors headers (an 8-byte little-endian length followed by a
JSON header that names every tensor's dtype and shape), so shards need not be present. From the Hugging
Face Hub only ``config.json`` and the safetensors metadata are fetched, never a weight.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

GIB = 1024**3

# Bits per element of each safetensors dtype (sub-byte types exist since safetensors 0.6).
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

TORCH_DTYPE_BYTES = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
}

# vLLM derives the longest context from whichever of these keys the config has, taking the smallest
# (vllm/config/model.py _get_and_verify_max_len).
MAX_LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)

# RoPE types whose "factor" does not stretch the trained context (vLLM leaves these alone).
ROPE_TYPES_WITHOUT_STRETCH = ("su", "longrope", "llama3", "default", "mrope")

INDEX_FILE = "model.safetensors.index.json"
PYTORCH_INDEX_FILE = "pytorch_model.bin.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024

_LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class ModelSpecError(ValueError):
    """The model's files cannot be read or do not describe a decoder the planner knows."""

    def __init__(self, message: str, field: str = "model_dir") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class QuantizationSpec:
    """The ``quantization_config`` parts that constrain tensor parallelism."""

    method: str
    bits: Optional[int] = None
    # Rows of the input dimension that share one scale; -1 means one scale per output channel.
    group_size: Optional[int] = None
    weight_block_size: Optional[Tuple[int, int]] = None

    @property
    def is_grouped_int(self) -> bool:
        """AWQ and GPTQ kernels need every TP shard's input rows to hold whole groups."""
        return self.method in ("awq", "gptq", "awq_marlin", "gptq_marlin") and bool(
            self.group_size and self.group_size > 0
        )


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek V2/V3/R1): the KV cache holds one latent vector per token."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: Optional[int] = None

    @property
    def latent_size(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class MoESpec:
    """Mixture-of-experts layout; experts are split across TP ranks like any linear layer."""

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_expert_intermediate_size: int = 0
    moe_layers: Tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A decoder model as the planner sees it."""

    name: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    max_model_len: int
    dtype: str
    tie_word_embeddings: bool
    weights_bytes: int
    weights_source: str
    mla: Optional[MLASpec] = None
    moe: Optional[MoESpec] = None
    quantization: Optional[QuantizationSpec] = None
    # Multi-token-prediction layers shipped after the last decoder layer; vLLM does not load them.
    mtp_layers: int = 0
    # Bytes of those MTP tensors inside ``weights_bytes`` (estimated when only the index is known).
    mtp_bytes: int = 0
    # A tied checkpoint that still stores lm_head.weight (Qwen3-0.6B does): vLLM reuses the embedding and skips it.
    tied_head_bytes: int = 0

    @property
    def dtype_bytes(self) -> int:
        return TORCH_DTYPE_BYTES.get(self.dtype, 2)

    @property
    def loaded_weights_bytes(self) -> int:
        """What vLLM loads onto GPUs: the checkpoint minus the MTP layers and the tied output head it skips."""
        return self.weights_bytes - self.mtp_bytes - self.tied_head_bytes

    @property
    def embedding_bytes(self) -> int:
        """One vocabulary-by-hidden matrix as stored (embeddings stay unquantized in AWQ/GPTQ/FP8 checkpoints)."""
        return self.vocab_size * self.hidden_size * self.dtype_bytes

    def to_dict(self) -> Dict[str, Any]:
        summary = asdict(self)
        summary["loaded_weights_bytes"] = self.loaded_weights_bytes
        return summary


# ---------------------------------------------------------------------------------------------------------
# config.json


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = config.get(key)
        if value is not None:
            return value
    return None


def _positive_int(config: Mapping[str, Any], keys: Tuple[str, ...], what: str, source: str) -> int:
    value = _first(config, *keys)
    if value is None:
        raise ModelSpecError(
            "{} has no {} (looked for {}): the planner cannot size this model.".format(source, what, ", ".join(keys))
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ModelSpecError(f"{source} has {keys[0]}={value!r}; a positive integer is needed.")
    return int(value)


def language_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The text decoder's settings: ``text_config`` (multimodal and newer configs) over the top level."""
    nested = config.get("text_config") or config.get("llm_config") or config.get("language_config")
    merged = {key: value for key, value in config.items() if key not in ("text_config", "vision_config")}
    if isinstance(nested, Mapping):
        merged.update({key: value for key, value in nested.items() if value is not None})
    return merged


def derive_max_model_len(config: Mapping[str, Any]) -> int:
    """The context length vLLM allows by default for this config (smallest length key, RoPE stretch applied)."""
    lengths = [int(config[key]) for key in MAX_LENGTH_KEYS if isinstance(config.get(key), (int, float))]
    derived = min(lengths) if lengths else 2048
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if isinstance(rope, Mapping):
        rope_type = str(rope.get("rope_type") or rope.get("type") or "default")
        factor = rope.get("factor")
        if rope_type not in ROPE_TYPES_WITHOUT_STRETCH and isinstance(factor, (int, float)) and factor > 1:
            if rope_type == "yarn" and isinstance(rope.get("original_max_position_embeddings"), int):
                derived = rope["original_max_position_embeddings"]
            derived = int(derived * factor)
    return derived


def _torch_dtype(config: Mapping[str, Any]) -> str:
    raw = str(_first(config, "torch_dtype", "dtype") or "").replace("torch.", "")
    if raw in ("bfloat16", "float16", "half"):
        return "float16" if raw == "half" else raw
    if config.get("bf16") is True:
        return "bfloat16"
    if config.get("fp16") is True:
        return "float16"
    # vLLM serves float32 checkpoints (and configs without a dtype) in bfloat16 on GPUs that have it.
    return "bfloat16"


def _quantization(config: Mapping[str, Any], extra: Optional[Mapping[str, Any]]) -> Optional[QuantizationSpec]:
    raw = config.get("quantization_config") or extra
    if not isinstance(raw, Mapping):
        return None
    method = str(raw.get("quant_method") or raw.get("quant_type") or ("gptq" if "bits" in raw else "unknown"))
    block = raw.get("weight_block_size")
    group = raw.get("group_size", raw.get("q_group_size"))
    return QuantizationSpec(
        method=method.lower(),
        bits=int(raw["bits"]) if isinstance(raw.get("bits"), int) else None,
        group_size=int(group) if isinstance(group, int) else None,
        weight_block_size=(int(block[0]), int(block[1])) if isinstance(block, list) and len(block) == 2 else None,
    )


def _moe(config: Mapping[str, Any], num_layers: int, intermediate_size: int) -> Optional[MoESpec]:
    num_experts = _first(config, "n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
    if not isinstance(num_experts, int) or num_experts <= 1:
        return None
    experts_per_token = int(_first(config, "num_experts_per_tok", "moe_topk", "num_selected_experts") or 1)
    expert_size = int(_first(config, "moe_intermediate_size", "expert_intermediate_size") or intermediate_size)
    shared = 0
    if isinstance(config.get("n_shared_experts"), int):
        shared = config["n_shared_experts"] * expert_size
    elif isinstance(config.get("shared_expert_intermediate_size"), int):
        shared = config["shared_expert_intermediate_size"]
    first_dense = int(config.get("first_k_dense_replace") or 0)
    frequency = int(config.get("moe_layer_freq") or 1)
    sparse_step = int(config.get("decoder_sparse_step") or 1)
    dense_only = set(config.get("mlp_only_layers") or [])
    moe_layers = tuple(
        index
        for index in range(num_layers)
        if index >= first_dense
        and index % frequency == 0
        and (index + 1) % sparse_step == 0
        and index not in dense_only
    )
    return MoESpec(
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        expert_intermediate_size=expert_size,
        shared_expert_intermediate_size=shared,
        moe_layers=moe_layers,
    )


def parse_config(
    config: Mapping[str, Any],
    name: str = "model",
    weights_bytes: int = 0,
    weights_source: str = "unknown",
    quantize_config: Optional[Mapping[str, Any]] = None,
    mtp_weight_names: Tuple[str, ...] = (),
    stores_output_head: bool = False,
) -> ModelSpec:
    """Build a ModelSpec from a parsed config.json and the checkpoint's byte size.

    ``stores_output_head`` says the checkpoint lists an ``lm_head.weight`` tensor; with tied embeddings vLLM does
    not load it, so its bytes leave the loaded size.
    """
    source = f"config.json of {name}"
    text = language_config(config)
    architectures = config.get("architectures") or text.get("architectures") or ["unknown"]
    architecture = str(architectures[0])
    model_type = str(text.get("model_type") or config.get("model_type") or "unknown")

    num_layers = _positive_int(text, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"), "layer count", source)
    hidden_size = _positive_int(text, ("hidden_size", "n_embd", "d_model"), "hidden size", source)
    num_heads = _positive_int(text, ("num_attention_heads", "n_head", "num_heads"), "attention head count", source)
    kv_heads_raw = _first(text, "num_key_value_heads", "n_head_kv", "num_kv_heads")
    if kv_heads_raw is None and text.get("multi_query_attention"):
        kv_heads_raw = text.get("multi_query_group_num")
    num_kv_heads = int(kv_heads_raw) if kv_heads_raw else num_heads
    head_dim = int(_first(text, "head_dim", "kv_channels") or hidden_size // num_heads)
    vocab_size = _positive_int(text, ("vocab_size", "padded_vocab_size", "n_vocab"), "vocabulary size", source)

    intermediate = _first(text, "intermediate_size", "ffn_hidden_size", "n_inner")
    intermediate_size = int(intermediate) if intermediate else 4 * hidden_size
    if architecture == "QWenLMHeadModel":
        # QWen v1 stores twice the MLP width: each of w1/w2 is intermediate_size // 2 wide (vLLM QWenMLP).
        intermediate_size //= 2

    mla = None
    if isinstance(text.get("kv_lora_rank"), int):
        mla = MLASpec(
            kv_lora_rank=int(text["kv_lora_rank"]),
            qk_rope_head_dim=int(text.get("qk_rope_head_dim") or 64),
            qk_nope_head_dim=int(text.get("qk_nope_head_dim") or 128),
            v_head_dim=int(text.get("v_head_dim") or 128),
            q_lora_rank=int(text["q_lora_rank"]) if isinstance(text.get("q_lora_rank"), int) else None,
        )

    mtp_layers = int(text.get("num_nextn_predict_layers") or 0)
    spec = ModelSpec(
        name=name,
        architecture=architecture,
        model_type=model_type,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        vocab_size=vocab_size,
        intermediate_size=intermediate_size,
        max_model_len=derive_max_model_len(text),
        dtype=_torch_dtype(text),
        # Llama, Qwen2 and Mistral configs default to separate output heads; the larger estimate is the safe one.
        tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        weights_bytes=int(weights_bytes),
        weights_source=weights_source,
        mla=mla,
        moe=_moe(text, num_layers, intermediate_size),
        quantization=_quantization(text, quantize_config),
        mtp_layers=mtp_layers,
    )
    if stores_output_head and spec.tie_word_embeddings:
        spec = replace(spec, tied_head_bytes=min(spec.embedding_bytes, spec.weights_bytes))
    if mtp_weight_names and mtp_layers:
        return _with_mtp_bytes(spec, mtp_weight_names)
    return spec


# ---------------------------------------------------------------------------------------------------------
# Parameter layout, used to split the checkpoint's bytes over layers and pipeline stages.


def attention_parameters(spec: ModelSpec) -> int:
    """Parameters of one attention block."""
    hidden, heads = spec.hidden_size, spec.num_attention_heads
    if spec.mla is not None:
        mla = spec.mla
        qk_head = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank:
            query = hidden * mla.q_lora_rank + mla.q_lora_rank * heads * qk_head
        else:
            query = hidden * heads * qk_head
        latent = hidden * mla.latent_size + mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        return query + latent + heads * mla.v_head_dim * hidden
    return hidden * (heads + 2 * spec.num_kv_heads) * spec.head_dim + heads * spec.head_dim * hidden


def layer_parameters(spec: ModelSpec, layer_index: int) -> int:
    """Parameters of decoder layer ``layer_index`` (attention plus a dense or mixture-of-experts MLP)."""
    hidden = spec.hidden_size
    moe = spec.moe
    if moe is not None and layer_index in moe.moe_layers:
        experts = moe.num_experts * 3 * hidden * moe.expert_intermediate_size
        mlp = experts + 3 * hidden * moe.shared_expert_intermediate_size + hidden * moe.num_experts
    else:
        mlp = 3 * hidden * spec.intermediate_size
    return attention_parameters(spec) + mlp


def layer_weight_bytes(spec: ModelSpec) -> List[int]:
    """The loaded checkpoint's bytes of each decoder layer, embeddings and MTP layers set aside.

    The file sizes are exact in total; the per-layer split follows each layer's parameter count, which is
    what matters when dense and mixture-of-experts layers sit in different pipeline stages.
    """
    heads = spec.embedding_bytes * (1 if spec.tie_word_embeddings else 2)
    body = max(spec.loaded_weights_bytes - heads, 0)
    counts = [layer_parameters(spec, index) for index in range(spec.num_layers)]
    total = sum(counts) or 1
    shares = [body * count // total for count in counts]
    shares[-1] += body - sum(shares)
    return shares


# --quantization methods that vLLM applies to an unquantized checkpoint while loading it, with the bytes each
# linear-layer weight keeps (scales are per tensor or per channel, a rounding error next to the weights).
RUNTIME_QUANTIZATION_BYTES = {"fp8": 1}


def with_runtime_quantization(spec: ModelSpec, method: Optional[str]) -> ModelSpec:
    """The model as vLLM holds it after ``--quantization method`` (None or the checkpoint's own: unchanged).

    Online FP8 turns every linear layer's weight (attention, MLP, experts) into one byte per parameter; the
    embeddings, the output head and the norms stay in the checkpoint's dtype. Raises ModelSpecError when the
    method cannot apply to this checkpoint, as vLLM does at start-up.
    """
    if not method:
        return spec
    method = method.lower()
    if spec.quantization is not None:
        if spec.quantization.method == method or spec.quantization.method.startswith(method):
            return spec
        raise ModelSpecError(
            f"{spec.name} is already quantized with {spec.quantization.method}; vLLM refuses --quantization {method} "
            "for it (the method in the model's config must match). Drop --quantization from vllm_serve_extra_args.",
            "vllm_serve_extra_args",
        )
    if method not in RUNTIME_QUANTIZATION_BYTES:
        raise ModelSpecError(
            "--quantization {method} on an unquantized checkpoint is not sized by the planner; it sizes {sized} at "
            "load time. Use a checkpoint quantized with {method} instead, or drop the flag from "
            "vllm_serve_extra_args.".format(method=method, sized=", ".join(RUNTIME_QUANTIZATION_BYTES)),
            "vllm_serve_extra_args",
        )
    linear = sum(layer_parameters(spec, index) for index in range(spec.num_layers))
    heads = spec.embedding_bytes * (1 if spec.tie_word_embeddings else 2)
    norms = (2 * spec.num_layers + 1) * spec.hidden_size * spec.dtype_bytes
    loaded = linear * RUNTIME_QUANTIZATION_BYTES[method] + heads + norms
    return replace(
        spec,
        weights_bytes=loaded + spec.mtp_bytes + spec.tied_head_bytes,
        weights_source=f"{spec.weights_source}, quantized to {method} at load time",
        quantization=QuantizationSpec(method=method, bits=8 * RUNTIME_QUANTIZATION_BYTES[method]),
    )


def _with_mtp_bytes(spec: ModelSpec, mtp_weight_names: Tuple[str, ...]) -> ModelSpec:
    """Estimate the bytes of the MTP layers that sit in the checkpoint after the last decoder layer."""
    # DeepSeek-V3-style MTP layers carry their own copies of the embedding and the output head.
    copies = sum(1 for name in mtp_weight_names if "embed_tokens" in name or "shared_head.head" in name)
    heads = spec.embedding_bytes * ((1 if spec.tie_word_embeddings else 2) + copies)
    last = layer_parameters(spec, spec.num_layers - 1)
    counts = sum(layer_parameters(spec, index) for index in range(spec.num_layers)) + spec.mtp_layers * last
    body = max(spec.weights_bytes - heads, 0)
    per_layer = body * last // counts if counts else 0
    mtp_bytes = spec.mtp_layers * per_layer + copies * spec.embedding_bytes
    return replace(spec, mtp_bytes=min(mtp_bytes, spec.weights_bytes))


# ---------------------------------------------------------------------------------------------------------
# safetensors


def safetensors_header_bytes(header: Mapping[str, Any]) -> int:
    """Sum of the tensor sizes a safetensors header declares (dtype x shape)."""
    total_bits = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        dtype = str(tensor.get("dtype"))
        if dtype not in SAFETENSORS_DTYPE_BITS:
            raise ModelSpecError(f"Tensor {name} has an unknown safetensors dtype {dtype}.")
        numel = 1
        for dimension in tensor.get("shape") or []:
            numel *= int(dimension)
        total_bits += numel * SAFETENSORS_DTYPE_BITS[dtype]
    return (total_bits + 7) // 8


def read_safetensors_header(path: str) -> Dict[str, Any]:
    """Read only the JSON header of a safetensors file: 8-byte little-endian length, then the JSON."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ModelSpecError(f"{path} is shorter than a safetensors header.")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ModelSpecError(f"{path} declares a {length} byte header: not a safetensors file.")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelSpecError(f"{path} has an unreadable safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise ModelSpecError(f"{path} has a safetensors header that is not a JSON object.")
    return header


def _read_json(path: str, field: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except ValueError as error:
        raise ModelSpecError(f"{path} is not valid JSON: {error}", field) from error
    if not isinstance(document, dict):
        raise ModelSpecError(f"{path} is not a JSON object.", field)
    return document


def _stores_output_head(names: Any) -> bool:
    """Whether a checkpoint's tensor names include the output head (``lm_head.weight``)."""
    return any(str(name).split(".")[-2:] == ["lm_head", "weight"] for name in names)


def _mtp_weight_names(weight_map: Mapping[str, Any], num_layers: int) -> Tuple[str, ...]:
    names = []
    for name in weight_map:
        match = _LAYER_KEY.search(name)
        if match and int(match.group(1)) >= num_layers:
            names.append(name)
    return tuple(names)


def _index_total(index: Mapping[str, Any]) -> Optional[int]:
    total = (index.get("metadata") or {}).get("total_size")
    if isinstance(total, str) and total.isdigit():
        return int(total)
    if isinstance(total, (int, float)) and total > 0:
        return int(total)
    return None


def _layer_count(config: Mapping[str, Any]) -> int:
    text = language_config(config)
    value = _first(text, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    return int(value) if isinstance(value, int) else 0


def load_model_spec_from_dir(model_dir: str) -> ModelSpec:
    """Read a local model directory: config.json plus the index's total size or the shards' headers."""
    if not os.path.isdir(model_dir):
        raise ModelSpecError(f"model_dir {model_dir} is not a directory on the controller.")
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ModelSpecError(
            f"model_dir {model_dir} has no config.json: point model_dir at the model's own directory "
            "(the one holding config.json and model.safetensors.index.json), or use model: <repo id>."
        )
    config = _read_json(config_path, "model_dir")
    quantize_path = os.path.join(model_dir, "quantize_config.json")
    quantize_config = _read_json(quantize_path, "model_dir") if os.path.isfile(quantize_path) else None
    name = os.path.basename(os.path.normpath(model_dir))
    # Refuse a config the planner cannot read before looking at any weight file.
    num_layers = parse_config(config, name=name).num_layers

    weights_bytes: Optional[int] = None
    source = ""
    mtp_names: Tuple[str, ...] = ()
    stores_head = False
    for index_name in (INDEX_FILE, PYTORCH_INDEX_FILE):
        index_path = os.path.join(model_dir, index_name)
        if not os.path.isfile(index_path):
            continue
        index = _read_json(index_path, "model_dir")
        weight_map = index.get("weight_map") or {}
        mtp_names = _mtp_weight_names(weight_map, num_layers)
        stores_head = _stores_output_head(weight_map)
        weights_bytes = _index_total(index)
        source = f"{index_name} metadata.total_size"
        if weights_bytes is None and index_name == INDEX_FILE:
            shards = sorted(set(weight_map.values()))
            missing = [shard for shard in shards if not os.path.isfile(os.path.join(model_dir, shard))]
            if missing:
                raise ModelSpecError(
                    "{} in {} has no metadata.total_size and the shards {} are absent: "
                    "add the index's total_size or the shards.".format(index_name, model_dir, ", ".join(missing[:3]))
                )
            weights_bytes = sum(
                safetensors_header_bytes(read_safetensors_header(os.path.join(model_dir, shard))) for shard in shards
            )
            source = "safetensors headers"
        if weights_bytes is not None:
            break

    if weights_bytes is None:
        shards = sorted(entry for entry in os.listdir(model_dir) if entry.endswith(".safetensors"))
        if not shards:
            raise ModelSpecError(
                f"model_dir {model_dir} has neither {INDEX_FILE} (with metadata.total_size) nor *.safetensors files, "
                "so the weight size is unknown."
            )
        headers = [read_safetensors_header(os.path.join(model_dir, shard)) for shard in shards]
        weights_bytes = sum(safetensors_header_bytes(header) for header in headers)
        mtp_names = _mtp_weight_names({name: 0 for header in headers for name in header}, num_layers)
        stores_head = _stores_output_head(name for header in headers for name in header)
        source = "safetensors headers"

    return parse_config(
        config,
        name=name,
        weights_bytes=weights_bytes,
        weights_source=source,
        quantize_config=quantize_config,
        mtp_weight_names=mtp_names,
        stores_output_head=stores_head,
    )


# ---------------------------------------------------------------------------------------------------------
# Hugging Face Hub

# Given a repository file name, return a local path to its content, or None when the repository lacks it.
FetchFile = Callable[[str], Optional[str]]
# Return the checkpoint's parameter count per safetensors dtype (huggingface_hub's SafetensorsRepoMetadata).
FetchParameterCount = Callable[[], Mapping[str, int]]


def hub_file_fetcher(
    repo_id: str, revision: Optional[str] = None, endpoint: Optional[str] = None, cache_dir: Optional[str] = None
) -> FetchFile:
    """Download single small files of a Hub repository through huggingface_hub.

    HF_TOKEN and HF_ENDPOINT (a mirror) are honoured as huggingface_hub reads them; ``endpoint`` and
    ``cache_dir`` override them.
    """

    def fetch(filename: str) -> Optional[str]:
        try:
            from huggingface_hub import errors, hf_hub_download
        except ImportError as error:
            raise ModelSpecError(
                "Planning from the Hub needs huggingface_hub on the controller: pip install huggingface_hub.",
                "model",
            ) from error
        # Only a file the repository lacks means "absent"; a file missing from an offline cache is an error.
        absent = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
        try:
            return hf_hub_download(
                repo_id=repo_id, filename=filename, revision=revision, endpoint=endpoint, cache_dir=cache_dir
            )
        except absent:
            return None
        except Exception as error:  # network, authentication and unknown repositories all end here
            raise ModelSpecError(
                "Could not read {} of {} at revision {}: {}".format(filename, repo_id, revision or "main", error),
                "model",
            ) from error

    return fetch


def hub_parameter_counter(
    repo_id: str, revision: Optional[str] = None, endpoint: Optional[str] = None
) -> FetchParameterCount:
    """Count parameters from the safetensors headers on the Hub (HTTP range requests, no weights)."""

    def count() -> Mapping[str, int]:
        from huggingface_hub import HfApi

        metadata = HfApi(endpoint=endpoint).get_safetensors_metadata(repo_id, revision=revision)
        return dict(metadata.parameter_count)

    return count


def load_model_spec_from_hub(
    repo_id: str,
    revision: Optional[str] = None,
    fetch_file: Optional[FetchFile] = None,
    fetch_parameter_count: Optional[FetchParameterCount] = None,
) -> ModelSpec:
    """Read config.json and the weight size of a Hub repository without downloading weights."""
    if not re.match(r"^[\w.-]+(/[\w.-]+)?$", repo_id or ""):
        raise ModelSpecError(f"model {repo_id!r} is not a Hugging Face repo id such as Qwen/Qwen3-8B.", "model")
    fetch = fetch_file or hub_file_fetcher(repo_id, revision)
    config_path = fetch("config.json")
    if config_path is None:
        raise ModelSpecError("{} has no config.json at revision {}.".format(repo_id, revision or "main"), "model")
    config = _read_json(config_path, "model")
    quantize_path = fetch("quantize_config.json") if "quantization_config" not in config else None
    quantize_config = _read_json(quantize_path, "model") if quantize_path else None

    weights_bytes: Optional[int] = None
    source = ""
    mtp_names: Tuple[str, ...] = ()
    stores_head = False
    index_path = fetch(INDEX_FILE)
    if index_path is not None:
        index = _read_json(index_path, "model")
        weights_bytes = _index_total(index)
        mtp_names = _mtp_weight_names(index.get("weight_map") or {}, _layer_count(config))
        stores_head = _stores_output_head(index.get("weight_map") or {})
        source = f"{INDEX_FILE} metadata.total_size"
    if weights_bytes is None:
        counter = fetch_parameter_count or hub_parameter_counter(repo_id, revision)
        try:
            counts = counter()
        except ModelSpecError:
            raise
        except Exception as error:
            raise ModelSpecError(f"Could not read the safetensors metadata of {repo_id}: {error}", "model") from error
        unknown = [dtype for dtype in counts if dtype not in SAFETENSORS_DTYPE_BITS]
        if unknown:
            raise ModelSpecError("{} has tensors of unknown dtype {}.".format(repo_id, ", ".join(unknown)), "model")
        weights_bytes = sum(count * SAFETENSORS_DTYPE_BITS[dtype] for dtype, count in counts.items()) // 8
        source = "safetensors metadata on the Hub"
    if not weights_bytes:
        raise ModelSpecError(f"{repo_id} publishes no safetensors weights the planner can size.", "model")
    return parse_config(
        config,
        name=repo_id,
        weights_bytes=weights_bytes,
        weights_source=source,
        quantize_config=quantize_config,
        mtp_weight_names=mtp_names,
        stores_output_head=stores_head,
    )
