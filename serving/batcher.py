"""Dynamic batching: requests that arrive close together share one model call, run by one inference thread.

A request is a uint8 NCHW tensor of one or more images. The thread waits for the first request, then up to
``max_wait_ms`` (counted from that request's arrival) for more, and runs up to ``max_batch_size`` images as one
call; a request with more images than that is split over consecutive calls and answered when its last image is
done. Once a call is running, the requests that arrive meanwhile wait for it, so under load the next batch is
usually full without any wait. At most ``max_queue`` requests wait; one more is refused (``QueueFull``, HTTP 503)
instead of waiting ever longer. ``close()`` refuses new requests and returns once every queued one is answered.

The model runs only in this thread, so torch's (or ONNX Runtime's) intra-op threads serve one call at a time, and
the event loop that parses HTTP never waits for it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from serving.metrics import ServerMetrics
from utils.logger import get_logger

# TorchScript's profiling executor re-optimises its graph for each new input shape over a few calls (tens of ms
# each, seen up to 170 ms for a tiny CNN), so every batch size dynamic batching can produce is warmed up: all of
# them up to 32, then the largest.
WARMUP_CALLS = 3
WARMUP_ALL_SIZES_UP_TO = 32


class QueueFull(RuntimeError):
    """``max_queue`` requests are already waiting."""


class ShuttingDown(RuntimeError):
    """The batcher is draining and takes no new requests."""


@dataclass
class _Request:
    images: torch.Tensor  # uint8 NCHW
    future: Future
    arrived: float  # time.monotonic()
    taken: int = 0  # images handed to model calls so far
    outputs: list[torch.Tensor] = field(default_factory=list)


class Batcher:
    """Collects requests into batches and runs ``run(uint8 NCHW batch) -> probabilities`` in its own thread."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], *, input_shape: tuple[int, int, int],
                 max_batch_size: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 metrics: ServerMetrics | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch_size >= 1, max_queue >= 1 and max_wait_ms >= 0; got {max_batch_size}, "
                             f"{max_queue} and {max_wait_ms}")
        self.run = run
        self.input_shape = tuple(input_shape)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.ready = threading.Event()  # set after the warm-up calls
        self._queue: deque[_Request] = deque()
        self._waiting_images = 0  # images in the queue not yet handed to a model call
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)

    # --- the request side (the event loop's thread) ------------------------------------------------------------

    def start(self) -> None:
        """Start the inference thread; it warms the model up, sets ``ready`` and then takes requests."""
        self._thread.start()

    def submit(self, images: torch.Tensor) -> Future:
        """Queue ``images`` (uint8 NCHW); the future's result is their (N, C) probabilities."""
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"expected a uint8 batch of shape (N, {', '.join(map(str, self.input_shape))}), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("expected at least one image, got an empty batch")
        request = _Request(images, Future(), time.monotonic())
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting (--max_queue {self.max_queue})")
            self._queue.append(request)
            self._waiting_images += len(images)
            self._depth_changed()
            self._cond.notify()
        return request.future

    @property
    def depth(self) -> int:
        """Requests waiting for the model (the one running excluded)."""
        return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer every queued one, and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the inference thread ----------------------------------------------------------------------------------

    def _serve(self) -> None:
        with torch.inference_mode():  # grad mode is per thread: this one never records autograd history
            try:
                self._warm_up()
            except Exception as exc:  # noqa: BLE001  a model that cannot run stays not ready; requests get its error
                get_logger().error("the model failed on a warm-up batch of zeros (%s: %s); the server stays not "
                                   "ready", type(exc).__name__, exc)
            else:
                self.ready.set()
                if self.metrics:
                    self.metrics.ready.set(1)
            while (parts := self._next_batch()) is not None:
                self._run_batch(parts)
        if self.metrics:
            self.metrics.ready.set(0)

    def _warm_up(self) -> None:
        """A few calls at each batch size before the server reports ready: the first calls of a TorchScript or
        ONNX Runtime model at a shape allocate, choose kernels and optimise the graph."""
        sizes = set(range(1, min(self.max_batch_size, WARMUP_ALL_SIZES_UP_TO) + 1)) | {self.max_batch_size}
        for size in sorted(sizes):
            batch = torch.zeros((size, *self.input_shape), dtype=torch.uint8)
            for _ in range(WARMUP_CALLS):
                self.run(batch)

    def _next_batch(self) -> list[tuple[_Request, int, int]] | None:
        """Wait for requests and take up to ``max_batch_size`` images: (request, first, end) slices, in order of
        arrival. None once closing and nothing is left."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while self._waiting_images < self.max_batch_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            parts, room = [], self.max_batch_size
            while self._queue and room:
                request = self._queue[0]
                if request.future.cancelled():  # its client went away; nobody reads the answer
                    self._drop_head(len(request.images) - request.taken)
                    continue
                count = min(room, len(request.images) - request.taken)
                parts.append((request, request.taken, request.taken + count))
                request.taken += count
                room -= count
                self._waiting_images -= count
                if request.taken == len(request.images):
                    self._queue.popleft()
            self._depth_changed()
            return parts

    def _drop_head(self, untaken: int) -> None:
        self._queue.popleft()
        self._waiting_images -= untaken

    def _run_batch(self, parts: list[tuple[_Request, int, int]]) -> None:
        slices = [request.images[first:end] for request, first, end in parts]
        batch = slices[0] if len(slices) == 1 else torch.cat(slices)
        started = time.perf_counter()
        try:
            probs = self.run(batch)
        except Exception as exc:  # noqa: BLE001  the requests of this batch get the error; the server goes on
            for request, _, _ in parts:
                _settle(request.future, exception=exc)
            return
        if self.metrics:
            self.metrics.observe_batch(len(batch), time.perf_counter() - started)
        offset = 0
        for request, first, end in parts:
            request.outputs.append(probs[offset:offset + end - first])
            offset += end - first
            if end == len(request.images):
                outputs = request.outputs
                _settle(request.future, result=outputs[0] if len(outputs) == 1 else torch.cat(outputs))

    def _depth_changed(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(len(self._queue))


def _settle(future: Future, *, result: object = None, exception: BaseException | None = None) -> None:
    """Answer a request unless it was cancelled (its client went away) or already failed in an earlier call."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
