"""A short, seeded subset of the fault matrix (scripts/chaos runs the whole; docs/reliability.md):
stand-in jobs through the fake Forgejo, the runner, a private RabbitMQ (127.0.0.1:5679), the
dispatcher and a private PostgreSQL (127.0.0.1:5439), while each process fault is injected once:
the runner, the dispatcher and a job process SIGKILLed, the private broker and database restarted,
the state directory (a 4 MB tmpfs) full. Every job must end reported exactly once, none stuck or
run twice, and nothing left behind.

Needs root (the tmpfs, PostgreSQL as user postgres) and rabbitmq-server and postgresql installed;
the shared services on 5672/5432 are not touched.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.chaos import PROCESS_FAULTS, Chaos, Row, process_loop, services, table

JOBS = 14
SEED = 12  # deterministic fault order and timings


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Row, Chaos]]:
    base = tmp_path_factory.mktemp("chaos")
    rng = random.Random(SEED)
    with services(base) as (rabbit, pg):
        chaos = Chaos(base, rabbit=rabbit, postgres=pg, rng=rng).start(capacity=3)
        try:
            process_loop(chaos, jobs=JOBS, faults=list(PROCESS_FAULTS), gap=(0.5, 1.0))
            chaos.wait_all(timeout=150)
            row = chaos.count("subset")
            print(table([row], chaos.injected), dict(chaos.findings()))
            yield row, chaos
        finally:
            chaos.close()


def test_every_fault_was_injected(outcome: tuple[Row, Chaos]) -> None:
    _, chaos = outcome
    assert {f: chaos.injected[f] for f in PROCESS_FAULTS} == dict.fromkeys(PROCESS_FAULTS, 1), chaos.injected


def test_every_job_reported_exactly_once(outcome: tuple[Row, Chaos]) -> None:
    row, chaos = outcome
    assert row.submitted == JOBS
    assert row.stuck == 0, table([row], chaos.injected)
    assert row.reported_twice == 0 and row.ran_twice == 0, table([row], chaos.injected)
    assert row.reported_once == JOBS, table([row], chaos.injected)


def test_nothing_left_behind(outcome: tuple[Row, Chaos]) -> None:
    row, chaos = outcome
    assert (row.qemu, row.overlays, row.ports, row.units) == (0, 0, 0, 0), table([row], chaos.injected)
    assert not list(Path(chaos.runtime).glob("jobs/*")), "job directories left"
