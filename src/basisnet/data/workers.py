"""Set-up of DataLoader worker processes."""

from __future__ import annotations

import signal

__all__ = ["leave_signals_to_the_main_process"]


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """``worker_init_fn``: SIGTERM and SIGINT reach every process of a job (SLURM signals all its tasks, a
    terminal's Ctrl-C the whole process group). A worker that died of them would break the batch the
    main process is waiting for while it finishes its step and saves; the main process stops the workers
    itself when it is done."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
