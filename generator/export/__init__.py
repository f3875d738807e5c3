"""Runs leaving the machine: dataset folders with Hub cards, usage and cost, uploads."""
from __future__ import annotations

from .dataset import ExportOptions, ExportResult, export_run
from .rows import ExportError, Filters, Preference
from .usage import compute_usage

__all__ = ["ExportError", "ExportOptions", "ExportResult", "Filters", "Preference", "compute_usage", "export_run"]
