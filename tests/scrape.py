"""Reading a Prometheus endpoint in tests: prometheus_client's own text parser, samples by name
and labels, and a free loopback port to serve one on."""

from __future__ import annotations

import socket

import requests
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a text exposition (counters as ``<name>_total``, histograms as buckets)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    reply = requests.get(f"http://{host}:{port}/metrics", timeout=5)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain"), reply.headers
    return samples(reply.text)


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; KeyError (the series does not exist) otherwise."""
    return found[(name, frozenset(labels.items()))]


def label_values(found: Samples, label: str) -> set[str | None]:
    return {dict(key[1]).get(label) for key in found}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
