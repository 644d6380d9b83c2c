"""The broker long-poll on its own thread, feeding a bounded inbox the poller's loop drains.

Why a thread: the broker holds a poll ~50 s (§5.2), far longer than the core's loop may block
(it reports jobs every few seconds and pings the systemd watchdog). The thread only polls and
queues; every decision (acknowledge, acquire, cancel, migrate) is taken on the loop's thread. When
the inbox is full the thread stops polling until the loop drains it (nothing is dropped).

The thread deals with what concerns the poll alone: ``SessionInvalid`` (a new session, §5.2, §12)
and outages (backoff, then poll again). ``RegistrationGone``/``VersionTooOld`` end it: ``fatal``
holds the error for the loop to raise.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from solstice.backoff import Backoff
from solstice.forges.core.errors import ForgeError, ForgeUnavailable, RegistrationGone

from . import messages as m
from .client import RunnerClient
from .errors import SessionInvalid, VersionTooOld

log = logging.getLogger("solstice.github")

MAX_INBOX = 32


class Listener:
    def __init__(self, client: RunnerClient, session: m.Session, owner: str, *, max_backoff: float) -> None:
        self.client = client
        self.session = session
        self.owner = owner
        self.backoff = Backoff(initial=1.0, maximum=max_backoff)
        self.inbox: deque[m.TaskAgentMessage] = deque()
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.fatal: ForgeError | None = None
        self.status = m.RunnerStatus.ONLINE
        self.thread = threading.Thread(target=self._run, name="github-broker-poll", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()

    def drain(self) -> list[m.TaskAgentMessage]:
        with self.cond:
            out = list(self.inbox)
            self.inbox.clear()
            self.cond.notify_all()
        return out

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.cond:
                while len(self.inbox) >= MAX_INBOX and not self.stopping.is_set():
                    self.cond.wait(1.0)
            if self.stopping.is_set():
                return
            try:
                message = self.client.get_message(self.session.session_id, self.status)
                self.backoff.reset()
            except SessionInvalid as exc:
                log.warning("the broker session is no longer valid (%s); creating a new one", exc)
                self._new_session()
                continue
            except (RegistrationGone, VersionTooOld) as exc:
                self.fatal = exc
                return
            except ForgeUnavailable as exc:
                delay = self.backoff.next_delay()
                log.warning("the broker long-poll failed (%s); polling again in %.0f s", exc, delay)
                self.stopping.wait(delay)
                continue
            except ForgeError as exc:
                delay = self.backoff.next_delay()
                log.warning("the broker refused the long-poll (%s); polling again in %.0f s", exc, delay)
                self.stopping.wait(delay)
                continue
            if message is not None and not self.stopping.is_set():
                with self.cond:
                    self.inbox.append(message)

    def _new_session(self) -> None:
        while not self.stopping.is_set():
            try:
                self.session = self.client.create_session(self.owner)
                return
            except (RegistrationGone, VersionTooOld) as exc:
                self.fatal = exc
                self.stopping.set()
                return
            except ForgeError as exc:
                delay = self.backoff.next_delay()
                log.warning("cannot create a broker session (%s); again in %.0f s", exc, delay)
                self.stopping.wait(delay)


__all__ = ["Listener"]
