"""One node per GPU: which of a host's GPUs a new node gets (its CUDA_VISIBLE_DEVICES).

A claim is a file `gpu<N>.json` in the host's claims folder, created with O_EXCL, so two flows starting nodes at
once (two tenants' pools on one host) never get the same GPU. It names the node and, once the engine runs, its
process; a claim whose process has ended (a node killed without a stop) is taken over, and so is one whose node
never got a process within `spawn_grace_s` (a start that crashed between claim and spawn).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from llmops import proc
from llmops.errors import ServiceError


class GpuClaims:
    def __init__(self, claims_dir: Path, gpus: Sequence[int], spawn_grace_s: float = 120.0) -> None:
        self.dir = claims_dir
        self.gpus = tuple(gpus)
        self.spawn_grace_s = spawn_grace_s

    def _file(self, gpu: int) -> Path:
        return self.dir / f"gpu{gpu}.json"

    def _read(self, gpu: int) -> dict[str, object] | None:
        try:
            data = json.loads(self._file(gpu).read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half written: a claim being made right now

    def _stale(self, claim: dict[str, object]) -> bool:
        rec = claim.get("proc")
        if isinstance(rec, dict):
            return not proc.is_alive(proc.ProcRecord.from_json(rec))
        at = claim.get("at")
        return isinstance(at, (int, float)) and time.time() - at > self.spawn_grace_s

    def held(self) -> dict[int, str]:
        """GPU -> node name, for the claims that still hold."""
        out = {}
        for g in self.gpus:
            c = self._read(g)
            if c is not None and not self._stale(c):
                out[g] = str(c.get("node", "?"))
        return out

    def claim(self, node: str) -> int:
        """The first free GPU, now claimed for `node`; ServiceError naming the holders when none is free."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for g in self.gpus:
            f = self._file(g)
            c = self._read(g)
            if c is not None:
                if c.get("node") == node:
                    return g  # a retried start of the same node keeps its GPU
                if not self._stale(c):
                    continue
                # take over a dead node's claim: move it away first, so that only one taker succeeds
                gone = f.with_name(f"{f.name}.stale-{os.getpid()}")
                try:
                    f.rename(gone)
                    gone.unlink()
                except FileNotFoundError:
                    continue
            try:
                fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as out:
                json.dump({"node": node, "at": time.time(), "proc": None}, out)
            return g
        holders = ", ".join(f"GPU {g}: {n}" for g, n in sorted(self.held().items())) or "none readable"
        raise ServiceError(f"no free GPU for node {node}: each of serving.gpus {list(self.gpus)} serves a node "
                           f"({holders})", "keep the max_replicas of the pools on this host at most the number of "
                           "serving.gpus (a canary needs one more), or add a GPU host")

    def bind(self, gpu: int, node: str, rec: proc.ProcRecord) -> None:
        """Record the engine process holding `gpu` (the claim ends with it)."""
        f = self._file(gpu)
        tmp = f.with_name(f"{f.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"node": node, "at": time.time(), "proc": rec.to_json()}))
        tmp.replace(f)

    def release(self, node: str) -> None:
        """Free every GPU `node` claimed."""
        for g in self.gpus:
            c = self._read(g)
            if c is not None and c.get("node") == node:
                self._file(g).unlink(missing_ok=True)
