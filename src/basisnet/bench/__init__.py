"""Benchmarks that write ``benchmarks/results/*.json``."""

from .accuracy import format_table, format_targets, run_accuracy_benchmark
from .compare import PEERS, format_compare_table, format_verdicts, run_compare_benchmark, verdicts
from .runs import format_train_minutes

__all__ = ["PEERS", "format_compare_table", "format_table", "format_targets", "format_train_minutes", "format_verdicts",
           "run_accuracy_benchmark", "run_compare_benchmark", "verdicts"]
