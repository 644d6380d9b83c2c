"""The poller's per-task state on disk, so a restarted poller resumes reporting where it stopped.

One JSON file per task, ``<dir>/<task key>.json`` (0600, atomic rename): the Report's checkpoint,
the job uuid and label, whether the cancellation was sent, and the sealed JobRequest until it is
published. Values that are secrets never reach the disk in clear: the checkpoint's masking list is
sealed with the installation's key like the request's secrets (solstice.secrets), and log rows are
masked before they are buffered.

Events are acknowledged on RabbitMQ only up to the ``last_seq`` of a stored checkpoint (see
poller.py), so the file plus the unacknowledged events always rebuild the same rows.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from solstice.files import atomic_write
from solstice.model import JobRequest
from solstice.queue import InvalidMessage, decode_request, encode_request

from .backend import Report

log = logging.getLogger("solstice.forges")

VERSION = 1
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class Saved:
    key: str  # the backend's task key
    job_id: str  # "" for a task that never became a job (refused, skipped)
    label: str
    report: Report
    request: JobRequest | None  # sealed; None once published
    cancel_sent: bool = False


class TaskStore:
    def __init__(self, directory: Path, key: bytes) -> None:
        self.dir = directory
        self.fernet = Fernet(key)

    def _path(self, task_key: str) -> Path:
        if not _KEY.fullmatch(task_key):
            raise ValueError(f"task key {task_key!r} is not a file name")
        return self.dir / f"{task_key}.json"

    def save(self, s: Saved) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        checkpoint = s.report.checkpoint()
        mask = checkpoint.pop("mask", [])
        data: dict[str, Any] = {
            "version": VERSION,
            "task_id": s.key,
            "job_id": s.job_id,
            "label": s.label,
            "cancel_sent": s.cancel_sent,
            "reporter": checkpoint,
            "mask_sealed": self.fernet.encrypt(json.dumps(mask).encode()).decode(),
            "request": encode_request(s.request).decode() if s.request is not None else None,
        }
        atomic_write(self._path(s.key), json.dumps(data, separators=(",", ":")), durable=True)

    def remove(self, task_key: str) -> None:
        self._path(task_key).unlink(missing_ok=True)

    def load_all(self, restore: Callable[[dict[str, Any]], Report]) -> list[Saved]:
        """Every stored task, its Report rebuilt by ``restore``; a file that cannot be read is renamed
        ``*.broken`` and skipped (the forge reaps its task) rather than stopping the poller."""
        out: list[Saved] = []
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                if data.get("version") != VERSION:
                    raise ValueError(f"unknown version {data.get('version')!r}")
                checkpoint = dict(data["reporter"])
                checkpoint["mask"] = json.loads(self.fernet.decrypt(data["mask_sealed"].encode()))
                request = data.get("request")
                out.append(
                    Saved(
                        key=str(data["task_id"]),
                        job_id=str(data["job_id"]),
                        label=str(data.get("label", "")),
                        report=restore(checkpoint),
                        request=decode_request(request.encode()) if request else None,
                        cancel_sent=bool(data.get("cancel_sent", False)),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError, InvalidToken, InvalidMessage) as exc:
                broken = path.with_suffix(".broken")
                log.error(
                    "%s: cannot resume this task (%s); moved to %s", path, exc or type(exc).__name__, broken
                )
                path.replace(broken)
        return out
