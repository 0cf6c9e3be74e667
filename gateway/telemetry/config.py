"""What the policy's `telemetry:` section compiles to: frozen settings, no raw dicts.

The access log's destination and the tracing exporter are opened when the gateway starts
(changing them takes a restart); sampling rates, the explain allow-list and the label
limit apply to the snapshot that carries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Distinct values a data-derived metric label (a model, a tenant) may take before the rest
# fold into OTHER_LABEL.
DEFAULT_MAX_LABEL_VALUES = 100
OTHER_LABEL = "other"
# The exemplar label that names a sampled request's trace on latency histogram buckets
# (the name Grafana's exemplar links read by default).
EXEMPLAR_LABEL = "trace_id"


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One JSON line per request at its end; `path` "stdout" or a file, `sample` in (0, 1]."""

    path: str = "stdout"
    sample: float = 1.0


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OTLP span export; `endpoint` None defers to the OTEL_* environment."""

    endpoint: str | None = None
    protocol: str = "grpc"
    sample_ratio: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "tailguard"


@dataclass(frozen=True, slots=True)
class ExplainConfig:
    """Who may ask for a decision trace (`x-tailguard-explain: 1`), and how many are kept."""

    tenants: frozenset[str] = frozenset()
    keep: int = 1000


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    access_log: AccessLogConfig | None = None
    tracing: TracingConfig | None = None
    explain: ExplainConfig | None = None
    max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    # off spares each KServe/OpenAI request the body scan (a few µs) the data and model
    # layers cost
    model_metrics: bool = True


__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "EXEMPLAR_LABEL",
    "OTHER_LABEL",
    "AccessLogConfig",
    "ExplainConfig",
    "TelemetrySettings",
    "TracingConfig",
]
