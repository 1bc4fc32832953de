# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Staged runtimes: one venv per install fingerprint, and a link to the one that serves.

python_runtime builds each runtime into ``<venvs dir>/<first 12 hex of its install fingerprint>`` and never
installs into a directory a service runs from. ``llmserve_venv`` is a symlink to the runtime in use, switched
atomically (a new link renamed over the old one) only once the new runtime serves. The units name the runtime's
own directory, so their files change when the runtime does (that restarts the serving group) and a unit put back
names the runtime it ran on. What is decided here: a runtime's directory, whether a directory is one of ours
(its stamp), what to do with a venv that still is a real directory at the link's path (a node deployed before
runtimes were staged), and which runtimes to prune.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional

# python_runtime writes this file into a runtime once pip and the byte-compile finished; it holds the install
# fingerprint (sha256 hex), so a directory carrying it is one the collection installed, complete.
STAMP_NAME = ".llmserve-installed"
NAME_LENGTH = 12
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")

# What sits at the link's path.
ABSENT = "absent"
LINK = "link"
DIRECTORY = "directory"
OTHER = "other"

# A runtime directory for this run's fingerprint.
INSTALLED = "installed"  # its stamp holds the fingerprint: nothing to install
PARTIAL = "partial"  # no stamp: an install that did not finish; pip completes it
FOREIGN = "foreign"  # a stamp of another fingerprint (or none of ours): never installed into


def is_fingerprint(value: Optional[str]) -> bool:
    return bool(value) and _FINGERPRINT.match(value or "") is not None


def runtime_name(fingerprint: str) -> str:
    """The directory name of the runtime installed from FINGERPRINT (python_runtime_install_fingerprint)."""
    if not is_fingerprint(fingerprint):
        raise ValueError(f"an install fingerprint is 64 lowercase hex digits (sha256), got {fingerprint!r}")
    return fingerprint[:NAME_LENGTH]


def runtime_path(root: str, fingerprint: str) -> str:
    return os.path.join(os.path.normpath(root), runtime_name(fingerprint))


@dataclass
class Runtime:
    """One directory under the venvs directory."""

    path: str
    name: str
    stamp: Optional[str]
    # The stamp's mtime: when the install finished (an adopted venv keeps its own).
    installed_at: Optional[float]

    @property
    def ours(self) -> bool:
        """Installed by python_runtime, complete, and under the name its stamp gives it."""
        return is_fingerprint(self.stamp) and self.name == (self.stamp or "")[:NAME_LENGTH]


@dataclass
class LinkState:
    """What is at the link's path (llmserve_venv)."""

    path: str
    kind: str
    # A link: where it points, as an absolute normalised path.
    target: Optional[str] = None
    # A real directory: its stamp, if it has one.
    stamp: Optional[str] = None
    stamp_mtime: Optional[float] = None


@dataclass
class Adoption:
    """What to do with a venv that is a real directory at the link's path."""

    action: str  # none | adopt | refuse
    destination: Optional[str] = None
    reason: str = ""


@dataclass
class Prune:
    remove: List[str] = field(default_factory=list)
    keep: List[str] = field(default_factory=list)
    # Directories under the venvs directory that carry no stamp of ours: never removed, only reported.
    left: List[str] = field(default_factory=list)


# --- reading a node ------------------------------------------------------------------------------------------


def read_stamp(directory: str, stamp_name: str = STAMP_NAME):
    """(content, mtime) of DIRECTORY's stamp, or (None, None) without one."""
    path = os.path.join(directory, stamp_name)
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read(256).strip()
        return content, os.stat(path).st_mtime
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, UnicodeDecodeError):
        return None, None


