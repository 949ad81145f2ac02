"""The content-addressed model cache never hands out unverified content."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import IntegrityError
from llmops.hashing import dir_manifest, dir_sha256
from llmops.model_cache import ModelCache


def make_model(d: Path, weights: bytes = b"weights") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub").mkdir(exist_ok=True)
    (d / "sub" / "model.safetensors").write_bytes(weights)
    return d


def copier(src: Path):
    calls: list[Path] = []

    def fetch(dest: Path) -> None:
        calls.append(dest)
        for p in src.rglob("*"):
            target = dest / p.relative_to(src)
            if p.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(p.read_bytes())

    return fetch, calls


def test_digest_changes_with_content_name_and_membership(tmp_path: Path) -> None:
    d = make_model(tmp_path / "m")
    base = dir_sha256(d)
    assert dir_sha256(d) == base
    (d / "sub" / "model.safetensors").write_bytes(b"weightz")
    assert dir_sha256(d) != base
    (d / "sub" / "model.safetensors").write_bytes(b"weights")
    assert dir_sha256(d) == base
    (d / "config.json").rename(d / "config2.json")
    assert dir_sha256(d) != base
    (d / "config2.json").rename(d / "config.json")
    (d / "extra.txt").write_text("x")
    assert dir_sha256(d) != base
    (d / "extra.txt").unlink()
    (d / ".hidden").write_text("ignored")
    assert dir_sha256(d) == base
    assert set(dir_manifest(d)) == {"config.json", "sub/model.safetensors"}


def test_miss_fetches_and_verifies_then_hit_does_not_fetch(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    digest = dir_sha256(src)
    cache = ModelCache(tmp_path / "cache")
    fetch, calls = copier(src)
    first = cache.get(digest, fetch)
    assert first.fetched and first.path == cache.path_for(digest) and len(calls) == 1
    second = cache.get(digest, fetch)
    assert not second.fetched and len(calls) == 1
    assert dir_sha256(second.path) == digest


def test_corrupt_cached_copy_is_replaced(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    digest = dir_sha256(src)
    cache = ModelCache(tmp_path / "cache")
    fetch, calls = copier(src)
    cached = cache.get(digest, fetch)
    (cached.path / "sub" / "model.safetensors").write_bytes(b"bit rot")
    again = cache.get(digest, fetch)
    assert again.fetched and len(calls) == 2
    assert (again.path / "sub" / "model.safetensors").read_bytes() == b"weights"


def test_fetch_with_wrong_content_raises_and_keeps_nothing(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    wrong = dir_sha256(make_model(tmp_path / "other", b"other weights"))
    cache = ModelCache(tmp_path / "cache")
    fetch, _ = copier(src)
    with pytest.raises(IntegrityError, match="expected"):
        cache.get(wrong, fetch)
    assert list((tmp_path / "cache").iterdir()) == []


def test_failed_fetch_leaves_no_partial_directory(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")

    def broken(dest: Path) -> None:
        (dest / "half").write_text("partial")
        raise ConnectionError("network down")

    with pytest.raises(ConnectionError):
        cache.get("0" * 64, broken)
    assert list((tmp_path / "cache").iterdir()) == []


def test_two_concurrent_pulls_of_one_version_both_get_it(tmp_path: Path) -> None:
    """Nodes of two pools (or a scale-out of two) started at once on a cold cache: both fetch, the second rename
    finds the first's verified copy in place and uses it instead of failing."""
    import threading

    src = make_model(tmp_path / "src")
    sha = dir_sha256(src)
    cache = ModelCache(tmp_path / "cache")
    fetch, _ = copier(src)
    both_fetched = threading.Barrier(2)

    def slow_fetch(dest: Path) -> None:
        fetch(dest)
        both_fetched.wait(timeout=10)  # neither renames before both have fetched

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(sha, slow_fetch))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and {r.path for r in results} == {cache.path_for(sha)}  # type: ignore[attr-defined]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"sha256-{sha}"]  # no temporary copy left


def test_an_unchanged_verified_copy_is_not_hashed_again_but_any_write_is_caught(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    import llmops.model_cache as mc

    src = make_model(tmp_path / "src")
    digest = dir_sha256(src)
    cache = ModelCache(tmp_path / "cache")
    cached = cache.get(digest, copier(src)[0])
    hashed: list[Path] = []
    monkeypatch.setattr(mc, "dir_sha256", lambda p: hashed.append(p) or dir_sha256(p))
    cache.verify(cached.path, digest)
    cache.verify(cached.path, digest)
    assert len(hashed) <= 1  # at most once more (the fetch verified its temporary directory), then not again
    n = len(hashed)
    f = cached.path / "sub" / "model.safetensors"
    f.write_bytes(b"WEIGHTS")  # same size, new content: its mtime moved
    with pytest.raises(IntegrityError):
        cache.verify(cached.path, digest)
    assert len(hashed) == n + 1
