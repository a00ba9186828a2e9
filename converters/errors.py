"""The converter's one error type: what went wrong and what was expected instead."""

from __future__ import annotations

__all__ = ["ConversionError"]


class ConversionError(Exception):
    """The model or its reference data cannot be converted; the message says what was expected.

    The message is one line a person can act on; the CLI prints it as ``edge-convert: <message>``.
    """
