"""Records the pipeline reads and writes: serving feedback and chat training examples."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Verdict(str, Enum):
    GOOD = "good"
    BAD = "bad"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=8000)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("content is blank")
        return v


class FeedbackRecord(BaseModel):
    """One user's verdict on one served response (the S3 feedback log holds these as JSON lines)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=200)
    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    messages: tuple[Message, ...] = Field(min_length=1)
    model_version: str = Field(min_length=1)
    response: str
    verdict: Verdict
    correction: str | None = Field(default=None, max_length=8000)
    timestamp: datetime

    @model_validator(mode="after")
    def _shape(self) -> FeedbackRecord:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's turn that the response answered")
        if self.correction is not None and not self.correction.strip():
            raise ValueError("correction is blank: omit it or give the right answer")
        return self


class ChatExample(BaseModel):
    """A training or evaluation example: the prompt messages and the assistant completion.

    `slice` names the evaluation slice (e.g. a policy topic or `general`); `source` where it came from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: tuple[Message, ...] = Field(min_length=1)
    completion: str = Field(min_length=1)
    slice: str = "general"
    source: str = "curated"
    ref_id: str = ""

    def key_text(self) -> str:
        """Normalised text used for de-duplication and the split hash."""
        turns = " | ".join(f"{m.role}:{' '.join(m.content.lower().split())}" for m in self.prompt)
        return f"{turns} => {' '.join(self.completion.lower().split())}"