def read_link(path: str, stamp_name: str = STAMP_NAME) -> LinkState:
    path = os.path.normpath(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return LinkState(path=path, kind=ABSENT)
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        target = os.path.normpath(os.path.join(os.path.dirname(path), target))
        return LinkState(path=path, kind=LINK, target=target)
    if stat.S_ISDIR(mode):
        stamp, mtime = read_stamp(path, stamp_name)
        return LinkState(path=path, kind=DIRECTORY, stamp=stamp, stamp_mtime=mtime)
    return LinkState(path=path, kind=OTHER)


def read_runtimes(root: str, stamp_name: str = STAMP_NAME) -> List[Runtime]:
    """Every directory directly under ROOT (links and files there are not runtimes), by name."""
    root = os.path.normpath(root)
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    runtimes = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            stamp, mtime = read_stamp(entry.path, stamp_name)
            runtimes.append(Runtime(path=entry.path, name=entry.name, stamp=stamp, installed_at=mtime))
    return runtimes


def runtime_state(runtimes: Iterable[Runtime], path: str, fingerprint: str) -> str:
    for runtime in runtimes:
        if runtime.path == path:
            if runtime.stamp is None:
                return PARTIAL
            return INSTALLED if runtime.stamp == fingerprint else FOREIGN
    return ABSENT


def runtimes_named_by_units(unit_texts: Mapping[str, str], root: str, link: Optional[LinkState] = None) -> Dict:
    """Runtime directory -> the units whose file names it (ExecStart, PATH, ...).

    A unit that still names the link's path (written before runtimes were staged) runs whatever the link points at,
    so it holds the link's target.
    """
    root = os.path.normpath(root)
    pattern = re.compile(re.escape(root) + r"/([^/\s\"'=:;]+)")
    named: Dict[str, List[str]] = {}
    for unit, text in sorted(unit_texts.items()):
        paths = {os.path.join(root, match) for match in pattern.findall(text)}
        if (
            link is not None
            and link.kind == LINK
            and link.target
            and re.search(re.escape(link.path) + r"(?![\w.-])", text)
        ):
            paths.add(link.target)
        for path in paths:
            named.setdefault(path, []).append(unit)
    return named


# --- decisions -----------------------------------------------------------------------------------------------


def adoption(link: LinkState, root: str, runtimes: Iterable[Runtime], same_filesystem: bool = True) -> Adoption:
    """What to do with LINK when it is not a link yet.

    A venv python_runtime stamped at the link's path (a node deployed before runtimes were staged) moves, as it
    is, into the venvs directory under the name its stamp gives it, and the link takes its place: a rename within
    one filesystem, so a running vLLM keeps its files and its unit's old path resolves to the same venv. Anything
    else there is not the collection's to move.
    """
    if link.kind in (ABSENT, LINK):
        return Adoption(action="none")
    if link.kind == OTHER:
        return Adoption(
            action="refuse",
            reason=f"llmserve_venv={link.path} is neither a directory nor a link. python_runtime makes it a link to "
            f"the runtime in use under llmserve_venvs_dir and will not replace what is there: remove it, or set "
            f"llmserve_venv to a path of its own.",
        )
    if not is_fingerprint(link.stamp):
        return Adoption(
            action="refuse",
            reason=f"llmserve_venv={link.path} is a directory without the stamp {STAMP_NAME} that python_runtime "
            f"writes into the venvs it installs, so the collection did not install it and will not move it. "
            f"python_runtime keeps each runtime under llmserve_venvs_dir ({os.path.normpath(root)}) and makes "
            f"llmserve_venv a link to the one in use: move that directory away (or remove it) and re-run, which "
            f"installs the runtime beside it.",
        )
    destination = os.path.join(os.path.normpath(root), runtime_name(link.stamp or ""))
    if any(runtime.path == destination for runtime in runtimes):
        return Adoption(
            action="refuse",
            destination=destination,
            reason=f"llmserve_venv={link.path} is a stamped venv to move to {destination}, which exists already. "
            f"Remove the one no unit runs from (systemctl cat vllm.service shows the path), then re-run.",
        )
    if not same_filesystem:
        return Adoption(
            action="refuse",
            destination=destination,
            reason=f"llmserve_venv={link.path} is a venv to move to {destination}, on another filesystem: a move "
            f"there would copy the venv under the running services. Set llmserve_venvs_dir to a directory on the "
            f"filesystem of {os.path.dirname(link.path)} (the default is beside llmserve_venv).",
        )
    return Adoption(action="adopt", destination=destination)


def problems(link: LinkState, plan: Adoption, root: str, fingerprint: Optional[str], state: Optional[str]) -> List[str]:
    """Why python_runtime cannot go on with this node, before it changes anything."""
    found = [plan.reason] if plan.action == "refuse" else []
    if os.path.lexists(root) and not os.path.isdir(root):
        found.append(f"llmserve_venvs_dir={root} is not a directory. Remove what is there or choose another path.")
    if fingerprint and state == FOREIGN:
        found.append(
            f"{runtime_path(root, fingerprint)} holds a runtime that is not this run's install (its {STAMP_NAME} "
            f"does not hold the fingerprint {fingerprint}), so python_runtime will not install into it. Remove it "
            f"if no unit runs from it (systemctl cat vllm.service), then re-run."
        )
    return found


def to_prune(runtimes: Iterable[Runtime], current: str, named_by_units: Iterable[str], keep: int) -> Prune:
    """Which runtimes to remove once CURRENT serves.

    Kept: CURRENT, every runtime a unit on the node names, and the KEEP - 1 newest others (KEEP counts the
    runtime in use), so a rollback finds the previous runtime in place. Only directories carrying our stamp under
    their own name are ever removed.
    """
    if keep < 1:
        raise ValueError(f"python_runtime_keep must be 1 or more (the runtime in use counts), got {keep}")
    current = os.path.normpath(current)
    named = {os.path.normpath(path) for path in named_by_units}
    runtimes = list(runtimes)
    ours = [runtime for runtime in runtimes if runtime.ours]
    newest_first = sorted(ours, key=lambda runtime: (runtime.installed_at or 0.0, runtime.name), reverse=True)
    kept = {current} | named
    kept.update(runtime.path for runtime in [r for r in newest_first if r.path != current][: keep - 1])
    result = Prune(left=[runtime.path for runtime in runtimes if not runtime.ours])
    for runtime in sorted(ours, key=lambda runtime: runtime.path):
        (result.keep if runtime.path in kept else result.remove).append(runtime.path)
    return result


def teardown(link: LinkState, runtimes: Iterable[Runtime]) -> Prune:
    """What teardown removes: every runtime of ours and the link; an unstamped directory stays."""
    runtimes = list(runtimes)
    result = Prune(
        remove=[runtime.path for runtime in runtimes if runtime.ours],
        left=[runtime.path for runtime in runtimes if not runtime.ours],
    )
    if link.kind == LINK or (link.kind == DIRECTORY and is_fingerprint(link.stamp)):
        result.remove.append(link.path)
    elif link.kind != ABSENT:
        result.left.append(link.path)
    return result


# --- changing a node -----------------------------------------------------------------------------------------


def switch_link(link: str, target: str) -> bool:
    """Point LINK at TARGET in one rename (a process resolving LINK sees the old runtime or the new one)."""
    link = os.path.normpath(link)
    current = read_link(link)
    if current.kind == LINK and current.target == os.path.normpath(target):
        return False
    if current.kind not in (ABSENT, LINK):
        raise ValueError(f"{link} is a {current.kind}, not a link: it is not switched")
    temporary = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.llmserve-{os.getpid()}.tmp")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(os.path.normpath(target), temporary)
    os.replace(temporary, link)
    return True


def rewrite_script_paths(directory: str, old: str, new: str) -> List[str]:
    """Make the console scripts in DIRECTORY/bin run DIRECTORY's interpreter, not the one under OLD.

    pip writes the venv's absolute path into each script's shebang (or, for a long path, into the exec line of a
    ``#!/bin/sh`` trampoline). A venv moved from OLD to NEW would otherwise run OLD's interpreter, which after
    the move is the link, that is whatever runtime is in use. Each file is replaced by a rename; a running
    process keeps the one it read.
    """
    old_bin, new_bin = os.path.normpath(old) + "/bin/", os.path.normpath(new) + "/bin/"
    bin_dir = os.path.join(directory, "bin")
    rewritten = []
    for entry in sorted(os.scandir(bin_dir), key=lambda entry: entry.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        with open(entry.path, "rb") as handle:
            head = handle.read(2)
            if head != b"#!":
                continue
            content = head + handle.read()
        lines = content.split(b"\n", 2)
        changed = False
        for index in range(min(2, len(lines))):
            if old_bin.encode() in lines[index] and (index == 0 or lines[0].startswith(b"#!/bin/sh")):
                lines[index] = lines[index].replace(old_bin.encode(), new_bin.encode())
                changed = True
        if not changed:
            continue
        temporary = entry.path + ".llmserve-tmp"
        with open(temporary, "wb") as handle:
            handle.write(b"\n".join(lines))
        os.chmod(temporary, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
        os.replace(temporary, entry.path)
        rewritten.append(entry.name)
    return rewritten


def adopt(link: str, destination: str) -> List[str]:
    """Move the venv at LINK to DESTINATION and put a link to it at LINK; the scripts it rewrote.

    The link is made before the move and renamed into place right after it, so the old path is missing only
    between two system calls.
    """
    link, destination = os.path.normpath(link), os.path.normpath(destination)
    os.makedirs(os.path.dirname(destination), mode=0o755, exist_ok=True)
    temporary = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.llmserve-{os.getpid()}.tmp")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(destination, temporary)
    try:
        os.rename(link, destination)
    except OSError:
        os.unlink(temporary)
        raise
    os.replace(temporary, link)
    return rewrite_script_paths(destination, link, destination)


def remove(paths: Iterable[str], root: str, link: str, stamp_name: str = STAMP_NAME) -> List[str]:
    """Remove each runtime under ROOT (checked again: ours) and LINK when it is a link; what went."""
    root, link = os.path.normpath(root), os.path.normpath(link)
    removed = []
    for path in paths:
        path = os.path.normpath(path)
        if path == link:
            state = read_link(link, stamp_name)
            if state.kind == LINK:
                os.unlink(link)
            elif state.kind == DIRECTORY and is_fingerprint(state.stamp):
                shutil.rmtree(link)
            else:
                continue
            removed.append(path)
            continue
        if os.path.dirname(path) != root:
            raise ValueError(f"{path} is not a runtime under {root}: not removed")
        stamp, mtime = read_stamp(path, stamp_name)
        if not Runtime(path=path, name=os.path.basename(path), stamp=stamp, installed_at=mtime).ours:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def as_dict(value) -> Dict:
    return asdict(value)
