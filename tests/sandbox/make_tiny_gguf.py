# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The llama.cpp backend's offline caches for the sandbox: source, build tools and a tiny GGUF model.

    python3 tests/sandbox/make_tiny_gguf.py                          # all three, each a no-op when current
    python3 tests/sandbox/make_tiny_gguf.py --model tiny-llama-300mb  # convert the padded model instead

The hosts have no internet, so everything comes from the controller's caches:

- Source: the llama-cpp-python sdist on PyPI carries llama.cpp's whole tree under vendor/llama.cpp.
  It is packed into a reproducible ``llama.cpp-src-<version>.tar.gz`` (sorted entries, mtime 0), so
  its sha256, which keys the role's build cache, stays the same between runs.
- Build tools: the ``cmake`` and ``ninja`` wheels, dropped into the sandbox wheelhouse the hosts see at
  /srv/wheelhouse (the hosts cannot apt-get cmake).
- Model: the tiny random Llama (tests/sandbox/make_tiny_model.py) converted with llama.cpp's own
  convert_hf_to_gguf.py into ``models/<model>-gguf/<model>-f16.gguf``. A self-trained BPE tokenizer is
  not in the converter's table of known pre-tokenizers, so a wrapper makes ``get_vocab_base_pre``
  answer "default" at run time (and skips the sentencepiece attempt); the vendored file is never edited.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SANDBOX_CACHE = Path("/var/cache/llmserve-sandbox")
LLAMA_CPP_CACHE = SANDBOX_CACHE / "llama-cpp"
WHEELHOUSE = SANDBOX_CACHE / "wheelhouse"
MODELS = SANDBOX_CACHE / "models"
TOOLS_VENV = SANDBOX_CACHE / "tools-venv"

# llama-cpp-python 0.3.36 vendors llama.cpp commit 0c1e570 (its RPC server target is ggml-rpc-server).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_TOOL_WHEELS = ("cmake==4.4.4", "ninja==1.13.2")
STAMP_NAME = ".llmserve-tiny-gguf.json"

# Runs in the tools venv with the source tree on sys.path; argv after "-" is the converter's.
CONVERT_WRAPPER = """
import sys
import conversion.base
import convert_hf_to_gguf


def no_sentencepiece_model(self):
    # The Llama converter tries a sentencepiece tokenizer.model first and only falls back to the
    # byte-level BPE tokenizer.json on FileNotFoundError; without the sentencepiece package installed
    # the import fails first.
    raise FileNotFoundError("no tokenizer.model: the tiny model has a byte-level BPE tokenizer.json")


# A self-trained tokenizer has no entry in the converter's hash table of known pre-tokenizers.
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
conversion.base.TextModel._set_vocab_sentencepiece = no_sentencepiece_model
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
convert_hf_to_gguf.main()
"""


def pip_environment() -> dict[str, str]:
    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")


def source_archive_path() -> Path:
    return LLAMA_CPP_CACHE / f"llama.cpp-src-llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def source_tree_path() -> Path:
    return LLAMA_CPP_CACHE / f"llama.cpp-src-llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"


