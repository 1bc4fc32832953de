# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a GGUF model is made of: its hyperparameters and every tensor's type and size, across split files.

The metadata and tensor infos are read with the ``gguf`` package (``gguf.GGUFReader``), never by hand; tensor
sizes come from gguf's own quantization tables. Only headers are touched: the reader maps the file, so a 30 GB
model costs no reading of its weights.

Tensors are sorted the way llama.cpp places them: the input layer (``token_embd`` and friends) always stays on
the CPU, the repeating layers (``blk.N.*``) are spread over the devices, and the output layer (``output_norm``,
``output``) goes to the last device when all layers are offloaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

MIB = 1024 * 1024

# llama.cpp names split files <prefix>-00001-of-00007.gguf (gguf-split's LLAMA_SPLIT_PATH format).
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.gguf$")
LAYER_TENSOR = re.compile(r"^blk\.(?P<layer>\d+)\.")
# gguf-parser's cut: these prefixes make the input layer, the rest outside blk.N makes the output layer.
INPUT_PREFIXES = ("token_", "position_")


class GGUFModelError(Exception):
    """The GGUF files cannot be used; ``field`` names the option to fix."""

    def __init__(self, message: str, field: str = "model_files"):
        super().__init__(message)
        self.field = field


@dataclass
class GGUFTensor:
    name: str
    ggml_type: str
    shape: List[int]
    n_elements: int
    n_bytes: int
    role: str  # input | layer | output
    layer: Optional[int]
    file: str


@dataclass
class GGUFModel:
    files: List[str]
    architecture: str
    name: Optional[str]
    file_type: Optional[str]
    block_count: int
    context_length: int
    embedding_length: int
    feed_forward_length: int
    head_count: int
    head_count_kv: List[int]  # per layer: some architectures vary it
    key_length: int
    value_length: int
    vocab_size: int
    expert_count: int
    sliding_window: int
    tensors: List[GGUFTensor] = field(default_factory=list)

    def layer_bytes(self) -> List[int]:
        """Weight bytes of each repeating layer, by index."""
        sizes = [0] * self.block_count
        for tensor in self.tensors:
            if tensor.role == "layer" and tensor.layer is not None and tensor.layer < self.block_count:
                sizes[tensor.layer] += tensor.n_bytes
        return sizes

    @property
    def input_bytes(self) -> int:
        return sum(tensor.n_bytes for tensor in self.tensors if tensor.role == "input")

    @property
    def tied_output(self) -> bool:
        """No ``output.weight``: llama.cpp then loads ``token_embd`` a second time as the output projection."""
        return not any(tensor.name == "output.weight" for tensor in self.tensors)

    @property
    def output_bytes(self) -> int:
        """Bytes of the output layer as loaded, the duplicated token embedding included when tied."""
        size = sum(tensor.n_bytes for tensor in self.tensors if tensor.role == "output")
        if self.tied_output:
            size += sum(tensor.n_bytes for tensor in self.tensors if tensor.name == "token_embd.weight")
        return size

    @property
    def total_bytes(self) -> int:
        return sum(tensor.n_bytes for tensor in self.tensors)

    @property
    def n_parameters(self) -> int:
        return sum(tensor.n_elements for tensor in self.tensors)

    def type_counts(self) -> Dict[str, int]:
        """How many tensors of each ggml type, as llama.cpp's loader lists them ("type q2_K: 321 tensors")."""
        counts: Dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.ggml_type] = counts.get(tensor.ggml_type, 0) + 1
        return counts

    def to_dict(self) -> Dict[str, Any]:
        return {
            "files": list(self.files),
            "architecture": self.architecture,
            "name": self.name,
            "file_type": self.file_type,
            "block_count": self.block_count,
            "context_length": self.context_length,
            "embedding_length": self.embedding_length,
            "feed_forward_length": self.feed_forward_length,
            "head_count": self.head_count,
            "head_count_kv": max(self.head_count_kv) if self.head_count_kv else 0,
            "key_length": self.key_length,
            "value_length": self.value_length,
            "vocab_size": self.vocab_size,
            "expert_count": self.expert_count,
            "tensor_count": len(self.tensors),
            "parameters": self.n_parameters,
            "size_bytes": self.total_bytes,
            "size_mib": round(self.total_bytes / MIB, 2),
            "bits_per_weight": round(8.0 * self.total_bytes / self.n_parameters, 2) if self.n_parameters else 0.0,
            "tensor_types": self.type_counts(),
            "tied_output": self.tied_output,
        }


def split_files(path: str) -> List[str]:
    """All files of the split model ``path`` belongs to, in order; ``[path]`` when it is not split."""
    directory, base = os.path.split(path)
    match = SPLIT_NAME.match(base)
    if not match:
        return [path]
    count = int(match.group("count"))
    return [
        os.path.join(directory, "{}-{:05d}-of-{:05d}.gguf".format(match.group("prefix"), number, count))
        for number in range(1, count + 1)
    ]


def entry_file(paths: Sequence[str]) -> str:
    """The file llama.cpp loads from these GGUF files: the first split of a split model, else the only file.

    A split model wins over one unsplit file beside it. ``""`` when there is no GGUF file or more than one model
    to choose from (two unsplit files, or the first splits of two models): the caller names the setting that
    picks one.
    """
    names = sorted(str(path) for path in paths if str(path).endswith(".gguf"))
    first_splits = [path for path in names if _split_number(path) == 1]
    unsplit = [path for path in names if _split_number(path) is None]
    if len(first_splits) == 1 and len(unsplit) <= 1:
        return first_splits[0]
    if not first_splits and len(unsplit) == 1:
        return unsplit[0]
    return ""


