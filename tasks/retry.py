"""Retry policy shared by tasks: retry transient failures, never a user error that would fail again."""

from __future__ import annotations

from typing import Any

from llmops.errors import LlmopsError


def transient_only(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: False for LlmopsError (bad config, unknown version, missing bucket)."""
    try:
        state.result()
    except LlmopsError:
        return False
    except Exception:
        return True
    return True
