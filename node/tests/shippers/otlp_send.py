"""Sends log records to a Veil node with the OpenTelemetry Python SDK's OTLP exporters.

Usage: otlp_send.py {grpc|http} ENDPOINT SERVICE COUNT

Python's `logging` goes through the SDK's LoggingHandler and a batch processor into the OTLP
exporter (gRPC to ENDPOINT as host:port, or HTTP/protobuf to ENDPOINT as a /v1/logs URL, gzip
on both), as an application would. Record i says "order i placed by user{i}@example.com" with
attributes order_id=i and attempt=1, at WARNING for every fifth and INFO otherwise; the last one
is logged with an exception (ERROR), inside a span. Prints one JSON line: how many export calls
the exporter made and how many succeeded; exits 1 if any failed.
"""

import json
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

protocol, endpoint, service, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from grpc import Compression

    base = OTLPLogExporter(endpoint=endpoint, insecure=True, compression=Compression.Gzip, timeout=30)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http import Compression

    base = OTLPLogExporter(endpoint=endpoint, compression=Compression.Gzip, timeout=30)

calls = {"exports": 0, "ok": 0}


class Counting:
    """The exporter, counting what its export calls returned."""

    def export(self, batch):
        calls["exports"] += 1
        result = base.export(batch)
        if result == LogRecordExportResult.SUCCESS:
            calls["ok"] += 1
        return result

    def shutdown(self):
        base.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


resource = Resource.create(
    {
        "service.name": service,
        "deployment.environment.name": "staging",
        "host.name": "shipper-host",
        "cloud.region": "eu-north-1",
    }
)
provider = LoggerProvider(resource=resource)
provider.add_log_record_processor(BatchLogRecordProcessor(Counting(), max_export_batch_size=64))
handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
log = logging.getLogger("veil.shippers.test")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.propagate = False

for i in range(count - 1):
    level = logging.WARNING if i % 5 == 0 else logging.INFO
    log.log(level, "order %d placed by user%d@example.com", i, i, extra={"order_id": i, "attempt": 1})
# Inside a span, so the record carries its trace and span ids.
with TracerProvider(resource=resource).get_tracer("veil.shippers.test").start_as_current_span("price"):
    try:
        raise ValueError(f"order {count - 1} could not be priced")
    except ValueError:
        log.exception("pricing failed for user%d@example.com", count - 1, extra={"order_id": count - 1, "attempt": 1})

provider.force_flush()
provider.shutdown()
print(json.dumps(calls))
sys.exit(0 if calls["exports"] > 0 and calls["ok"] == calls["exports"] else 1)
