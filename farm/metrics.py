"""The farm's metrics in the Prometheus text format, for autoscalers and dashboards.

Everything shown is read from what the registry keeps as the farm works (:mod:`farm.tally`,
the workers' heartbeats): a scrape is a few Redis round trips, never a scan of the records.
Names start ``gvlfarm_``, in base units, with low-cardinality labels only (status, kind,
outcome). ``gvlfarm_keys`` is the number to scale workers on: unlike the length of Celery's
list (which prefetching empties and duplicates fill), it is the keys the farm has in flight.

``prometheus_client`` writes the format (escaping, histogram series, OpenMetrics when a
scraper asks for it) and serves it; it is Prometheus's own client and depends on nothing.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import MetricsHandler

from farm.errors import BrokerError, InputError
from farm.tally import STATUSES, Snapshot

if TYPE_CHECKING:
    from farm.registry import Registry

IN_FLIGHT = ("queued", "building")


def families(snap: Snapshot, now: float | None = None) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    now = time.time() if now is None else now
    keys = GaugeMetricFamily(
        "gvlfarm_keys",
        "Keys in flight: queued (waiting for a worker) or building. Scale workers on this.",
        labels=["status"],
    )
    for status in IN_FLIGHT:
        keys.add_metric([status], snap.records.get(status, 0))
    yield keys

    records = GaugeMetricFamily(
        "gvlfarm_records", "Records in the registry, by status.", labels=["status"]
    )
    for status in STATUSES:
        records.add_metric([status], snap.records.get(status, 0))
    yield records

    yield GaugeMetricFamily(
        "gvlfarm_workers", "Live workers (each heard from within its heartbeat TTL).",
        value=len(snap.workers),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "gvlfarm_worker_slots",
        "Builds the live workers may run at once (with --autoscale, each worker's maximum).",
        value=sum(int(w.get("slots") or 0) for w in snap.workers),
    )
    yield GaugeMetricFamily(
        "gvlfarm_worker_slots_busy",
        "Slots of live workers running a build now.",
        value=sum(len(w.get("busy") or []) for w in snap.workers),
    )
    oldest = 0.0 if snap.oldest_queued_at is None else max(0.0, now - snap.oldest_queued_at)
    yield GaugeMetricFamily(
        "gvlfarm_oldest_queued_age_seconds",
        "Age of the oldest queued key, since it was claimed or last requeued (0: none).",
        value=round(oldest, 3),
    )

    builds = CounterMetricFamily(
        "gvlfarm_builds",
        "Builders' last words, by kind and outcome (built, rebuilt, reused, migrated, failed, "
        "handed_back; cancelled: failed by `farm cancel` or a client with no builder).",
        labels=["kind", "outcome"],
    )
    for (kind, outcome), n in sorted(snap.builds.items()):
        builds.add_metric([kind, outcome], n)
    yield builds

    durations = HistogramMetricFamily(
        "gvlfarm_build_duration_seconds",
        "How long builds ran, whatever their outcome (buckets up to 24 h).",
        labels=["kind"],
    )
    for kind, hist in sorted(snap.durations.items()):
        durations.add_metric([kind], hist.cumulative(), sum_value=hist.sum_s)
    yield durations

    yield CounterMetricFamily(
        "gvlfarm_lease_takeovers",
        "Keys granted to a builder while an earlier grant was never finished (its builder "
        "died, froze or was cut off past its lease).",
        value=snap.takeovers,
    )
    published = CounterMetricFamily(
        "gvlfarm_published_bytes",
        "Bytes of artifacts built and published, by kind.",
        labels=["kind"],
    )
    for kind, n in sorted(snap.published_bytes.items()):
        published.add_metric([kind], n)
    yield published


class _Collector:
    """Reads the registry on every collection (every scrape)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from families(self._registry.snapshot())


def _registry_of(registry: Registry) -> CollectorRegistry:
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(_Collector(registry))
    return collectors


def render(registry: Registry) -> str:
    """The metrics as Prometheus text, read now."""
    return generate_latest(_registry_of(registry)).decode()


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (loopback) as (host, port); one sentence
    when it is neither."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.removeprefix("[").removesuffix("]")
    if not host:
        raise InputError(
            f"--listen {value}: name the address to listen on, e.g. 127.0.0.1:{port} "
            f"(this machine only) or 0.0.0.0:{port} (every interface)."
        )
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--listen {value}: the port must be a number from 1 to 65535.")
    return host, int(port)


def url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def serve(registry: Registry, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering with the metrics (``/metrics``; any path, as Prometheus's
    own client does), read at each request; the caller runs ``serve_forever``."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = _family(host)

    collectors = _registry_of(registry)

    class Handler(MetricsHandler):
        registry = collectors

        def do_GET(self) -> None:
            try:
                super().do_GET()
            except BrokerError as e:
                # The scrape fails (Prometheus marks the target down) with the reason, not
                # a traceback on the exporter's stderr.
                self.send_error(503, "farm registry unreachable", str(e))

    try:
        return Server((host, port), Handler)
    except OSError as e:
        raise InputError(f"Cannot listen on {url_host(host)}:{port} ({e.strerror}).") from e


def _family(host: str) -> int:
    import socket

    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET
