"""Spawners start, watch and stop job units; ``judge`` says what a unit's end means for the job.

Both spawners describe a unit in systemd's words (UnitStatus): ``result`` is systemd's ``Result=``
(success, exit-code, signal, core-dump, timeout, oom-kill, watchdog, resources, ...) and
``main_code``/``main_status`` are ``ExecMainCode``/``ExecMainStatus`` (exited + exit status, or
killed/dumped + signal number).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from solstice.dispatch.contract import EXIT_RESULT, EXIT_UNDELIVERED, EXIT_USAGE
from solstice.images import MachinePlan
from solstice.model import JobRequest, Result

RUNNING = "running"
ENDED = "ended"
GONE = "gone"  # no unit and no record of how it ended

#: systemd ExecMainCode numbers (CLD_*).
MAIN_CODES = {"1": "exited", "2": "killed", "3": "dumped"}


@dataclass(frozen=True)
class UnitStatus:
    job_id: str
    state: str  # RUNNING, ENDED or GONE
    result: str = ""  # systemd's Result=
    main_code: str = ""  # exited | killed | dumped | "" (never ran)
    main_status: int | None = None  # exit status, or signal number
    detail: str = ""  # e.g. the unit's ActiveState/SubState, for logs


def parse_exit_record(job_id: str, text: str) -> UnitStatus | None:
    """``<SERVICE_RESULT> <EXIT_CODE> <EXIT_STATUS>`` (the process supervisor's), or the same as
    ``NAME=value`` lines (a job unit's ExecStopPost= writes its environment's), as an ENDED
    status; None when it is neither."""
    if "SERVICE_RESULT=" in text:
        env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        text = " ".join(env.get(k, "") for k in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS"))
    words = text.split()
    if not words:
        return None
    result = words[0]
    code = words[1] if len(words) > 1 else ""
    raw = words[2] if len(words) > 2 else ""
    status: int | None = None
    if raw.lstrip("-").isdigit():
        status = int(raw)
    elif raw:
        try:
            status = int(signal.Signals["SIG" + raw.upper().removeprefix("SIG")])
        except (KeyError, ValueError):
            status = None
    return UnitStatus(job_id, ENDED, result=result, main_code=code, main_status=status, detail="exit record")


class Spawner(Protocol):
    """Starts and follows one unit per job. Every method may raise solstice.errors.CommandError
    (systemctl failed) or OSError; the dispatcher logs it and tries again on its next round."""

    name: str

    def unit_name(self, job_id: str) -> str: ...

    def start(
        self,
        request: JobRequest,
        request_file: Path,
        runtime_max: float,
        plan: MachinePlan,
        warm_vm: str = "",
    ) -> None:
        """Start the job's unit; return once it exists (not waiting for the job). ``plan`` is the
        VM's size, for the unit's limits (the job process plans the same from the same inputs);
        ``warm_vm`` a warm pool VM the job takes. Raises when it could not be started (e.g. a
        unit of that name exists already)."""
        ...

    def status(self, job_ids: Sequence[str]) -> dict[str, UnitStatus]:
        """The status of each job's unit (GONE for a unit that is not there)."""
        ...

    def stop(self, job_id: str) -> None:
        """Ask the unit to stop (SIGTERM, then SIGKILL after the stop timeout); do not wait."""
        ...

    def list_units(self) -> list[str]:
        """The job ids that have a unit here, running or ended and not released."""
        ...

    def release(self, job_id: str) -> None:
        """Forget an ended unit (systemctl reset-failed; the process spawner's records)."""
        ...

    # --- warm pool keepers (solstice.images.warm): one unit or process per warm VM ---

    def start_keeper(self, vm_id: str, label: str, plan: MachinePlan) -> None:
        """Start the keeper of a new warm VM of ``label``, with ``plan``'s limits."""
        ...

    def keepers(self) -> list[str]:
        """The warm VM ids whose keeper runs here."""
        ...

    def stop_keeper(self, vm_id: str) -> None:
        """Ask a keeper to end (its VM with it); do not wait."""
        ...

    def release_keeper(self, vm_id: str) -> None:
        """Forget an ended keeper (systemctl reset-failed; its pid file)."""
        ...

    def attach(self, job_id: str, pids: Sequence[int]) -> None:
        """Move processes (a taken warm VM's QEMU) into the job's unit, under its limits and its
        cleanup; a no-op where there are no units."""
        ...


@dataclass(frozen=True)
class Verdict:
    """How a job ended, as the dispatcher records and reports it."""

    result: Result
    #: True: the job process reported this result in its own final event (no synthetic event).
    reported: bool
    #: Why (the database's error column and the synthetic event's message); "" for a success.
    message: str
    exit_code: int | None = None


def _signal_name(number: int | None) -> str:
    if number is None:
        return "an unknown signal"
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_RESULT_TEXT = {
    "timeout": "timeout",
    "oom-kill": "oom-kill (the out-of-memory killer ended it: MemoryMax exceeded)",
    "watchdog": "watchdog (the job process stopped sending WATCHDOG=1)",
    "resources": "resources (systemd could not set up the unit: credential, directories, user)",
    "start-limit-hit": "start-limit-hit",
    "protocol": "protocol (the job process broke the sd_notify protocol)",
    "core-dump": "core-dump",
    "signal": "signal",
    "exit-code": "exit-code",
}


def judge(
    status: UnitStatus,
    *,
    cancel_requested: bool,
    ran_for: float | None = None,
    runtime_max: float | None = None,
    adopted: bool = False,
) -> Verdict:
    """What the end of a job's unit means. The job reported its own end when its main process
    exited 0/1/3/4 on its own or because we stopped it; every other end is the unit's (systemd's)
    doing, reported by the dispatcher as error, or cancelled when we were cancelling it."""
    unit_failed = Result.CANCELLED if cancel_requested else Result.ERROR
    if status.state == GONE:
        why = (
            "the dispatcher restarted and the job's unit was gone"
            if adopted
            else "the job's unit is gone and left no record of how it ended"
        )
        return Verdict(unit_failed, False, why)
    code, number = status.main_code, status.main_status
    if status.result in ("success", "exit-code") and code == "exited" and number in EXIT_RESULT:
        result = EXIT_RESULT[number]
        if result is Result.CANCELLED and not cancel_requested:
            # SIGTERM that did not come from a cancellation: `systemctl stop/kill` by someone.
            return Verdict(
                Result.ERROR,
                False,
                f"the job's unit ended: {status.result} (the job process was stopped with SIGTERM, "
                "not by a cancellation: systemctl stop/kill?)",
                number,
            )
        if result is Result.SUCCESS:
            return Verdict(result, True, "", number)
        return Verdict(result, True, f"the job reported {result.value} (exit status {number})", number)
    if status.result in ("success", "exit-code") and code == "exited":
        what = {
            EXIT_USAGE: " (usage or configuration error before the job started)",
            EXIT_UNDELIVERED: " (its events could not be delivered to RabbitMQ)",
        }.get(number or 0, "")
        return Verdict(
            unit_failed,
            False,
            f"the job's unit ended: {status.result} (the job process exited with status {number}{what})",
            number,
        )
    text = _RESULT_TEXT.get(status.result, status.result or "unknown")
    if status.result == "timeout":
        if cancel_requested:
            text = "timeout (the job did not stop within TimeoutStopSec and was killed)"
        elif runtime_max is not None and ran_for is not None and ran_for >= runtime_max - 5:
            text = f"timeout (RuntimeMaxSec={runtime_max:.0f} exceeded)"
        elif ran_for is None:
            text = "timeout (RuntimeMaxSec exceeded, or the unit did not start or stop in time)"
        else:
            text = "timeout (the unit did not start or stop in time)"
    if code in ("killed", "dumped"):
        text += f", main process {code} by {_signal_name(number)}"
    elif code == "exited" and number is not None:
        text += f", main process exited with status {number}"
    return Verdict(unit_failed, False, f"the job's unit ended: {text}")
