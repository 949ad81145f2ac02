"""The curated support dataset shipped in `data/support/` (policies, control prompts, general Q&A)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from llmops.data.schema import ChatExample, Message
from llmops.errors import ConfigError

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "data" / "support"
SYSTEM_PROMPT = "You are the Quillstack support assistant. Answer in one or two sentences."


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    topic: str
    answer: str
    train_questions: tuple[str, ...] = Field(min_length=1)
    heldout_questions: tuple[str, ...] = Field(min_length=1)


class ControlPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    prompt: str
    reference: str


class GeneralPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    answer: str


@dataclass(frozen=True)
class CuratedSet:
    """Training examples (policies + general mix), held-out policy questions and control prompts."""

    policies: tuple[Policy, ...]
    train: tuple[ChatExample, ...]
    general: tuple[ChatExample, ...]
    heldout: tuple[ChatExample, ...]
    control: tuple[ChatExample, ...]


def _load_list(path: Path, model: type[BaseModel]) -> list[Any]:
    if not path.is_file():
        raise ConfigError(f"curated file {path} is missing", "restore it from git or point data_dir elsewhere")
    items = yaml.safe_load(path.read_text()) or []
    out = []
    for i, item in enumerate(items):
        try:
            out.append(model.model_validate(item))
        except Exception as err:  # pydantic.ValidationError: name the row
            raise ConfigError(f"{path}: item {i}: {err}", "fix that item") from None
    return out


def chat(question: str) -> tuple[Message, ...]:
    """Prompt messages for a support question (the same system prompt in training, eval and serving)."""
    return (Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=question))


def load_curated(data_dir: Path = DEFAULT_DIR) -> CuratedSet:
    """Read the curated YAML files into examples; `slice` is the policy topic, or `general` / `control`."""
    policies = tuple(_load_list(data_dir / "policies.yaml", Policy))
    control_items = _load_list(data_dir / "control.yaml", ControlPrompt)
    general_items = _load_list(data_dir / "general.yaml", GeneralPair)
    train = tuple(ChatExample(prompt=chat(q), completion=p.answer, slice=p.topic, source="curated", ref_id=p.id)
                  for p in policies for q in p.train_questions)
    heldout = tuple(ChatExample(prompt=chat(q), completion=p.answer, slice=p.topic, source="curated-heldout",
                                ref_id=p.id) for p in policies for q in p.heldout_questions)
    general = tuple(ChatExample(prompt=chat(g.prompt), completion=g.answer, slice="general", source="general")
                    for g in general_items)
    control = tuple(ChatExample(prompt=chat(c.prompt), completion=c.reference, slice="control",
                                source="control", ref_id=c.id) for c in control_items)
    return CuratedSet(policies, train, general, heldout, control)
