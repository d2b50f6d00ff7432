"""Benchmarks that write ``benchmarks/results/*.json``."""

from .ablation import ABLATIONS, format_ablation_table, run_ablation
from .accuracy import format_table, format_targets, run_accuracy_benchmark
from .compare import (PEERS, format_compare_table, format_compare_targets, format_seed_table, format_verdicts,
                      run_compare_benchmark, verdicts)
from .distill import format_distill_table, run_distill_benchmark
from .regime import format_regime_table, run_regime_benchmark
from .runs import format_train_minutes
from .speed import SpeedPlan, format_speed_table, format_speed_targets, run_speed_benchmark
from .transfer import TransferPlan, format_transfer_table, format_transfer_targets, run_transfer_benchmark

__all__ = ["ABLATIONS", "format_ablation_table", "run_ablation", "PEERS", "format_compare_table", "format_compare_targets", "format_table", "format_targets", "format_train_minutes", "format_verdicts",
           "format_seed_table", "format_distill_table", "run_distill_benchmark", "format_regime_table",
           "run_regime_benchmark",
           "run_accuracy_benchmark", "run_compare_benchmark", "verdicts", "SpeedPlan", "format_speed_table",
           "format_speed_targets", "run_speed_benchmark", "TransferPlan", "format_transfer_table",
           "format_transfer_targets", "run_transfer_benchmark"]
