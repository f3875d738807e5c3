"""Runs leaving the machine: dataset folders with Hub cards, usage and cost, uploads."""
from __future__ import annotations

from generator.export.dataset import ExportOptions, ExportResult, export_run
from generator.export.rows import ExportError, Filters, Preference
from generator.export.usage import compute_usage

__all__ = ["ExportError", "ExportOptions", "ExportResult", "Filters", "Preference", "compute_usage", "export_run"]
