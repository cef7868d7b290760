"""The face API's own metrics, recorded through ray.util.metrics.

Ray exports them with its own and Serve's built-in metrics on every node's Prometheus endpoint
(the node's metrics export port), each name prefixed with `ray_` and each counter suffixed with
`_total`; EXPORTED lists the names as Prometheus sees them. Every metric carries the Serve
application's name in `application`. cluster/grafana-face-api.json charts them.
"""
from __future__ import annotations

from collections import Counter as Tally

from ray import serve
from ray.util import metrics

__all__ = ["EXPORTED", "GeneratorMetrics", "IngressMetrics", "application_name"]

# Seconds: from a cache-warm tiny model on a GPU to a POST of 64 faces queued behind others on a CPU.
LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
# Faces per forward pass: powers of two up to the largest max_batch_size a shipped config uses.
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]

# Why a request got no faces, by the answer it got (HTTP status, gRPC status code name).
REJECTIONS = {
    "401": "unauthenticated", "UNAUTHENTICATED": "unauthenticated",
    "413": "body_too_large",
    "422": "invalid", "INVALID_ARGUMENT": "invalid",
    "503": "overload", "RESOURCE_EXHAUSTED": "overload",
}

LATENCY = "ganray_request_latency_s"
FACES = "ganray_faces"
CONDITION_FACES = "ganray_condition_faces"
REJECTED = "ganray_rejected_requests"
BATCH_FACES = "ganray_batch_faces"
QUEUE_DEPTH = "ganray_generator_queue_depth"

# The names on the Prometheus endpoint (a histogram's series are NAME_bucket, NAME_count, NAME_sum).
EXPORTED = {
    "latency": f"ray_{LATENCY}",
    "faces": f"ray_{FACES}_total",
    "condition_faces": f"ray_{CONDITION_FACES}_total",
    "rejected": f"ray_{REJECTED}_total",
    "batch_faces": f"ray_{BATCH_FACES}",
    "queue_depth": f"ray_{QUEUE_DEPTH}",
}


def application_name() -> str:
    """The Serve application this replica belongs to ("" outside a replica, e.g. in unit tests)."""
    try:
        return serve.get_replica_context().app_name
    except Exception:  # noqa: BLE001 - Serve raises its own exception type outside a replica
        return ""


class IngressMetrics:
    """What the routes record: per request (HTTP or gRPC) and per face served."""

    def __init__(self, application: str):
        self.latency = metrics.Histogram(
            LATENCY, description="seconds from a request's arrival at the replica to its answer, by route and "
            "answer (HTTP status or gRPC code)", boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("application", "protocol", "route", "code"))
        self.faces = metrics.Counter(
            FACES, description="faces rendered and sent to clients (rate: faces/s)",
            tag_keys=("application", "protocol"))
        self.condition_faces = metrics.Counter(
            CONDITION_FACES, description="faces sent, by each condition's attribute and value; source: requested "
            "(the client named the value) or drawn (from the seed)",
            tag_keys=("application", "attribute", "value", "source"))
        self.rejected = metrics.Counter(
            REJECTED, description="requests answered without faces, by reason: unauthenticated, body_too_large, "
            "invalid, overload (queues full past this replica; Serve's own metrics count the proxy's)",
            tag_keys=("application", "protocol", "reason"))
        for metric in (self.latency, self.faces, self.condition_faces, self.rejected):
            metric.set_default_tags({"application": application})

    def request(self, protocol: str, route: str, code: str, seconds: float) -> None:
        self.latency.observe(seconds, tags={"protocol": protocol, "route": route, "code": code})
        reason = REJECTIONS.get(code)
        if reason is not None:
            self.rejected.inc(tags={"protocol": protocol, "reason": reason})

    def faces_sent(self, protocol: str, conditions: list[dict[str, str]], requested: dict[str, str]) -> None:
        """`conditions`: each face's full conditions as rendered; `requested`: what the request named."""
        self.faces.inc(len(conditions), tags={"protocol": protocol})
        # One increment per distinct (attribute, value): a POST of 64 faces is a handful of records.
        tally = Tally((name, value) for face in conditions for name, value in face.items())
        for (name, value), count in tally.items():
            source = "requested" if name in requested else "drawn"
            self.condition_faces.inc(count, tags={"attribute": name, "value": value, "source": source})


class GeneratorMetrics:
    """What the generator records: each batch's size, and the requests it holds."""

    def __init__(self, application: str):
        self.batch_faces = metrics.Histogram(
            BATCH_FACES, description="faces per forward pass (@serve.batch)", boundaries=BATCH_BOUNDARIES,
            tag_keys=("application",))
        self.queue_depth = metrics.Gauge(
            QUEUE_DEPTH, description="requests at this generator replica not yet answered: waiting for a batch, "
            "or in the one rendering", tag_keys=("application",))
        for metric in (self.batch_faces, self.queue_depth):
            metric.set_default_tags({"application": application})
        self.held = 0

    def arrived(self) -> None:
        self.held += 1
        self.queue_depth.set(self.held)

    def answered(self) -> None:
        self.held -= 1
        self.queue_depth.set(self.held)

    def batch(self, faces: int) -> None:
        self.batch_faces.observe(faces)
