"""``solstice image prepare``: boot a label's plain base image, run its ``setup`` commands as root
(through the profile's privilege tool) as the steps of a real job, power the guest off, and keep
its disk, flattened, as the label's prepared image (solstice.images.prepared)."""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from solstice import proc
from solstice.errors import CommandError, ImageError
from solstice.images import Image
from solstice.images.prepared import prepared_path
from solstice.job.runner import JobRun, JobSettings
from solstice.job.selftest import POWEROFF_TIMEOUT, capture_guest, powerdown_settings
from solstice.model import EventSink, JobRequest, JobSpec, Result, Source, Step
from solstice.vm import machine


@dataclass(frozen=True)
class Prepared:
    result: Result
    path: Path
    message: str = ""
    #: It existed already: nothing was booted.
    reused: bool = False


def setup_steps(image: Image) -> tuple[Step, ...]:
    wrap = image.profile.privilege.wrap
    steps = [
        Step(number=n, name=f"setup: {cmd.splitlines()[0][:60]}", run=wrap(cmd))
        for n, cmd in enumerate(image.setup, start=1)
    ]
    # What the commands wrote must be on the disk before the power goes.
    steps.append(Step(number=len(steps) + 1, name="sync", run=wrap("sync")))
    return tuple(steps)


def prepare_image(
    image: Image, images_dir: Path, settings: JobSettings, sink: EventSink, *, force: bool = False
) -> Prepared:
    """Prepare ``image`` (which must be the plain base: Catalog.get(label, prepared=False))."""
    if not image.setup:
        raise ImageError(
            f"image {image.label!r} has no setup commands to prepare it with",
            hint=f'add setup = ["..."] to [images.{image.label}] (docs/images.md "Prepared images")',
        )
    image.check()
    target = prepared_path(images_dir, image.label, image.base_image, image.setup)
    if target.is_file() and not force:
        return Prepared(Result.SUCCESS, target, "already prepared", reused=True)
    request = JobRequest(
        job_id=str(uuid.uuid4()),
        job=JobSpec(
            key="prepare",
            name=f"prepare {image.label}",
            runs_on=(image.label,),
            steps=setup_steps(image),
            timeout_minutes=60,
            workflow_name="solstice image prepare",
        ),
        label=image.label,
        source=Source.LOCAL,
    )
    run = JobRun(request, image, powerdown_settings(settings), sink)
    saved: list[Path] = []

    def save(guest: machine.Guest) -> None:
        if run.job_status != "success" or run.cancel.is_set() or guest.disk is None:
            return
        guest.stop()  # ACPI powerdown; waits for QEMU to exit
        if not guest.powered_off:
            raise ImageError(
                f"the guest did not power off within {POWEROFF_TIMEOUT:.0f} s; nothing was kept",
                hint="check that the image reacts to the ACPI power button (acpid, or systemd-logind)",
            )
        _flatten(guest.disk, target, settings.vm.qemu_img)
        saved.append(target)

    def then(guest: machine.Guest, stack: ExitStack) -> None:
        stack.callback(save, guest)  # runs first at the unwind: before QEMU is stopped

    capture_guest(run, then)
    result = run.run()
    if result is Result.SUCCESS and not saved:
        result = Result.ERROR
    message = "" if saved else (run.failed_step[1] if run.failed_step else "the image was not prepared")
    return Prepared(result, target, message)


def _flatten(overlay: Path, target: Path, qemu_img: str) -> None:
    """``overlay`` with its backing chain as one standalone qcow2 at ``target``, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        proc.run([qemu_img, "convert", "-q", "-O", "qcow2", overlay, tmp])
        os.replace(tmp, target)
    except CommandError as exc:
        raise ImageError(f"cannot store the prepared image {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
