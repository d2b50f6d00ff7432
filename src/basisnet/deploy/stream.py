"""Early exit on a stream of frames, its stages in parallel (BasisNet's claim: the two stages can run on
different processing units).

Each stage of a multi-exit model runs in its own thread with its own intra-op thread budget, linked to
the next by a bounded queue: while the specialist works on frame t, the lightweight model already
previews frame t+1. Frames that exit early skip the later stages; results come out in input order. An
exception in any stage stops every stage and is raised to the consumer; nothing is left running.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.protocol import MultiExitClassifier
from .early_exit import check_threshold

__all__ = ["FrameResult", "StreamPredictor"]

_DONE = object()  # end of the stream, passed down the pipeline


@dataclass
class FrameResult:
    """One frame's answer: its position in the stream, class, confidence, answering stage (0-based) and
    seconds from entering the pipeline to its answer."""

    index: int
    cls: int
    confidence: float
    stage: int
    latency_s: float


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamPredictor:
    """Runs ``model`` staged over single frames (``(3, H, W)`` normalized tensors), one thread per stage.

    ``stage_threads``: torch intra-op threads of each stage's thread (default 1 each); ``queue_size``:
    frames waiting between two stages at most (bounds memory and latency). ``parallel=False`` runs the
    same stages one after the other in the caller's thread, the baseline the parallel form is measured
    against.
    """

    def __init__(self, model: MultiExitClassifier, threshold: float, stage_threads: Sequence[int] | None = None,
                 queue_size: int = 4, parallel: bool = True) -> None:
        self.model = model.eval()
        self.threshold = check_threshold(threshold)
        self.stage_threads = list(stage_threads or [1] * model.num_exits)
        if len(self.stage_threads) != model.num_exits or min(self.stage_threads) < 1:
            raise ValueError(f"stage_threads needs {model.num_exits} counts >= 1, got {self.stage_threads}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size, self.parallel = queue_size, parallel

    def _stage(self, k: int, item: tuple) -> tuple[bool, tuple]:
        """Exit ``k`` on one frame: (answered, result or the item for stage k + 1)."""
        index, start, state = item
        with torch.inference_mode():
            logits, state = self.model.step(self.model.start(state) if k == 0 else state, k)
            conf, cls = logits.softmax(-1).max(-1)
        if k == self.model.num_exits - 1 or float(conf[0]) >= self.threshold:
            return True, FrameResult(index, int(cls[0]), float(conf[0]), k, time.perf_counter() - start)
        return False, (index, start, state)

    def predict(self, frames: Iterable[Tensor]) -> Iterator[FrameResult]:
        """The results of ``frames``, in their order, as they become ready."""
        return self._parallel(frames) if self.parallel else self._sequential(frames)

    def _sequential(self, frames: Iterable[Tensor]) -> Iterator[FrameResult]:
        for index, frame in enumerate(frames):
            item = (index, time.perf_counter(), frame.unsqueeze(0))
            for k in range(self.model.num_exits):
                answered, item = self._stage(k, item)
                if answered:
                    yield item
                    break

    def _parallel(self, frames: Iterable[Tensor]) -> Iterator[FrameResult]:
        stages = self.model.num_exits
        links = [queue.Queue(self.queue_size) for _ in range(stages)]  # links[k]: into stage k
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        def put(q: queue.Queue, item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def feed() -> None:
            try:
                for index, frame in enumerate(frames):
                    if not put(links[0], (index, time.perf_counter(), frame.unsqueeze(0))):
                        return
                put(links[0], _DONE)
            except BaseException as err:  # a bad frame source stops the stream like a failing stage
                results.put(_Failure(err))
                stop.set()

        def work(k: int) -> None:
            torch.set_num_threads(self.stage_threads[k])
            try:
                while not stop.is_set():
                    try:
                        item = links[k].get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if item is _DONE:
                        if k + 1 < stages:
                            put(links[k + 1], _DONE)
                        else:
                            results.put(_DONE)
                        return
                    answered, out = self._stage(k, item)
                    if answered:
                        results.put(out)
                    elif not put(links[k + 1], out):
                        return
            except BaseException as err:
                results.put(_Failure(err))
                stop.set()

        threads = [threading.Thread(target=feed, name="stream-feed", daemon=True)]
        threads += [threading.Thread(target=work, args=(k,), name=f"stream-stage{k}", daemon=True)
                    for k in range(stages)]
        caller_threads = torch.get_num_threads()
        for t in threads:
            t.start()
        pending: list[tuple[int, FrameResult]] = []
        next_index = 0
        try:
            while True:
                item = results.get()
                if isinstance(item, _Failure):
                    raise item.error
                if item is _DONE:
                    break
                heapq.heappush(pending, (item.index, item))
                while pending and pending[0][0] == next_index:
                    yield heapq.heappop(pending)[1]
                    next_index += 1
            while pending:  # every frame has answered: the rest in order
                yield heapq.heappop(pending)[1]
        finally:
            stop.set()
            for t in threads:
                t.join()
            torch.set_num_threads(caller_threads)
