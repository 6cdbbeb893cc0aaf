"""Dynamic batching: the texts of concurrent requests share model calls.

Requests put their texts in one queue; a single loop takes up to ``max_batch`` of them per call. When fewer are
waiting, it waits until the oldest has waited ``max_wait_s`` or the batch fills, whichever comes first; texts that
arrive while the model runs are batched on its next call. The model runs in one worker thread (onnxruntime and the
tokenizer release the GIL), so the event loop keeps accepting and answering requests meanwhile. A failing call fails
the requests of that batch only; the loop goes on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pipeline.deploy.serve_metrics import ServeMetrics


class Batcher:
    def __init__(
        self, predict: Callable[[list[str]], list[dict]], max_batch: int, max_wait_s: float, metrics: ServeMetrics
    ):
        self.predict, self.max_batch, self.max_wait_s, self.metrics = predict, max_batch, max_wait_s, metrics
        self.items: collections.deque = collections.deque()  # (text, future, arrival time)
        self.wake = asyncio.Event()
        self.stopping = False
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="model")
        metrics.queue = lambda: len(self.items)

    async def submit(self, texts: list[str]) -> list[dict]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in texts]
        now = time.monotonic()
        self.items.extend((t, f, now) for t, f in zip(texts, futures))
        self.wake.set()
        return list(await asyncio.gather(*futures))

    async def run(self) -> None:
        """The loop; returns once ``stop`` was called and every queued text is answered."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.items:
                if self.stopping:
                    return
                self.wake.clear()
                await self.wake.wait()
            # Fewer than a full batch: wait for more until the oldest text has waited max_wait_s.
            while len(self.items) < self.max_batch and not self.stopping:
                left = self.items[0][2] + self.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), left)
                except TimeoutError:
                    break
            batch = [self.items.popleft() for _ in range(min(self.max_batch, len(self.items)))]
            batch = [b for b in batch if not b[1].done()]  # a request that was cancelled meanwhile
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self.predict, [t for t, _, _ in batch])
            except Exception as e:  # noqa: BLE001 - the requests of this batch get the error; the server goes on
                for _, f, _ in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.metrics.batches.observe(len(batch))
            self.metrics.texts += len(batch)
            for (_, f, _), r in zip(batch, results):
                self.metrics.truncated += bool(r.get("truncated"))
                if not f.done():
                    f.set_result(r)

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
