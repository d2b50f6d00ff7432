"""Benchmarks that write ``benchmarks/results/*.json``."""

from .accuracy import format_table, run_accuracy_benchmark

__all__ = ["format_table", "run_accuracy_benchmark"]
