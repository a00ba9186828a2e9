"""The edge agent: reads sensors, builds feature windows, runs models, delivers every result."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-inference")
except PackageNotFoundError:  # running from a source checkout that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
