"""Per-job event sequence numbers: drop duplicates, report gaps.

Events of one job carry ``seq`` 1, 2, 3... (gap-free at the source). The queue delivers them in
order but at least once: a publish retried after a reconnect, or a delivery whose ack was lost,
arrives again. A consumer passes each event through :meth:`EventSequencer.observe` and forwards it
only when ``deliver`` is true; ``missing`` names the seqs that never arrived before this one.

A **synthetic** final event carries ``seq`` = :data:`SYNTHETIC_SEQ` (2**31 - 1): the dispatcher
publishes it when a job's process ended without reporting its own end (killed, timed out, crashed;
docs/dispatcher.md). It comes after whatever the job sent, so it is delivered after a gap that is
expected, not reported; once it was seen, anything later of that job is a duplicate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from solstice.model import JobEvent

#: The seq of the dispatcher's synthetic JOB_FINISHED event: above any seq a job process reaches.
SYNTHETIC_SEQ = 2**31 - 1


def is_synthetic(event: JobEvent) -> bool:
    return event.seq == SYNTHETIC_SEQ


@dataclass(frozen=True)
class SeqCheck:
    deliver: bool  # False: seq <= the last one seen for this job (a duplicate); drop it
    missing: range = range(0)  # seqs skipped right before this event (empty: no gap)

    @property
    def gap(self) -> bool:
        return len(self.missing) > 0


class EventSequencer:
    """Remembers the last ``seq`` of up to ``max_jobs`` jobs (least recently seen forgotten)."""

    def __init__(self, max_jobs: int = 10_000) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.max_jobs = max_jobs
        self._last: OrderedDict[str, int] = OrderedDict()

    def observe(self, event: JobEvent) -> SeqCheck:
        last = self._last.get(event.job_id, 0)
        if event.seq <= last:
            return SeqCheck(deliver=False)
        self._last[event.job_id] = event.seq
        self._last.move_to_end(event.job_id)
        while len(self._last) > self.max_jobs:
            self._last.popitem(last=False)
        if event.seq == SYNTHETIC_SEQ:
            return SeqCheck(deliver=True)  # its gap is expected
        return SeqCheck(deliver=True, missing=range(last + 1, event.seq))

    def last_seen(self, job_id: str) -> int:
        """The highest seq delivered for ``job_id`` (0: none)."""
        return self._last.get(job_id, 0)

    def forget(self, job_id: str) -> None:
        """Drop a finished job's state (a late duplicate of it would then look new)."""
        self._last.pop(job_id, None)
