"""Converters: turn a trained model into a verified, signed model bundle for the edge agent."""

from converters.api import QUANTIZATIONS, TARGETS, convert
from converters.errors import ConversionError
from converters.parity import ParityPolicy
from converters.progress import Progress
from converters.reference import Reference, read_reference

__all__ = [
    "QUANTIZATIONS",
    "TARGETS",
    "ConversionError",
    "ParityPolicy",
    "Progress",
    "Reference",
    "convert",
    "read_reference",
]
