"""The job's event buffer (queue.BatchingEventSink) is bounded in bytes, not only in events: with
RabbitMQ away, a step printing long lines makes ``emit`` wait once ``max_buffered_bytes`` are
buffered, instead of holding 50,000 lines of 64 KiB (3 GiB)."""

from __future__ import annotations

import threading
import time

import pytest

from solstice.config import BrokerConfig
from solstice.model import EventKind, JobEvent, Stream
from solstice.queue.batch import approximate_size
from solstice.queue.eventsink import BatchingEventSink, EventDeliveryError

LINE = "x" * 65536


def test_emit_waits_once_the_buffered_bytes_reach_the_bound() -> None:
    broker_back = threading.Event()

    def unreachable() -> object:
        broker_back.wait()  # the broker never answers during the test
        raise ConnectionError("gone")

    bound = 4 * 1024 * 1024
    sink = BatchingEventSink(
        BrokerConfig(),
        "solstice.events.test",
        max_buffered_bytes=bound,
        connection=unreachable,  # type: ignore[arg-type]
    )
    emitted = [0]

    def flood() -> None:
        for seq in range(1, 1001):  # 64 MiB in all
            sink.emit(JobEvent("j", seq, 0.0, EventKind.LOG, step=1, stream=Stream.STDOUT, text=LINE))
            emitted[0] = seq

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    last = -1
    while emitted[0] != last:  # until emit stops taking more
        last = emitted[0]
        time.sleep(0.5)
    assert t.is_alive() and emitted[0] < 1000
    # Buffered: at most the bound plus one line; in flight: one message's worth (max_bytes).
    per_event = approximate_size(JobEvent("j", 1, 0.0, EventKind.LOG, text=LINE))
    assert emitted[0] * per_event <= bound + per_event + sink.max_bytes + per_event
    sink.stop_waiting()
    t.join(10)
    broker_back.set()
    with pytest.raises(EventDeliveryError):
        sink.close(timeout=0.2)


def test_the_forgejo_reporter_counts_the_bytes_it_holds() -> None:
    """What the poller checks against MAX_BUFFERED_BYTES before it acknowledges more events."""
    from solstice.forges.core.poller import MAX_BUFFERED_BYTES, MAX_BUFFERED_ROWS
    from solstice.forges.forgejo.reporter import Reporter

    rep = Reporter(7, 1)
    rep.feed(JobEvent("j", 1, 1.0, EventKind.JOB_STARTED, text="flood"))
    rep.feed(JobEvent("j", 2, 1.0, EventKind.STEP_STARTED, step=1, text="flood"))
    lines = MAX_BUFFERED_BYTES // len(LINE) + 1
    for seq in range(3, 3 + lines):
        rep.feed(JobEvent("j", seq, 1.0, EventKind.LOG, step=1, stream=Stream.STDOUT, text=LINE))
    # Far under the row bound, over the byte bound: the poller stops acknowledging.
    assert rep.buffered_rows < MAX_BUFFERED_ROWS
    assert rep.buffered_bytes > MAX_BUFFERED_BYTES


def test_a_github_log_is_cut_to_the_blob_limit_at_a_line_end() -> None:
    from solstice.forges.github.client import fit_log

    body = b"".join(f"line {i}\n".encode() for i in range(100_000))
    assert fit_log(body, None) == body and fit_log(body, len(body)) == body
    cut = fit_log(body, 4096)
    assert len(cut) <= 4096 and cut.endswith(b"(the results service's size limit)\n")
    kept = cut.splitlines()[:-1]
    assert kept == body.splitlines()[: len(kept)] and len(kept) > 100


def test_every_line_is_cut_at_the_limit_also_when_its_newline_came_in_the_same_chunk() -> None:
    from solstice.job.events import LineSplitter

    s = LineSplitter(limit=8)
    assert s.feed(b"0123456789ab\nshort\n" + b"x" * 20) == [
        "01234567",
        "89ab",
        "short",
        "xxxxxxxx",
        "xxxxxxxx",
    ]
    assert s.flush() == ["xxxx"]
