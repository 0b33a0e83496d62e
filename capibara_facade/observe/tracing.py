"""Optional OpenTelemetry traces: one span per chat request, in the GenAI semantic conventions' words.

Off by default, and an extra (`pip install 'capibara-facade[otel]'`, then `[tracing] enabled = true`): the
facade imports OpenTelemetry only when it is on. A client's W3C `traceparent` is the span's parent, and the
upstream gets a `traceparent` naming the facade's span, so a model server that traces (vLLM does) joins the
same trace. The span is ended by the accounting, from the request's record:

    gen_ai.operation.name        "chat"
    gen_ai.request.model         the public model name the client asked for
    gen_ai.response.model        the model id the upstream was asked for
    gen_ai.usage.input_tokens    the upstream's prompt_tokens (when it reported usage)
    gen_ai.usage.output_tokens   its completion_tokens
    error.type                   the upstream failure (connect, timeout, ...) or the outcome when not completed
    http.route, http.response.status_code
"""

from __future__ import annotations

from typing import Any

from ..config import TracingConfig
from .record import Outcome, RequestRecord

__all__ = ["Tracing"]


class Tracing:
    def __init__(self, config: TracingConfig) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        if config.exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
            self._output = None
        else:  # "file": one JSON span a line, written as each span ends (for debugging and the tests)
            assert config.path is not None
            self._output = open(config.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in aclose()
            exporter = ConsoleSpanExporter(out=self._output, formatter=lambda span: span.to_json(indent=None) + "\n")
            self._provider.add_span_processor(SimpleSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("capibara_facade")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, record: RequestRecord, traceparent: bytes | None) -> None:
        """Open the request's span (a child of the client's, if it sent one) and name it to the upstream."""
        carrier = {"traceparent": traceparent.decode("latin-1")} if traceparent else {}
        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span("chat", context=parent, kind=self._trace.SpanKind.SERVER)
        outgoing: dict[str, str] = {}
        self._propagator.inject(outgoing, context=self._trace.set_span_in_context(span))
        record.span = span
        record.upstream_traceparent = outgoing["traceparent"].encode()

    def end(self, record: RequestRecord) -> None:
        span: Any = record.span
        if span is None:
            return
        if record.model is not None:
            span.update_name(f"chat {record.model}")
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "http.route": record.route,
            "http.response.status_code": record.status,
        }
        for key, value in (
            ("gen_ai.request.model", record.model),
            ("gen_ai.response.model", record.upstream_model),
            ("gen_ai.usage.input_tokens", record.prompt_tokens),
            ("gen_ai.usage.output_tokens", record.completion_tokens),
        ):
            if value is not None:
                attributes[key] = value
        failed = record.outcome not in (Outcome.COMPLETED, Outcome.REJECTED)
        if failed or record.status >= 500:
            attributes["error.type"] = record.upstream_error or record.outcome
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.set_attributes(attributes)
        span.end()

    def aclose(self) -> None:
        self._provider.shutdown()
        if self._output is not None:
            self._output.close()
