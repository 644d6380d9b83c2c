"""Prometheus metrics of the dispatcher and the forge runners (docs/metrics.md).

Each process makes its own metric set (``DispatcherMetrics``, ``RunnerMetrics``) on a registry of
its own (never prometheus_client's global one, so a test can hold several) and, when its address
is configured (``[metrics]``), serves it with ``MetricsServer``: the Prometheus text format on
``http://ADDRESS/metrics``, one daemon thread answering one scrape at a time.

Label values come from fixed sets: an image label the process serves (anything else is
``other``), a job result, a forge error kind. Never a job id: a series per job would grow
without bound.

Ground floor: standard library and prometheus_client only; the callers translate their own
types (results, phases) to the strings here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from solstice import __version__
from solstice.config import parse_address
from solstice.errors import ConfigError

log = logging.getLogger("solstice.metrics")

#: solstice.model.Result's values (tests/unit/test_metrics.py keeps them the same).
RESULTS = ("success", "failure", "cancelled", "error")
#: The label value for anything outside a fixed set (an image label this process does not serve).
OTHER = "other"
#: How a job got its VM: booted for it, or taken from the warm pool.
TAKE_SOURCES = ("cold", "warm")
#: The poller core's forge error kinds (solstice.forges.core.errors).
FORGE_ERROR_KINDS = ("unavailable", "refused", "registration_gone", "report_broken")
#: Warm pool VM states shown as gauges.
POOL_STATES = ("ready", "booting")

#: Queue wait: from sub-second (an idle host) to an hour (a saturated one).
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Boot and take: a warm take is about a second, a cold TCG boot a minute or more.
VM_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class _QuietHandler(WSGIRequestHandler):
    #: A scraper that stops talking is dropped, so it cannot hold the one serving thread.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would flood the journal


class _Server(WSGIServer):
    def server_bind(self) -> None:
        # WSGIServer's own bind looks the host's name up in DNS (socket.getfqdn): not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``registry`` at ``address`` (``HOST:PORT``) until ``close()``. Raises ConfigError
    naming ``key`` when the address is malformed or cannot be listened on."""

    def __init__(self, registry: CollectorRegistry, address: str, key: str) -> None:
        host, port = parse_address(address, key)
        try:
            v6 = ipaddress.ip_address(host).version == 6
        except ValueError:
            v6 = False  # a name such as localhost: IPv4
        try:
            self._server = make_server(
                host,
                port,
                make_wsgi_app(registry),
                server_class=_Server6 if v6 else _Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise ConfigError(
                f"{key} = {address!r}: cannot listen there: {exc.strerror or exc}",
                hint="pick a free port on an address of this host",
            ) from None
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics at http://%s/metrics", f"[{host}]:{self.port}" if v6 else f"{host}:{self.port}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(registry: CollectorRegistry, address: str, key: str) -> MetricsServer | None:
    """A MetricsServer for a configured address; None (nothing listens) when it is empty."""
    return MetricsServer(registry, address, key) if address.strip() else None


class _Labels:
    """A fixed set of label values; anything else is OTHER."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = tuple(dict.fromkeys([*values, OTHER]))

    def __call__(self, value: str) -> str:
        return value if value in self.values else OTHER


def _build_info(registry: CollectorRegistry, component: str) -> None:
    info = Gauge(
        "solstice_build_info",
        "Always 1; the labels say which Solstice version and component this process is",
        ["version", "component"],
        registry=registry,
    )
    info.labels(__version__, component).set(1)


class DispatcherMetrics:
    """The dispatcher's metrics; ``labels`` are the image labels it consumes."""

    def __init__(self, labels: Iterable[str], capacity: int) -> None:
        self.registry = CollectorRegistry()
        self.label = _Labels(labels)
        r = self.registry
        _build_info(r, "dispatcher")
        self.jobs = Counter(
            "solstice_jobs",
            "Jobs this dispatcher finished (recorded their end in the database), by label and result",
            ["label", "result"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "solstice_queue_wait_seconds",
            "From a runner's publish of the job to this dispatcher's accepting it, by label",
            ["label"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.capacity = Gauge("solstice_dispatcher_capacity", "Jobs this host may run at once", registry=r)
        self.running = Gauge("solstice_dispatcher_jobs_running", "Jobs running on this host now", registry=r)
        self.database_up = Gauge(
            "solstice_dispatcher_database_up", "1 while the job database is connected", registry=r
        )
        self.broker_up = Gauge("solstice_dispatcher_broker_up", "1 while RabbitMQ is connected", registry=r)
        self.pool = Gauge(
            "solstice_pool_vms",
            "Warm pool VMs by label and state (ready, booting); taken VMs are their jobs'",
            ["label", "state"],
            registry=r,
        )
        self.recycled = Counter(
            "solstice_pool_recycled",
            "Warm pool VMs that ended unused (too old, unhealthy, killed, or destroyed for a job), by label",
            ["label"],
            registry=r,
        )
        self.capacity.set(capacity)
        for label in self.label.values:  # every series from the start: rate() and alerts see 0
            self.queue_wait.labels(label)
            self.recycled.labels(label)
            for result in RESULTS:
                self.jobs.labels(label, result)
            for state in POOL_STATES:
                self.pool.labels(label, state)

    def job_finished(self, label: str, result: str) -> None:
        self.jobs.labels(self.label(label), result if result in RESULTS else OTHER).inc()

    def job_accepted(self, label: str, waited: float) -> None:
        self.queue_wait.labels(self.label(label)).observe(max(0.0, waited))  # clocks of two hosts

    def pool_round(self, counts: Mapping[tuple[str, str], int]) -> None:
        for (label, state), n in counts.items():
            if state in POOL_STATES:
                self.pool.labels(self.label(label), state).set(n)

    def pool_recycled(self, label: str) -> None:
        self.recycled.labels(self.label(label)).inc()

    def round(self, *, running: int, capacity: int, database: bool, broker: bool) -> None:
        self.running.set(running)
        self.capacity.set(capacity)
        self.database_up.set(1 if database else 0)
        self.broker_up.set(1 if broker else 0)


class RunnerMetrics:
    """A forge runner's metrics (the poller core); ``labels`` are the job queues it publishes to."""

    def __init__(self, forge: str, labels: Iterable[str], capacity: int) -> None:
        self.registry = CollectorRegistry()
        self.label = _Labels(labels)
        r = self.registry
        _build_info(r, f"{forge}-runner")
        self.tasks = Counter(
            "solstice_runner_tasks",
            "Tasks fully reported to the forge, by label and result (other: never ran or given up)",
            ["label", "result"],
            registry=r,
        )
        self.boot = Histogram(
            "solstice_vm_boot_seconds",
            "From starting QEMU to SSH answering, by label (the job's phase events)",
            ["label"],
            buckets=VM_BUCKETS,
            registry=r,
        )
        self.take = Histogram(
            "solstice_vm_take_seconds",
            "From the job process's start to its VM being ready, by label and source (cold: booted "
            "for the job; warm: taken from the pool)",
            ["label", "source"],
            buckets=VM_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "solstice_forge_errors", "Failed calls to the forge, by kind", ["kind"], registry=r
        )
        self.backoff = Gauge(
            "solstice_forge_backoff_seconds",
            "The current wait before the next attempt to reach the forge; 0 while it answers",
            registry=r,
        )
        self.forge_up = Gauge(
            "solstice_forge_up", "1 while the forge answers, 0 while it cannot be reached", registry=r
        )
        self.capacity = Gauge("solstice_runner_capacity", "Tasks this runner may hold at once", registry=r)
        self.running = Gauge("solstice_runner_tasks_running", "Tasks whose job has not finished", registry=r)
        self.capacity.set(capacity)
        self.forge_up.set(1)
        for kind in FORGE_ERROR_KINDS:
            self.errors.labels(kind)
        for label in self.label.values:
            self.boot.labels(label)
            for source in TAKE_SOURCES:
                self.take.labels(label, source)
            for result in (*RESULTS, OTHER):
                self.tasks.labels(label, result)

    def task_reported(self, label: str, result: str) -> None:
        self.tasks.labels(self.label(label), result if result in RESULTS else OTHER).inc()

    def vm_ready(self, label: str, *, take: float | None, boot: float | None, source: str = "cold") -> None:
        label = self.label(label)
        if boot is not None:
            self.boot.labels(label).observe(max(0.0, boot))
        if take is not None:
            self.take.labels(label, source if source in TAKE_SOURCES else OTHER).observe(max(0.0, take))

    def forge_error(self, kind: str) -> None:
        self.errors.labels(kind if kind in FORGE_ERROR_KINDS else OTHER).inc()

    def forge_down(self, backoff: float) -> None:
        self.forge_up.set(0)
        self.backoff.set(backoff)

    def forge_ok(self) -> None:
        self.forge_up.set(1)
        self.backoff.set(0)

    def round(self, *, running: int, capacity: int) -> None:
        self.running.set(running)
        self.capacity.set(capacity)
