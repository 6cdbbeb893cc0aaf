"""The server's counters and histograms, written in Prometheus' text format (version 0.0.4) for ``GET /metrics``.

A few dozen lines instead of prometheus_client: every update happens on the event loop's thread, so plain integers
do, and the server keeps one dependency fewer.
"""

from __future__ import annotations

from collections import Counter

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        return [
            *out,
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {self.count}",
        ]


class ServeMetrics:
    def __init__(self):
        self.requests: Counter = Counter()  # by HTTP status of /v1/predict
        self.errors: Counter = Counter()  # by reason
        self.texts = 0
        self.truncated = 0
        self.batches = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.queue = lambda: 0
        self.inflight = 0

    def answered(self, status: int, seconds: float, reason: str | None = None) -> None:
        self.requests[status] += 1
        self.latency.observe(seconds)
        if reason:
            self.errors[reason] += 1

    def render(self) -> str:
        p = "bertrun_serve"
        lines = [
            f"# HELP {p}_requests_total POST /v1/predict requests answered, by HTTP status.",
            f"# TYPE {p}_requests_total counter",
        ]
        lines += [f'{p}_requests_total{{code="{c}"}} {n}' for c, n in sorted(self.requests.items())]
        lines += [
            f"# HELP {p}_errors_total Requests answered with an error, by reason.",
            f"# TYPE {p}_errors_total counter",
        ]
        lines += [f'{p}_errors_total{{reason="{r}"}} {n}' for r, n in sorted(self.errors.items())]
        for name, value, kind, text in (
            ("texts_total", self.texts, "counter", "Texts predicted."),
            ("truncated_texts_total", self.truncated, "counter", "Texts cut to the model's max_seq_len."),
            ("queue_texts", self.queue(), "gauge", "Texts waiting for a batch."),
            ("inflight_requests", self.inflight, "gauge", "Requests being answered."),
        ):
            lines += [f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} {kind}", f"{p}_{name} {value}"]
        lines += [f"# HELP {p}_batch_size Texts per model call.", f"# TYPE {p}_batch_size histogram"]
        lines += self.batches.lines(f"{p}_batch_size")
        lines += [
            f"# HELP {p}_request_seconds Time to answer POST /v1/predict.",
            f"# TYPE {p}_request_seconds histogram",
        ]
        lines += self.latency.lines(f"{p}_request_seconds")
        return "\n".join(lines) + "\n"
