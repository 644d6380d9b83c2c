"""A stand-in for ``solstice job run UUID`` that boots no VM, for the dispatcher's tests.

It honours the job process's contract (solstice.dispatch.contract): reads the request the same
way (solstice.job.service.read_request), sends its events through the same sink (ServiceSink: batched
to RabbitMQ at reply_to, human lines on stdout), treats SIGTERM as cancellation, and exits 0/1/3/4
after its final event. What it does comes from the job's env ``FAKE``:

    ok | fail | error          one log line, then that result
    boot:S                     the VM phase events a real job sends (prepare, boot, and ready
                               S s later: the runner's boot and take metrics), then success
    sleep:S                    a log line every 0.1 s for S seconds, then success
    lines:N                    N log lines as fast as it can, then success
    flood:MB:LEN               MB megabytes of LEN-character lines as fast as it can, then success
    exit:N                     a log line, then exit N without a final event
    signal:NAME                a log line, then kill itself with SIGNAME (no final event)
    stubborn:S                 like sleep:S, but ignores SIGTERM
    leak                       every secret's value in a line, the job's own masking off (a
                               job-side masking bug: the runner must still mask), then success
    outputs                    one log line, then success with the job's `outputs:` as written
                               (literal values: no steps ran to evaluate them)
    steps[:S]                  each step of the request: started, a line naming it (and every S s
                               a tick while it "runs"), finished success
    access                     a line with the request's debug_access (user, key count, each
                               public key, problem), then failure

Every start appends ``<pid> <FAKE_HOST>`` to ``$FAKE_RUNS_DIR/<uuid>`` (when set), so tests can
count how often a job really ran.

    python tests/service/helpers/fake_job.py [--config FILE] UUID [--request FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from solstice.dispatch.contract import EXIT_USAGE, RESULT_EXIT  # noqa: E402
from solstice.job.events import Emitter  # noqa: E402
from solstice.job.mask import Masker  # noqa: E402
from solstice.job.service import UsageError, load_config, read_request  # noqa: E402
from solstice.job.sink import ServiceSink  # noqa: E402
from solstice.model import Outcome, Phase, Result  # noqa: E402
from solstice.queue import BatchingEventSink, decode_request  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("job_id")
    parser.add_argument("--request")
    args = parser.parse_args()
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    try:
        cfg = load_config(args.config or os.environ.get("SOLSTICE_CONFIG"))
        request = read_request(args.job_id, args.request, cfg, decode_request)
    except UsageError as exc:
        print(f"fake job: {exc}", file=sys.stderr)
        return EXIT_USAGE
    runs = os.environ.get("FAKE_RUNS_DIR")
    if runs:
        with open(Path(runs) / request.job_id, "a") as fh:
            fh.write(f"{os.getpid()} {os.environ.get('FAKE_HOST', '')}\n")
    mode, _, arg = str(request.job.env.get("FAKE", "ok")).partition(":")
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sink = ServiceSink(request, BatchingEventSink.for_request(cfg.broker, request))
    masked = [] if mode == "leak" else list(request.secrets.values())
    emit = Emitter(request.job_id, sink, Masker(masked))
    emit.job_started(request.job.name)
    emit.log(f"fake job {mode} {arg}".strip(), step=None)
    result = Result.SUCCESS
    message = ""
    if mode == "boot":
        emit.phase(Phase.PREPARE)
        time.sleep(0.1)
        emit.phase(Phase.BOOT)
        time.sleep(float(arg or 0.2))
        emit.phase(Phase.READY)
    if mode in ("sleep", "stubborn"):
        deadline = time.monotonic() + float(arg or 1)
        n = 0
        while time.monotonic() < deadline:
            if cancel.is_set():
                result, message = Result.CANCELLED, "the job was cancelled"
                break
            n += 1
            emit.log(f"tick {n}", step=None)
            time.sleep(0.1)
    elif mode == "leak":
        from solstice.secrets import key_path, load_key, unseal

        plain = unseal(request, load_key(key_path(cfg.secrets.key_file)))  # as `job run` does
        for name, value in sorted(plain.secrets.items()):
            emit.log(f"secret {name} is {value}", step=None)
    elif mode == "steps":
        for step in request.job.steps:
            if cancel.is_set():
                result, message = Result.CANCELLED, "the job was cancelled"
                break
            emit.step_started(step.number, step.name)
            emit.log(f"step {step.number}: {step.name}", step=step.number)
            deadline = time.monotonic() + float(arg or 0)
            n = 0
            while time.monotonic() < deadline and not cancel.is_set():
                n += 1
                emit.log(f"step {step.number} tick {n}", step=step.number)
                time.sleep(0.1)
            outcome = Outcome.CANCELLED if cancel.is_set() else Outcome.SUCCESS
            emit.step_finished(step.number, outcome, outcome)
    elif mode == "flood":
        megabytes, _, length = arg.partition(":")
        line = "x" * int(length)
        for _ in range(int(megabytes) * 1024 * 1024 // len(line)):
            emit.log(line, step=1)
    elif mode == "lines":
        for i in range(1, int(arg) + 1):
            emit.log(f"line {i}", step=1)
    elif mode == "exit":
        sink.close()
        return int(arg)
    elif mode == "signal":
        sink.close()
        os.kill(os.getpid(), getattr(signal, f"SIG{arg}"))
        time.sleep(10)
    elif mode == "access":
        access = request.debug_access
        if access is None:
            emit.log("debug access: none", step=None)
        else:
            emit.log(f"debug access: user={access.user} keys={len(access.public_keys)}", step=None)
            for key in access.public_keys:
                emit.log(f"debug key: {key}", step=None)
            emit.log(f"debug problem: {access.problem or '-'}", step=None)
        result, message = Result.FAILURE, "fake failure after access"
    elif mode in ("fail", "error"):
        result = Result.FAILURE if mode == "fail" else Result.ERROR
        message = f"fake {mode}"
    emit.job_finished(result, message, outputs=dict(request.job.outputs) if mode == "outputs" else None)
    if not sink.close(30):
        return 5
    return RESULT_EXIT[result]


if __name__ == "__main__":
    raise SystemExit(main())
