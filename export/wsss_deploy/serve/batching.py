"""Dynamic batching: concurrent requests grouped into one onnxruntime call.

Requests wait in a bounded queue. One loop takes the oldest request and every other waiting
request with the same image size and outputs (the exported graph resizes inside, but a batch is
one array, so its images must share a size), until the batch is full or the oldest request has
waited `max_wait_s`; then it runs the batch in a worker thread and answers each request with its
own slice. While a batch runs, new requests queue up, so batches grow with the load.

A request waits for company only if it arrived while others were waiting or running: a lone
client's requests, each sent after the previous answer, find the server idle and run at once
instead of each paying `max_wait_s`.
"""

import asyncio
import collections
import concurrent.futures
import time

import numpy as np


class QueueFull(Exception):
    """The queue holds `max_queue` requests; `retry_after` is a suggested wait in seconds."""

    def __init__(self, retry_after):
        super().__init__(f"the request queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class _Pending:
    __slots__ = ("image", "outputs", "key", "future", "arrived", "busy")

    def __init__(self, image, outputs, future, busy):
        self.image, self.outputs, self.future = image, tuple(outputs), future
        self.key = (image.shape, self.outputs)
        self.arrived = time.monotonic()
        self.busy = busy  # other requests were waiting or running when it arrived


class DynamicBatcher:
    """Groups `submit`ted images into batches for `run_batch(images, outputs) -> {name: array}`.

    Args:
        run_batch: called in a worker thread with a uint8 (B, H, W, 3) array and the output
            names; returns {name: array with B rows}.
        max_batch_size: the most images in one call.
        max_wait_s: how long the oldest waiting request may wait for others to join it (only
            one that arrived while others were waiting or running waits).
        max_queue: the most requests waiting (not yet running); more raise `QueueFull`.
        on_batch: called as on_batch(size, seconds) after each batch (metrics).
        on_queue: called with the number of waiting requests whenever it changes (metrics).

    Example:
    >>> batcher = DynamicBatcher(lambda x, names: {"labels": x[..., 0]}, max_batch_size=8)  # doctest: +SKIP
    >>> await batcher.start(); out = await batcher.submit(image, ["labels"])  # doctest: +SKIP
    """

    def __init__(self, run_batch, max_batch_size=8, max_wait_s=0.005, max_queue=64, on_batch=None, on_queue=None):
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size {max_batch_size} and max_queue {max_queue} must be >= 1 and "
                             f"max_wait_s {max_wait_s} >= 0.")
        self.run_batch = run_batch
        self.max_batch_size, self.max_wait_s, self.max_queue = int(max_batch_size), float(max_wait_s), int(max_queue)
        self.on_batch, self.on_queue = on_batch, on_queue
        self._waiting = collections.deque()
        self._arrived = None
        self._task = None
        # One thread: batches run one after another, each using onnxruntime's own threads.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsss-batch")
        self._recent_batch_s = 0.05
        self._running = 0  # requests in the batch being run

    @property
    def depth(self):
        return len(self._waiting)

    async def start(self):
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="wsss-batcher")

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for pending in self._waiting:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))
        self._waiting.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self):
        return self._task is not None and not self._task.done()

    def retry_after(self):
        """Seconds until the queue should have room: the waiting batches at the recent pace."""
        batches = -(-len(self._waiting) // self.max_batch_size)
        return max(1, int(np.ceil(batches * self._recent_batch_s)))

    async def submit(self, image, outputs):
        """{name: array} for one uint8 (H, W, 3) image; raises QueueFull when the queue is full."""
        if not self.running:
            raise RuntimeError("the batcher is not running")
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(self.retry_after())
        pending = _Pending(image, outputs, asyncio.get_running_loop().create_future(),
                           busy=bool(self._waiting) or self._running > 0)
        self._waiting.append(pending)
        self._queue_changed()
        self._arrived.set()
        return await pending.future

    def _queue_changed(self):
        if self.on_queue is not None:
            self.on_queue(len(self._waiting))

    def _take_batch(self):
        """The oldest request and the waiting ones that can share its call, or None to wait more."""
        head = self._waiting[0]
        mates = [pending for pending in self._waiting if pending.key == head.key][: self.max_batch_size]
        if len(mates) < self.max_batch_size and head.busy and time.monotonic() - head.arrived < self.max_wait_s:
            return None
        taken = set(map(id, mates))
        self._waiting = collections.deque(p for p in self._waiting if id(p) not in taken)
        self._queue_changed()
        return mates

    async def _loop(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = self._take_batch()
            if batch is None:
                self._arrived.clear()
                remaining = self._waiting[0].arrived + self.max_wait_s - time.monotonic()
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(remaining, 0))
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [pending for pending in batch if not pending.future.done()]  # drop cancelled requests
            if batch:
                await self._run(loop, batch)
            del batch  # else the last batch's requests stay referenced while the loop waits

    async def _run(self, loop, batch):
        images = np.stack([pending.image for pending in batch])
        for pending in batch:
            pending.image = None  # the stack is the copy inference needs
        start = time.perf_counter()
        self._running = len(batch)
        try:
            outputs = await loop.run_in_executor(self._executor, self.run_batch, images, batch[0].outputs)
        except Exception as error:  # answered to each request; the loop goes on
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self._running = 0
        seconds = time.perf_counter() - start
        self._recent_batch_s = 0.8 * self._recent_batch_s + 0.2 * seconds
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for index, pending in enumerate(batch):
            if not pending.future.done():
                # A copy, not a view: a view would keep the whole batch's output alive as long as
                # any one of its requests is still being answered.
                pending.future.set_result({name: np.array(value[index]) for name, value in outputs.items()})
