"""Early exit on a stream of frames, its stages in parallel (BasisNet's claim: the two stages can run on
different processing units).

Each stage of a multi-exit model runs in its own worker with its own intra-op thread budget, linked to
the next by a bounded queue: while the specialist works on frame t, the lightweight model already
previews frame t+1. Frames that exit early skip the later stages; results come out in input order. An
exception in any stage stops every stage and is raised to the consumer; nothing is left running.

The stages are any ``Stages`` (PyTorch, or the graphs ``basisnet export`` wrote in ONNX Runtime, each
worker opening only its own stage's session); each frame's decision at a stage is the early-exit
predictor's own (``EarlyExitPredictor.decide``). Workers are threads where the stages compute without
the GIL (ONNX Runtime), which saves pickling states between processes; processes otherwise: at batch 1
an eager PyTorch model spends much of its time in Python dispatch, which threads of one interpreter
serialize on the GIL (BENCHMARKS.md measures both).
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import queue
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models.protocol import map_state
from .early_exit import EarlyExitPredictor
from .stages import Stages

__all__ = ["FrameResult", "StreamPredictor"]


@dataclass
class FrameResult:
    """One frame's answer: its position in the stream, class, confidence, the exit that answered (counted from
    1, as :class:`Predictions`) and seconds from entering the pipeline to its answer."""

    index: int
    cls: int
    confidence: float
    exit: int
    latency_s: float


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamPredictor:
    """Runs ``stages`` over single frames (``(3, H, W)`` normalized tensors), one worker per stage.

    ``stages``: best exported at batch 1 for ONNX Runtime. ``stage_threads``: intra-op threads of each
    stage (default 1 each); ``queue_size``: frames waiting between two stages at most (bounds memory and
    latency). ``parallel=False`` runs the same stages one after the other in the caller's thread, the
    baseline the parallel form is measured against. ``workers``: ``auto`` (threads where the stages release
    the GIL, processes otherwise), ``process`` or ``thread``.
    """

    def __init__(self, stages: Stages, threshold: float, stage_threads: Sequence[int] | None = None,
                 queue_size: int = 4, parallel: bool = True, workers: str = "auto") -> None:
        self.stage_threads = list(stage_threads or [1] * stages.num_exits)
        if len(self.stage_threads) != stages.num_exits or min(self.stage_threads) < 1:
            raise ValueError(f"stage_threads needs {stages.num_exits} counts >= 1, got {self.stage_threads}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if workers not in ("auto", "process", "thread"):
            raise ValueError(f"workers must be 'auto', 'process' or 'thread', got {workers!r}")
        if workers == "auto":
            workers = "thread" if stages.releases_gil else "process"
        self.queue_size, self.parallel, self.workers = queue_size, parallel, workers
        self.stages = stages.with_threads(self.stage_threads)
        self.early_exit = EarlyExitPredictor(self.stages, threshold)

    @property
    def how(self) -> str:
        """How the stream runs, in words (``predict --stream`` prints it under its numbers)."""
        how = f"stages in parallel, {self.workers} workers" if self.parallel else "stages one after the other"
        return f"{how}, {self.stages.label}"

    def _stage(self, k: int, item: tuple) -> tuple[bool, tuple]:
        """Exit ``k`` on one frame (stage 0 gets it as a batch of one): (answered, result or the item for
        stage k + 1)."""
        index, start, state = item
        with torch.inference_mode():
            confidence, classes, answers, state = self.early_exit.decide(
                self.stages.start(state) if k == 0 else state, k)
        if bool(answers[0]):
            return True, FrameResult(index, int(classes[0]), float(confidence[0]), k + 1, time.perf_counter() - start)
        return False, (index, start, state)

    def predict(self, frames: Iterable[Tensor]) -> Iterator[FrameResult]:
        """The results of ``frames``, in their order, as they become ready."""
        if not self.parallel:
            return self._sequential(frames)
        return self._parallel(frames, mp.get_context("spawn") if self.workers == "process" else None)

    def _sequential(self, frames: Iterable[Tensor]) -> Iterator[FrameResult]:
        for index, frame in enumerate(frames):
            item = (index, time.perf_counter(), frame.unsqueeze(0))
            for k in range(self.stages.num_exits):
                answered, item = self._stage(k, item)
                if answered:
                    yield item
                    break

    def _parallel(self, frames: Iterable[Tensor], ctx: mp.context.BaseContext | None) -> Iterator[FrameResult]:
        """Stage workers (processes from ``ctx``, else threads) linked by bounded queues; a feeder thread
        pushes the frames; this generator puts the answers back in order."""
        stages = self.stages.num_exits
        make_queue = (lambda size=0: ctx.Queue(size)) if ctx else (lambda size=0: queue.Queue(size))
        links = [make_queue(self.queue_size) for _ in range(stages)]  # links[k]: into stage k
        results = make_queue()
        stop = ctx.Event() if ctx else threading.Event()
        if ctx:
            workers = [ctx.Process(target=_stage_worker, args=(self, k, links, results, stop, True), daemon=True,
                                   name=f"stream-stage{k + 1}") for k in range(stages)]
        else:
            workers = [threading.Thread(target=_stage_worker, args=(self, k, links, results, stop, False), daemon=True,
                                        name=f"stream-stage{k + 1}") for k in range(stages)]
        wire = _to_wire if ctx else (lambda state: state)

        def feed() -> None:
            try:
                for index, frame in enumerate(frames):
                    if not _put(links[0], (index, time.perf_counter(), wire(frame.unsqueeze(0))), stop):
                        return
                _put(links[0], _END, stop)
            except BaseException as err:  # a bad frame source stops the stream like a failing stage
                results.put(_Failure(err))
                stop.set()

        caller_threads = torch.get_num_threads()
        for w in workers:
            w.start()
        feeder = threading.Thread(target=feed, name="stream-feed", daemon=True)
        feeder.start()
        pending: list[tuple[int, FrameResult]] = []
        next_index = 0
        try:
            while True:
                item = results.get()
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, str) and item == _END:
                    break
                heapq.heappush(pending, (item.index, item))
                while pending and pending[0][0] == next_index:
                    yield heapq.heappop(pending)[1]
                    next_index += 1
            while pending:
                yield heapq.heappop(pending)[1]
        finally:
            stop.set()
            feeder.join()
            for w in workers:  # a thread sees ``stop`` within one queue poll; a process gets a grace period
                w.join(timeout=30 if ctx else None)
                if w.is_alive():
                    w.terminate()
                    w.join()  # reaped: no child is left to the caller
            if ctx:  # their feeder threads would outlive the stream otherwise
                for q in [*links, results]:
                    q.cancel_join_thread()
                    q.close()
            torch.set_num_threads(caller_threads)


_END = "__end_of_stream__"  # a string, so it survives a process boundary unchanged


def _put(q, item: object, stop) -> bool:
    """Put unless the stream is stopping (a full queue must not block a shutdown)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _to_wire(state: object) -> object:
    """Tensors as numpy arrays: pickled by value between processes (a frame's state is small), where
    torch's shared-memory handles would tie each tensor to its sender's lifetime."""
    return map_state(state, Tensor.numpy)


def _from_wire(state: object) -> object:
    return map_state(state, torch.from_numpy, leaf=np.ndarray)


def _stage_worker(predictor: StreamPredictor, k: int, links: list, results, stop, wire: bool) -> None:
    """Stage ``k``'s loop: take a frame's state, answer it or pass it on, until the end of the stream."""
    torch.set_num_threads(predictor.stage_threads[k])  # the process's threads (ONNX Runtime sessions carry theirs)
    last = k == len(links) - 1
    try:
        while not stop.is_set():
            try:
                item = links[k].get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(item, str) and item == _END:
                if last:
                    results.put(_END)
                else:
                    _put(links[k + 1], _END, stop)
                return
            if wire:
                item = (item[0], item[1], _from_wire(item[2]))
            answered, out = predictor._stage(k, item)
            if wire and not answered:
                out = (out[0], out[1], _to_wire(out[2]))
            if answered:
                results.put(out)
            elif not _put(links[k + 1], out, stop):
                return
    except BaseException as err:
        results.put(_Failure(_picklable(err)))
        stop.set()


def _picklable(err: BaseException) -> BaseException:
    """The error itself when it crosses a process boundary intact, else a RuntimeError with its traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError("".join(traceback.format_exception(err)))
