"""Errors a user can act on: each names what is wrong and how to fix it."""

from __future__ import annotations


class LlmopsError(Exception):
    """Base class for errors shown to users without a traceback.

    Args:
        problem: what went wrong, naming the field, file, port or service.
        fix: what the user should do about it.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class ConfigError(LlmopsError):
    """A configuration file or value is invalid."""


class ServiceError(LlmopsError):
    """A service of the local stack could not start or answer."""


class IntegrityError(LlmopsError):
    """Content did not match the hash it was registered with."""


class RegistryError(LlmopsError):
    """A model, version or alias is missing from the registry."""
