"""Content-addressed local cache of model versions: a node only ever starts from a verified copy."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import IntegrityError
from llmops.hashing import dir_sha256


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
        """Raise IntegrityError unless the tree at `path` hashes to `expected`."""
        actual = dir_sha256(path)
        if actual != expected:
            raise IntegrityError(
                f"model at {path} hashes to {actual[:16]}..., expected {expected[:16]}...",
                "the copy is corrupt or the registry tag is wrong: `llmops model verify` re-pulls it; "
                "if the registry copy is wrong, re-register the version",
            )

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
