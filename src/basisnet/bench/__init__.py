"""Benchmarks that write ``benchmarks/results/*.json``: studies (plans of training runs, ``study.py``) and
measuring benches (speed, deploy, loader, training loop, GPU check); ``commands.py`` makes each a
``basisnet bench`` subcommand."""

from . import compare, regime, distill, ablation, accuracy, transfer  # noqa: F401, I001  (register, in help order)
from .ablation import ABLATIONS, format_ablation_table
from .accuracy import format_targets
from .compare import format_compare_table, format_compare_targets, format_seed_table, format_verdicts, verdicts
from .distill import format_distill_table
from .evaluations import format_records_table
from .peers import PEERS
from .regime import format_regime_table
from .runs import format_train_minutes
from .speed import SpeedPlan, format_speed_table, format_speed_targets, run_speed_benchmark
from .study import Plan, Run, Study, get_study, list_studies, register_study, run_study
from .transfer import format_transfer_targets

__all__ = ["ABLATIONS", "PEERS", "Plan", "Run", "SpeedPlan", "Study", "format_ablation_table", "format_compare_table",
           "format_compare_targets", "format_distill_table", "format_records_table", "format_regime_table",
           "format_seed_table", "format_speed_table", "format_speed_targets", "format_targets",
           "format_train_minutes", "format_transfer_targets", "format_verdicts", "get_study", "list_studies",
           "register_study", "run_speed_benchmark", "run_study", "verdicts"]
