"""The `synthgen` command: thin click commands over the Python API, one module per command group."""
from generator.cli.main import main

__all__ = ["main"]
