"""The one jobevent.v1 codec (queue.codec) agrees with the model's generic to_dict/from_dict, for
single events and batches alike, and rejects bad input with the field's name."""

from __future__ import annotations

import json

import pytest

from solstice.model import EventKind, JobEvent, Outcome, Result, Stream, from_dict, to_dict
from solstice.queue.batch import decode_events, encode_batch
from solstice.queue.codec import decode_event, encode_event
from solstice.queue.errors import InvalidMessage

JOB = "2f0c3c0e-8f57-4c4e-9d7e-3b1d3c0b6a11"

EVENTS = [
    JobEvent(job_id=JOB, seq=1, time=1.5, kind=EventKind.JOB_STARTED, text="build"),
    JobEvent(job_id=JOB, seq=2, time=2.0, kind=EventKind.LOG, step=1, stream=Stream.STDERR, text="ü ✓"),
    JobEvent(
        job_id=JOB,
        seq=3,
        time=3.0,
        kind=EventKind.STEP_FINISHED,
        step=1,
        outcome=Outcome.FAILURE,
        conclusion=Outcome.SUCCESS,
        exit_code=2,
        message="the step's process exited with code 2",
        outputs={"a": "1"},
    ),
    JobEvent(job_id=JOB, seq=4, time=4, kind=EventKind.JOB_FINISHED, result=Result.ERROR, message="x"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind.value)
def test_single_event_agrees_with_the_generic_codec(event: JobEvent) -> None:
    assert from_dict(JobEvent, json.loads(encode_event(event))) == event
    assert decode_event(json.dumps(to_dict(event)).encode()) == event
    assert decode_events(encode_event(event)) == (event,)


def test_batch_round_trip() -> None:
    assert decode_events(encode_batch(EVENTS)) == tuple(EVENTS)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"seq": "1"}, "JobEvent.seq"),
        ({"kind": "nope"}, "JobEvent.kind"),
        ({"outputs": {"a": 1}}, "JobEvent.outputs"),
        ({"extra": 1}, "unknown field"),
        ({"schema_version": "jobevent.v9"}, "unknown schema_version"),
    ],
)
def test_bad_events_name_the_field(change: dict[str, object], expected: str) -> None:
    doc = {**to_dict(EVENTS[1]), **change}
    with pytest.raises(InvalidMessage, match=expected):
        decode_event(json.dumps(doc).encode())
    with pytest.raises(InvalidMessage, match=expected):
        decode_events(json.dumps(doc).encode())
