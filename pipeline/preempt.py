"""Stop cleanly on a signal: the handler only sets a flag; the ranks agree at the step boundary.

DeepSpeed's save is collective, so it cannot run inside a signal handler, and Slurm/submitit may signal only some
ranks. Each rank's handler records the signal; at every step boundary the ranks all-reduce it (MAX), so all of
them see the stop in the same step, save together and return. What happens next (requeue or not) is the
launcher's business: the trainer reports which signal stopped it.
"""

from __future__ import annotations

import logging
import signal
import sys

from pipeline.dist import sum_values

log = logging.getLogger(__name__)

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped early on a signal, checkpoint saved, run again to resume


class SignalFlag:
    def __init__(self, names: list[str]):
        self.signals = [getattr(signal, n if n.startswith("SIG") else f"SIG{n}") for n in names]
        self.received: int = 0
        self._old = {}
        for s in self.signals:
            self._old[s] = signal.signal(s, self._handler)

    def _handler(self, signum, frame) -> None:
        if not self.received:
            log.warning("received %s: stopping after the current step with a checkpoint", signal.Signals(signum).name)
        self.received = signum

    def agreed(self, counts: list[float] | None = None) -> tuple[int, list[float]]:
        """(the signal if any rank received one, else 0; ``counts`` summed over ranks): one collective.

        Riding on the same all-reduce lets the loop sum per-step counters (tokens, samples) for free. The numbers
        go to the process group's device and back (pipeline/dist.py): NCCL reduces no host tensor.
        """
        counts = list(counts or [])
        one_hot = [float(self.received == s) for s in self.signals]
        vals = sum_values(counts + one_hot)
        hit = [s for s, n in zip(self.signals, vals[len(counts) :]) if n > 0]
        return (int(hit[0]) if hit else 0), vals[: len(counts)]

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def hand_over(signum: int) -> None:
    """After a clean stop on ``signum`` (checkpoint saved), let whoever handled that signal before us act on it.

    Under submitit, that handler requeues the job on rank 0 (USR2); elsewhere there is none, and the process exits
    with EXIT_RESUMABLE so a script can requeue or rerun.
    """
    previous = signal.getsignal(signum)
    if callable(previous):
        log.info("handing %s over to its previous handler", signal.Signals(signum).name)
        previous(signum, None)
        return
    sys.exit(EXIT_RESUMABLE)
