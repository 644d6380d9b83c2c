"""The end-to-end benchmark's arithmetic (tests/benchmark.py): percentiles, phases from recorded
timestamps, the guest clock estimate, the QEMU collision check and the overhead growth."""

from __future__ import annotations

import pytest

from tests.benchmark import (
    JobTimes,
    QemuSample,
    clock_offset,
    collisions,
    growth,
    p50_p95,
    parse_qemu,
    pct,
    phases,
    summarize,
)


def times(base: float = 1000.0, **over: float) -> JobTimes:
    fields = dict(
        handed_over=base,
        accepted=base + 0.02,
        boot=base + 0.5,
        ready=base + 30.5,
        teardown=base + 33.0,
        done=base + 33.05,
        step_seconds=2.0,
        first_output=base + 31.2,
        finished=base + 34.0,
    )
    fields.update(over)
    return JobTimes(**fields, line_delays=(0.4, 0.9))  # type: ignore[arg-type]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert pct(values, 0) == 1.0
    assert pct(values, 100) == 20.0
    assert pct(values, 95) == 19.0  # rank round(0.95 * 19) = 18 -> the 19th value
    assert p50_p95(values) == (10.5, 19.0)
    assert pct([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        pct([], 50)


def test_phases_of_one_job() -> None:
    p = phases(times())
    assert p["queue"] == pytest.approx(0.02)
    assert p["take_or_boot"] == pytest.approx(30.0)
    assert p["first_output"] == pytest.approx(31.2)
    assert p["teardown"] == pytest.approx(0.05)
    assert p["total"] == pytest.approx(34.0)
    assert p["host_overhead"] == pytest.approx(34.0 - 30.0 - 2.0)


def test_summary_pools_log_lines_over_jobs_and_keeps_the_phase_order() -> None:
    jobs = [times(), times(base=2000.0, ready=2040.5)]
    s = summarize(jobs)
    assert list(s) == [
        "queue",
        "take_or_boot",
        "first_output",
        "log_latency",
        "teardown",
        "total",
        "host_overhead",
    ]
    assert s["take_or_boot"] == (pytest.approx(35.0), pytest.approx(40.0))
    assert s["log_latency"] == (pytest.approx(0.65), pytest.approx(0.9))  # four lines, two jobs


def test_clock_offset_takes_the_least_delayed_line() -> None:
    # guest 2.5 s behind the host; transits of 0.1, 0.3 and 0.05 s
    pairs = [(100.0, 102.6), (101.0, 103.8), (102.0, 104.55)]
    assert clock_offset(pairs) == pytest.approx(2.55)


def test_qemu_command_lines_are_parsed() -> None:
    argv = [
        "qemu-system-x86_64",
        "-name",
        "solstice-abc",
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:40123-:22",
    ]
    assert parse_qemu(argv) == ("solstice-abc", 40123)
    assert parse_qemu(["qemu-system-x86_64", "-name", "x"]) is None
    assert parse_qemu(["qemu-img", "create"]) is None


def test_collisions_are_found_and_a_reused_port_later_is_not_one() -> None:
    clean = [
        QemuSample(0, 11, "solstice-a", 40001),
        QemuSample(0, 12, "solstice-b", 40002),
        QemuSample(1, 11, "solstice-a", 40001),
        QemuSample(5, 13, "solstice-c", 40001),  # a's port, after a exited: fine
    ]
    assert collisions(clean) == []
    port = [*clean, QemuSample(5, 14, "solstice-d", 40001)]
    assert collisions(port) == ["port 40001: pids 13 and 14 (sample 5)"]
    name = [*clean, QemuSample(7, 15, "solstice-a", 40009)]
    assert collisions(name) == ["name solstice-a: pids [11, 15]"]


def test_growth_is_relative_to_the_lowest_level() -> None:
    assert growth({4: 0.3, 1: 0.2, 8: 0.5}) == {1: 1.0, 4: pytest.approx(1.5), 8: pytest.approx(2.5)}
