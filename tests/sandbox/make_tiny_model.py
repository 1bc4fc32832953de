# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build a tiny random-weight Llama that CPU vLLM serves, for the sandbox (no hub download).

    python3 tests/sandbox/make_tiny_model.py --ensure-venv                  # models/tiny-llama
    python3 tests/sandbox/make_tiny_model.py --ensure-venv --size-mb 300    # models/tiny-llama-300mb

The model is a LlamaForCausalLM with head_dim 64 (the CPU attention kernels reject smaller heads),
a byte-level BPE tokenizer trained on a few sentences, bf16 safetensors, a fixed seed. It needs
torch, transformers, tokenizers and safetensors: --ensure-venv creates the tools venv from the
sandbox wheelhouse (filling that first) and re-runs this script inside it. A finished model carries
a stamp of its specification, so a second run returns at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_CACHE = Path("/var/cache/llmserve-sandbox")
DEFAULT_VENV = SANDBOX_CACHE / "tools-venv"
DEFAULT_MODELS = SANDBOX_CACHE / "models"
STAMP_NAME = ".llmserve-tiny-model.json"
TOOLS_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")
SEED = 1234
BYTES_PER_PARAMETER = 2  # bfloat16
SHARD_MB = 100

# Enough text for the BPE trainer to learn merges up to the vocabulary size; the content is irrelevant.
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "A tiny model answers every prompt with random tokens, and that is all the sandbox needs.",
    "Distributed inference splits the layers and the attention heads across several hosts.",
    "Tensor parallel ranks exchange activations; pipeline stages pass hidden states along.",
    "Hello world! Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ? ! ( ) [ ] { } - _ / .",
    "Ray schedules actors on nodes, vLLM serves completions over an OpenAI-compatible API.",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def model_shape(size_mb: int) -> dict[str, int]:
    """Llama dimensions: the small default, or a wider one padded with layers to about size_mb."""
    if size_mb <= 0:
        return {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 4,
            "vocab_size": 512,
        }
    hidden, intermediate, heads, kv_heads, vocab = 1024, 2048, 16, 4, 512
    head_dim = hidden // heads
    per_layer = (
        2 * hidden * hidden  # q and o projections
        + 2 * hidden * kv_heads * head_dim  # k and v projections
        + 3 * hidden * intermediate  # gate, up and down projections
        + 2 * hidden  # the two RMS norms
    )
    fixed = 2 * vocab * hidden + hidden  # embeddings, untied lm_head, final norm
    layers = max(2, math.ceil((size_mb * 1024 * 1024 / BYTES_PER_PARAMETER - fixed) / per_layer))
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
    }


def specification(size_mb: int) -> dict[str, object]:
    script_digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return {"shape": model_shape(size_mb), "seed": SEED, "dtype": "bfloat16", "script_sha256": script_digest}


def is_built(output: Path, spec: dict[str, object]) -> bool:
    stamp = output / STAMP_NAME
    return stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == spec


def train_tokenizer(vocab_size: int):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # Byte-level: any input text encodes, whatever the few training sentences covered.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 20, trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build(output: Path, size_mb: int) -> Path:
    """Write the model to `output` (atomically), unless it is already there with the same spec."""
    spec = specification(size_mb)
    if is_built(output, spec):
        print(f"model up to date: {output}")
        return output
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    shape = spec["shape"]
    tokenizer = train_tokenizer(shape["vocab_size"])
    config = LlamaConfig(
        **shape,
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        # Padded models come in several shards, like real checkpoints, for the weights fan-out tests.
        shard_size = f"{SHARD_MB}MB" if size_mb > 0 else "1GB"
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=shard_size)
        tokenizer.save_pretrained(staging)
        (staging / STAMP_NAME).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        # mkdtemp and safetensors create private files; the hosts' service user must read the copies.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"built {output}: {shape['num_hidden_layers']} layers, {parameters / 1e6:.1f}M parameters")
    return output


def python_311() -> str:
    """The wheelhouse holds cp311 wheels, so the tools venv needs CPython 3.11."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise SystemExit("python3.11 is needed for the tools venv (the wheelhouse is built for CPython 3.11)")
    return found


def ensure_venv(venv: Path, wheelhouse: Path) -> Path:
    """Create the tools venv from the wheelhouse only, pinned by requirements-cpu.txt."""
    sys.path.insert(0, str(HERE))
    import wheelhouse as sandbox_wheelhouse

    sandbox_wheelhouse.ensure_wheelhouse(wheelhouse)
    constraints = sandbox_wheelhouse.REQUIREMENTS_LOCK
    digest = hashlib.sha256(constraints.read_bytes() + " ".join(TOOLS_REQUIREMENTS).encode()).hexdigest()
    stamp = venv / ".llmserve-tools-venv.stamp"
    python = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest and python.exists():
        return python
    subprocess.run([python_311(), "-m", "venv", "--clear", str(venv)], check=True)
    # The machine's pip configuration may add other find-links or indexes: only the wheelhouse counts.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    environment["PIP_CONFIG_FILE"] = os.devnull
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index"]
    command += ["--find-links", str(wheelhouse), "--constraint", str(constraints), *TOOLS_REQUIREMENTS]
    subprocess.run(command, check=True, env=environment)
    stamp.write_text(digest + "\n", encoding="utf-8")
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="model directory name under --models (default tiny-llama[-<N>mb])")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="parent directory of the model")
    parser.add_argument("--output", type=Path, help="exact model directory (overrides --name and --models)")
    parser.add_argument("--size-mb", type=int, default=0, help="pad the weights to about this many MB")
    parser.add_argument("--ensure-venv", action="store_true", help="create the tools venv and run inside it")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--wheelhouse", type=Path, default=SANDBOX_CACHE / "wheelhouse")
    options = parser.parse_args()
    name = options.name or ("tiny-llama" if options.size_mb <= 0 else f"tiny-llama-{options.size_mb}mb")
    output = (options.output or options.models / name).resolve()

    if is_built(output, specification(options.size_mb)):
        print(f"model up to date: {output}")
        return 0
    if options.ensure_venv:
        python = ensure_venv(options.venv, options.wheelhouse)
        if Path(sys.prefix).resolve() != options.venv.resolve():
            arguments = [str(python), str(Path(__file__).resolve()), "--output", str(output)]
            arguments += ["--size-mb", str(options.size_mb)]
            return subprocess.run(arguments, check=False).returncode
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"{error}: run with --ensure-venv, or with {options.venv}/bin/python") from error
    build(output, options.size_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
