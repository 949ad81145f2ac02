"""Content-addressed local cache of model versions: a node only ever starts from a verified copy."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import IntegrityError
from llmops.hashing import dir_sha256, manifest_files

_VERIFIED: dict[str, tuple[str, tuple[tuple[str, int, int, int], ...]]] = {}
_VERIFIED_LOCK = threading.Lock()


def _fingerprint(root: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(relative path, size, mtime ns, inode) of every file the digest covers."""
    return tuple((p.relative_to(root).as_posix(), (st := p.stat()).st_size, st.st_mtime_ns, st.st_ino)
                 for p in manifest_files(root))


@dataclass(frozen=True)
class CachedModel:
    """A verified model directory in the cache."""

    path: Path
    sha256: str
    fetched: bool  # False when the cache already held it


class ModelCache:
    """Directories named `sha256-<digest>` under `root`; each is re-hashed before use.

    Args:
        root: cache directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / f"sha256-{sha256}"

    def verify(self, path: Path, expected: str) -> None:
        """Raise IntegrityError unless the tree at `path` hashes to `expected`. Within one process a tree already
        hashed to `expected` whose files all kept their name, size, mtime and inode is not hashed again (nodes
        started side by side would each re-read the same ~300 MB); any write to it changes its mtime."""
        key = str(path.resolve())
        seen = _fingerprint(path)
        with _VERIFIED_LOCK:
            if _VERIFIED.get(key) == (expected, seen):
                return
        actual = dir_sha256(path)
        if actual != expected:
            raise IntegrityError(
                f"model at {path} hashes to {actual[:16]}..., expected {expected[:16]}...",
                "the copy is corrupt or the registry tag is wrong: `llmops model verify` re-pulls it; "
                "if the registry copy is wrong, re-register the version",
            )
        with _VERIFIED_LOCK:
            _VERIFIED[key] = (expected, seen)

    def get(self, sha256: str, fetch: Callable[[Path], None]) -> CachedModel:
        """Return the verified directory for `sha256`, calling `fetch(tmpdir)` to fill it on a miss.

        A corrupt cached copy is discarded and fetched again; a fetched copy that does not match
        raises IntegrityError and is not kept, so the cache never holds unverified content.
        """
        final = self.path_for(sha256)
        if final.is_dir():
            try:
                self.verify(final, sha256)
                return CachedModel(final, sha256, fetched=False)
            except IntegrityError:
                shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.root))
        try:
            fetch(tmp)
            self.verify(tmp, sha256)
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent pull of the same version renamed its copy first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CachedModel(final, sha256, fetched=True)