def ensure_sdist() -> Path:
    sdist = LLAMA_CPP_CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        LLAMA_CPP_CACHE.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        command += ["--dest", str(LLAMA_CPP_CACHE), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
        subprocess.run(command, check=True, env=pip_environment())
    return sdist


def ensure_source() -> tuple[Path, Path]:
    """The vendored llama.cpp tree (for the converter) and its reproducible archive (for the hosts)."""
    archive, tree = source_archive_path(), source_tree_path()
    if archive.is_file() and (tree / "convert_hf_to_gguf.py").is_file():
        return archive, tree
    sdist = ensure_sdist()
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    members: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(sdist) as source:
        for member in source.getmembers():
            if not member.name.startswith(prefix) or member.name == prefix.rstrip("/"):
                continue
            relative = member.name[len(prefix) :]
            # .git is a gitlink into the sdist's own repository: meaningless outside it.
            if relative == ".git" or relative.startswith(".git/") or not (member.isfile() or member.isdir()):
                continue
            data = source.extractfile(member).read() if member.isfile() else None
            members.append((relative, member, data))
    members.sort(key=lambda item: item[0])
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-src-", dir=LLAMA_CPP_CACHE))
    try:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as packed:
            for relative, member, data in members:
                info = tarfile.TarInfo(f"llama.cpp/{relative}")
                info.type, info.mode, info.mtime = member.type, member.mode | 0o644, 0
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if data is not None:
                    info.size = len(data)
                    packed.addfile(info, io.BytesIO(data))
                    target = staging / "tree" / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                else:
                    info.mode |= 0o111
                    packed.addfile(info)
        # gzip without a timestamp or file name: the same tree gives the same bytes and sha256.
        with (
            open(staging / "archive.tar.gz", "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        ):
            compressed.write(buffer.getvalue())
        shutil.rmtree(tree, ignore_errors=True)
        (staging / "tree").rename(tree)
        (staging / "archive.tar.gz").chmod(0o644)
        (staging / "archive.tar.gz").rename(archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"llama.cpp source: {archive} ({sha256_of(archive)})")
    return archive, tree


def ensure_build_tools() -> None:
    """cmake and ninja wheels for the hosts' build venv, next to the runtime wheels."""
    present = {path.name.split("-")[0].lower() for path in WHEELHOUSE.glob("*.whl")}
    wanted = [spec for spec in BUILD_TOOL_WHEELS if spec.split("==", maxsplit=1)[0] not in present]
    if not wanted:
        return
    sys.path.insert(0, str(HERE))
    import wheelhouse as sandbox_wheelhouse

    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(WHEELHOUSE)]
    command += [*sandbox_wheelhouse.target_platform_args(), *wanted]
    subprocess.run(command, check=True, env=pip_environment())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_tiny_model(model: str) -> Path:
    model_dir = MODELS / model
    if not (model_dir / "config.json").is_file():
        size = ["--size-mb", model.rsplit("-", 1)[1].removesuffix("mb")] if model.endswith("mb") else []
        command = [sys.executable, str(HERE / "make_tiny_model.py"), "--ensure-venv", "--name", model, *size]
        subprocess.run(command, check=True)
    return model_dir


def ensure_gguf(model: str, tree: Path) -> Path:
    model_dir = ensure_tiny_model(model)
    output_dir = MODELS / f"{model}-gguf"
    output = output_dir / f"{model}-f16.gguf"
    specification = {
        "source": source_archive_path().name,
        "model_stamp": (model_dir / ".llmserve-tiny-model.json").read_text(encoding="utf-8"),
        "wrapper": CONVERT_WRAPPER,
        "outtype": "f16",
    }
    stamp = output_dir / STAMP_NAME
    if output.is_file() and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == specification:
        return output
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch = output_dir / f".{output.name}.partial"
    environment = dict(os.environ, PYTHONPATH=f"{tree / 'gguf-py'}:{tree}")
    command = [str(TOOLS_VENV / "bin" / "python"), "-c", CONVERT_WRAPPER, str(model_dir)]
    command += ["--outtype", "f16", "--outfile", str(scratch)]
    subprocess.run(command, check=True, env=environment, cwd=tree)
    scratch.chmod(0o644)
    scratch.rename(output)
    stamp.write_text(json.dumps(specification, indent=2) + "\n", encoding="utf-8")
    output_dir.chmod(0o755)
    print(f"tiny GGUF: {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama", help="a model made by make_tiny_model.py (directory name)")
    options = parser.parse_args()
    archive, tree = ensure_source()
    ensure_build_tools()
    gguf = ensure_gguf(options.model, tree)
    print(json.dumps({"source_archive": str(archive), "gguf": str(gguf), "wheelhouse": str(WHEELHOUSE)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
