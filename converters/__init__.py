"""Converters: turn a trained model into a verified, signed model bundle for the edge agent."""

from converters.api import convert

__all__ = ["convert"]
