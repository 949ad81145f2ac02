"""Content hashes of files and model directories."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest_files(root: Path) -> list[Path]:
    """The regular files under `root` a directory digest covers, sorted; hidden files (any part starting with a dot)
    excluded."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))


def dir_manifest(root: Path) -> dict[str, str]:
    """Map each regular file under `root` (relative POSIX path) to its sha256; hidden files excluded."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in manifest_files(root)}


def manifest_digest(manifest: dict[str, str]) -> str:
    """One sha256 over a manifest: it changes if any file is added, removed, renamed or altered."""
    h = hashlib.sha256()
    for rel in sorted(manifest):
        h.update(f"{rel}\0{manifest[rel]}\n".encode())
    return h.hexdigest()


def dir_sha256(root: Path) -> str:
    """Content digest of a directory tree (see `manifest_digest`)."""
    return manifest_digest(dir_manifest(root))
