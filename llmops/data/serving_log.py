"""The serving log: what each node answered, by the request id the gateway returned (`X-Request-Id`).

Nodes append one JSON line per answered chat completion to their own file under the log directory; the feedback
API looks a request id up here to turn a user's verdict into a full `FeedbackRecord` (messages, response, version),
the record the training pipeline reads from the S3 feedback log.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.data.schema import FeedbackRecord, Message, Verdict


class Served(BaseModel):
    """One answered request as a node logged it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=200)
    tenant: str = "default"
    model_version: str = Field(min_length=1)
    messages: tuple[Message, ...] = Field(min_length=1)
    response: str
    timestamp: datetime


class FeedbackCall(BaseModel):
    """`POST /v1/feedback`: a verdict on one answer, named by the gateway's `X-Request-Id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=200)
    verdict: Literal["good", "bad"]
    correction: str | None = Field(None, min_length=1, max_length=8000)


def feedback_record(call: FeedbackCall, served: Served, now: datetime) -> FeedbackRecord:
    """The S3 feedback log's record: the served request with the user's verdict (validated like every record)."""
    return FeedbackRecord(request_id=served.request_id, tenant=served.tenant, messages=served.messages,
                          model_version=served.model_version, response=served.response,
                          verdict=Verdict(call.verdict), correction=call.correction, timestamp=now)


class ServingLog:
    """Index of the log directory's JSON lines by request id, read incrementally (each file from its last offset).

    Keeps the newest `capacity` requests; malformed lines are counted and skipped, never fatal."""

    def __init__(self, directory: Path, capacity: int = 200_000) -> None:
        self.directory = directory
        self.capacity = capacity
        self._offsets: dict[Path, int] = {}
        self._index: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()
        self.malformed = 0
        self._versions: set[tuple[str, str]] = set()

    def refresh(self) -> None:
        with self._lock:
            for path in sorted(self.directory.glob("*.jsonl")):
                start = self._offsets.get(path, 0)
                with path.open("rb") as f:
                    f.seek(start)
                    data = f.read()
                end = data.rfind(b"\n") + 1  # a line still being written waits for the next refresh
                self._offsets[path] = start + end
                for line in data[:end].splitlines():
                    if not line.strip():
                        continue
                    try:
                        rec = Served.model_validate(json.loads(line))
                    except (ValueError, ValidationError):
                        self.malformed += 1
                        continue
                    self._index[rec.request_id] = rec
                    self._versions.add((rec.tenant, rec.model_version))
                    self._index.move_to_end(rec.request_id)
            while len(self._index) > self.capacity:
                self._index.popitem(last=False)

    def versions(self) -> set[tuple[str, str]]:
        """(tenant, model version) pairs that answered requests since the receiver started."""
        with self._lock:
            return set(self._versions)

    def get(self, request_id: str) -> Served | None:
        found = self._index.get(request_id)
        if found is None:
            self.refresh()
            found = self._index.get(request_id)
        return found
