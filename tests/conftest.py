"""Make the repository importable as ``ansible_collections.llmserve.cluster``.

The repository root is the collection root, so Python can only import it under
its collection name through a directory named ``ansible_collections/llmserve/cluster``.
A symlink under ``.build/`` gives it that name without copying files.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS_ROOT = REPO_ROOT / ".build" / "collections"


def link_collection() -> None:
    namespace_dir = COLLECTIONS_ROOT / "ansible_collections" / "llmserve"
    namespace_dir.mkdir(parents=True, exist_ok=True)
    link = namespace_dir / "cluster"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    if str(COLLECTIONS_ROOT) not in sys.path:
        sys.path.insert(0, str(COLLECTIONS_ROOT))


link_collection()