def _split_number(path: str) -> Optional[int]:
    match = SPLIT_NAME.match(os.path.basename(path))
    return int(match.group("number")) if match else None


def model_file_list(paths: Sequence[str]) -> List[str]:
    """The files to read: every split of each named file, once, in split order."""
    if not paths:
        raise GGUFModelError("model_files: give the GGUF file (for a split model, its first split is enough).")
    files: List[str] = []
    for path in paths:
        for candidate in split_files(os.path.expanduser(str(path))):
            if candidate not in files:
                files.append(candidate)
    missing = [candidate for candidate in files if not os.path.isfile(candidate)]
    if missing:
        raise GGUFModelError(
            "model_files: {} of {} GGUF file(s) missing: {}. A split model needs every split next to the first "
            "(download them all, or give the right directory).".format(len(missing), len(files), ", ".join(missing))
        )
    return files


def _field_value(reader: Any, key: str) -> Any:
    found = reader.get_field(key)
    if found is None:
        return None
    return found.contents()


def _open(path: str) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise GGUFModelError(
            "The gguf Python package is needed on the controller to read GGUF files (pip install gguf).",
            field="model_files",
        ) from error
    try:
        return GGUFReader(path, "r")
    except (ValueError, OSError, IndexError) as error:
        # A short read (a download cut off) or a wrong magic surfaces here from numpy's memmap views.
        raise GGUFModelError(
            f"model_files: {path} is not a readable GGUF file ({error}); a partial download is the usual cause, so "
            "download it again."
        ) from error


def _type_name(ggml_type: Any) -> str:
    return getattr(ggml_type, "name", str(ggml_type))


def _file_type_name(value: Optional[int]) -> Optional[str]:
    if value is None:
        return None
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(int(value)).name
    except ValueError:
        return str(value)
    return name.replace("MOSTLY_", "").replace("ALL_", "")


def _classify(name: str) -> Dict[str, Any]:
    match = LAYER_TENSOR.match(name)
    if match:
        return {"role": "layer", "layer": int(match.group("layer"))}
    if name.startswith(INPUT_PREFIXES):
        return {"role": "input", "layer": None}
    return {"role": "output", "layer": None}


def _as_list(value: Any, length: int) -> List[int]:
    if isinstance(value, list):
        return [int(item) for item in value] or [0] * length
    return [int(value)] * length


def read_gguf_model(paths: Sequence[str]) -> GGUFModel:
    """Read the metadata and tensor infos of a (possibly split) GGUF model."""
    files = model_file_list(paths)
    first = _open(files[0])
    split_count = _field_value(first, "split.count")
    if split_count is not None and int(split_count) != len(files):
        raise GGUFModelError(
            f"model_files: {files[0]} says the model has {split_count} splits (split.count) but its name says "
            f"{len(files)}. Rename it back to the name gguf-split gave it."
        )
    if split_count is None and len(files) > 1:
        raise GGUFModelError(f"model_files: {files[0]} has no split.count metadata, so it is not a split model.")

    architecture = _field_value(first, "general.architecture")
    if not architecture:
        raise GGUFModelError(f"model_files: {files[0]} has no general.architecture metadata.")

    def arch_value(key: str, default: Any = None) -> Any:
        value = _field_value(first, f"{architecture}.{key}")
        return default if value is None else value

    tensors: List[GGUFTensor] = []
    readers = [first] + [_open(path) for path in files[1:]]
    for path, reader in zip(files, readers):
        for info in reader.tensors:
            place = _classify(info.name)
            tensors.append(
                GGUFTensor(
                    name=info.name,
                    ggml_type=_type_name(info.tensor_type),
                    shape=[int(dimension) for dimension in info.shape],
                    n_elements=int(info.n_elements),
                    n_bytes=int(info.n_bytes),
                    role=place["role"],
                    layer=place["layer"],
                    file=path,
                )
            )
    expected_tensors = _field_value(first, "split.tensors.count")
    if expected_tensors is not None and int(expected_tensors) != len(tensors):
        raise GGUFModelError(
            f"model_files: the splits hold {len(tensors)} tensors but split.tensors.count says {expected_tensors}: "
            "a split is from another download or quantization."
        )

    block_count = int(arch_value("block_count", 0)) or (
        1 + max((tensor.layer for tensor in tensors if tensor.layer is not None), default=-1)
    )
    embedding_length = int(arch_value("embedding_length", 0))
    head_count_raw = arch_value("attention.head_count", 0)
    head_count = max(_as_list(head_count_raw, block_count) or [0])
    head_count_kv = _as_list(arch_value("attention.head_count_kv", head_count_raw), block_count)
    head_dim = embedding_length // head_count if head_count else 0
    embedding = next((tensor for tensor in tensors if tensor.name == "token_embd.weight"), None)
    vocab_size = int(arch_value("vocab_size", 0)) or (
        embedding.shape[1] if embedding and len(embedding.shape) > 1 else 0
    )
    feed_forward = arch_value("feed_forward_length", 0)

    return GGUFModel(
        files=files,
        architecture=str(architecture),
        name=_field_value(first, "general.name"),
        file_type=_file_type_name(_field_value(first, "general.file_type")),
        block_count=block_count,
        context_length=int(arch_value("context_length", 0)),
        embedding_length=embedding_length,
        feed_forward_length=max(_as_list(feed_forward, block_count) or [0]),
        head_count=head_count,
        head_count_kv=head_count_kv,
        key_length=int(arch_value("attention.key_length", head_dim)),
        value_length=int(arch_value("attention.value_length", head_dim)),
        vocab_size=vocab_size,
        expert_count=int(arch_value("expert_count", 0)),
        sliding_window=int(arch_value("attention.sliding_window", 0)),
        tensors=tensors,
    )
