"""The ``curriculum`` command: demo, score report, bench (and the demo data loaders). Nothing in
the library imports this package."""

from .main import main

__all__ = ["main"]
