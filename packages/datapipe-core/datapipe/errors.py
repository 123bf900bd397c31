"""Datapipe's exceptions and its one redaction helper.

The bottom of the layering: this module imports nothing from ``datapipe``, and every other
module may import it.

Every error Datapipe raises on purpose derives from ``DatapipeError``:

``ConfigError``
    a mistake in how a pipeline is declared or called (unknown table, transform keys no input
    provides, bad ``chunk_size``). Also a ``ValueError``, as such mistakes were before.
``StoreError``
    a backend failed (server down, authentication, missing index). The message names the store,
    the table and the address with its password masked.
``PluginError``
    a plugin is missing, unknown or broken. Also a ``LookupError``.
``StepError``
    a step's batch failed; carries the step name, the failing keys and the original exception.

Secrets never travel in exceptions: messages go through ``redact``, and an exception whose
message was redacted is raised ``from None`` (see ``redacted``) so that the original,
which may still carry the secret, is not chained to it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, TypeVar

# [scheme:]//user:PASSWORD@ -- greedy up to the last "@" of the word, so a password holding "@" is masked whole
_URL_PASSWORD = re.compile(r"((?:[a-zA-Z][a-zA-Z0-9+.\-]*:)?//[^:/@\s]*:)\S*@")


class DatapipeError(Exception):
    """Base class of the errors Datapipe raises on purpose."""


E = TypeVar("E", bound=DatapipeError)


class ConfigError(DatapipeError, ValueError):
    """A pipeline is declared or called wrongly; the message says what to change."""


class StoreError(DatapipeError, RuntimeError):
    """A backend failed (server down, auth, missing index). The message names store, table and address."""


class PluginError(DatapipeError, LookupError):
    """A store kind or executor is unknown, or the plugin providing it failed to load."""


class StepError(DatapipeError):
    """A batch of a step failed: ``step`` (name), ``keys`` (the batch's keys) and ``original``."""

    def __init__(self, step: str, keys: Any, original: BaseException) -> None:
        super().__init__(f"step {step!r}: {type(original).__name__}: {original}")
        self.step = step
        self.keys = keys
        self.original = original


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``; safe for logs, pages and CLI output."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def redact(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """``text`` with the password of every URL in it, and each of ``secrets``, replaced by ``***``."""
    text = mask_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redacted(error: type[E], message: str, secrets: Iterable[Optional[str]] = ()) -> E:
    """``error(redact(message, secrets))``; raise it ``from None`` so the original exception, which may
    still carry the secret, is not chained to it."""
    return error(redact(message, secrets))
