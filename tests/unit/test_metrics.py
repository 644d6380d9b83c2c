"""solstice.metrics without services: the [metrics] addresses, the endpoint's server, the fixed
label sets, and the poller core's hooks (phase events -> boot/take, forge errors -> backoff). The
endpoints of a real dispatcher and Forgejo runner are scraped in
tests/service/test_metrics_endpoints.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests

from solstice import __version__
from solstice import config as configmod
from solstice.errors import ConfigError
from solstice.forges.core import ForgeUnavailable
from solstice.metrics import RESULTS, DispatcherMetrics, MetricsServer, RunnerMetrics, serve
from solstice.model import EventKind, JobEvent, Phase, Result
from solstice.queue import Delivery
from tests.scrape import free_port, samples, scrape, value
from tests.unit.test_forge_core import FakeBackend, make


def test_the_results_are_the_models() -> None:
    assert RESULTS == tuple(r.value for r in Result)


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:", ":9310", "127.0.0.1:0", "h:70000", "h:x"])
def test_a_bad_address_is_an_error_naming_the_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "solstice.toml"
    path.write_text(f'[metrics]\nforgejo_runner = "{text}"\n')
    with pytest.raises(ConfigError, match=r"\[metrics\] forgejo_runner = .*expected HOST:PORT") as err:
        configmod.load(path, environ={})
    assert str(path) in str(err.value)
    env = {"SOLSTICE_METRICS_DISPATCHER": text}
    (tmp_path / "none.toml").write_text("")
    with pytest.raises(ConfigError, match=r"\[metrics\] dispatcher"):
        configmod.load(tmp_path / "none.toml", environ=env)


def test_addresses_default_to_off_and_parse() -> None:
    cfg = configmod.Config()
    assert (cfg.metrics.dispatcher, cfg.metrics.forgejo_runner, cfg.metrics.github_runner) == ("", "", "")
    assert serve(DispatcherMetrics(["a"], 1).registry, "", "[metrics] dispatcher") is None
    assert cfg.metrics.address("github") == ("", "[metrics] github_runner")
    assert configmod.parse_address("[::1]:9310", "k") == ("::1", 9310)
    assert configmod.parse_address(" 0.0.0.0:1 ", "k") == ("0.0.0.0", 1)


def test_the_server_serves_its_registry_and_stops() -> None:
    metrics = DispatcherMetrics(["debian-12"], 3)
    other = DispatcherMetrics(["debian-12"], 5)  # a registry each: no clash between two
    port = free_port()
    server = MetricsServer(metrics.registry, f"127.0.0.1:{port}", "[metrics] dispatcher")
    try:
        with pytest.raises(ConfigError, match=r"\[metrics\] dispatcher = '127.0.0.1:\d+': cannot listen"):
            MetricsServer(other.registry, f"127.0.0.1:{port}", "[metrics] dispatcher")
        found = scrape(port)
        assert value(found, "solstice_build_info", version=__version__, component="dispatcher") == 1
        assert value(found, "solstice_dispatcher_capacity") == 3
    finally:
        server.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_label_values_come_from_fixed_sets() -> None:
    metrics = DispatcherMetrics(["debian-12"], 2)
    metrics.job_finished("debian-12", "success")
    metrics.job_finished("0f9e6c1e-5d0b-4bb7-8a55-2f3f0a0d8c11", "weird")  # never a new series
    metrics.job_accepted("debian-12", 1.5)
    metrics.job_accepted("debian-12", -2.0)  # another host's clock ahead: counted as 0
    found = samples(generate(metrics))
    assert value(found, "solstice_jobs_total", label="debian-12", result="success") == 1
    assert value(found, "solstice_jobs_total", label="other", result="other") == 1
    assert value(found, "solstice_jobs_total", label="debian-12", result="error") == 0  # exists at 0
    assert value(found, "solstice_queue_wait_seconds_count", label="debian-12") == 2
    assert value(found, "solstice_queue_wait_seconds_sum", label="debian-12") == 1.5
    assert value(found, "solstice_pool_vms", label="debian-12", state="ready") == 0
    assert value(found, "solstice_pool_recycled_total", label="debian-12") == 0
    labels = {dict(k[1]).get("label") for k in found}
    assert labels <= {None, "debian-12", "other"}


def generate(metrics: DispatcherMetrics | RunnerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def phase_delivery(
    job_id: str, events: Sequence[tuple[int, Phase, float]]
) -> Delivery[tuple[JobEvent, ...]]:
    batch = tuple(JobEvent(job_id, seq, t, EventKind.PHASE, text=p.value) for seq, p, t in events)
    return Delivery(batch, "events", "q", "r", False, events[0][0], 1)


def test_the_poller_observes_boot_and_take_once_from_the_phase_events(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path, queued=["1"], labels=("x", "self-hosted"))
    poller, _, _, clock = make(tmp_path, backend)
    poller._pipeline_has_room = lambda: True  # type: ignore[method-assign]  # no broker here
    poller.round()
    phases = [(1, Phase.PREPARE, 100.0), (2, Phase.BOOT, 100.5), (3, Phase.READY, 130.5)]
    poller._on_events(phase_delivery("job-1", phases))
    poller._on_events(phase_delivery("job-1", phases[2:]))  # redelivered: not observed again
    poller._on_events(phase_delivery("job-1", [(4, Phase.TEARDOWN, 140.0)]))
    found = samples(generate(poller.metrics))
    assert value(found, "solstice_vm_boot_seconds_count", label="x") == 1
    assert value(found, "solstice_vm_boot_seconds_sum", label="x") == 30.0
    assert value(found, "solstice_vm_take_seconds_sum", label="x", source="cold") == 30.5
    assert value(found, "solstice_vm_take_seconds_count", label="x", source="warm") == 0
    assert value(found, "solstice_vm_boot_seconds_bucket", label="x", le="30.0") == 1
    assert value(found, "solstice_vm_boot_seconds_bucket", label="x", le="20.0") == 0
    assert value(found, "solstice_runner_tasks_running") == 1
    assert value(found, "solstice_build_info", version=__version__, component="fake-runner") == 1
    finish = JobEvent("job-1", 5, 150.0, EventKind.JOB_FINISHED, result=Result.FAILURE)
    poller._on_events(Delivery((finish,), "events", "q", "r", False, 5, 1))
    for _ in range(3):
        clock.now += 1.0
        poller.round()
    found = samples(generate(poller.metrics))
    assert value(found, "solstice_runner_tasks_total", label="x", result="failure") == 1
    assert value(found, "solstice_runner_tasks_running") == 0


class DownBackend(FakeBackend):
    down: bool = True

    def fetch(self) -> Sequence[str]:
        if self.down:
            raise ForgeUnavailable("https://forge.invalid: cannot connect: refused")
        return super().fetch()


def test_forge_errors_count_and_the_backoff_shows(tmp_path: Path) -> None:
    backend = DownBackend(tmp_path)
    poller, _, _, clock = make(tmp_path, backend)
    for _ in range(3):
        poller.round()
        clock.now = poller.forge_retry_at
    found = samples(generate(poller.metrics))
    assert value(found, "solstice_forge_errors_total", kind="unavailable") == 3
    assert value(found, "solstice_forge_errors_total", kind="refused") == 0
    assert value(found, "solstice_forge_up") == 0
    assert 3.2 <= value(found, "solstice_forge_backoff_seconds") <= 4.8  # the third delay: 4 s ±20%
    backend.down = False
    poller.round()
    found = samples(generate(poller.metrics))
    assert value(found, "solstice_forge_up") == 1 and value(found, "solstice_forge_backoff_seconds") == 0


def test_every_metric_is_documented_with_its_labels() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `(solstice_\w+)` \| \w+ \|([^|]*)\|", doc, re.M)
    }
    for metrics in (DispatcherMetrics(["a"], 1), RunnerMetrics("forgejo", ["a"], 1)):
        for family in metrics.registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            assert name in rows, f"{name} is not in docs/metrics.md"
            labels = {k for s in family.samples for k in s.labels} - {"le"}
            assert set(re.findall(r"`(\w+)`", rows[name])) == labels, name
