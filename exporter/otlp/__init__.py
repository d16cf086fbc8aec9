"""OTLP push (opt-in): the same snapshot as the Prometheus exposition, as OpenTelemetry metrics.

mapping.py names every metric and attribute (the one source of the mapping; docs/otel.md is generated from it),
build.py turns a snapshot into OTLP data and push.py sends it from its own thread with a bounded queue. Only
push.py's `open_push` imports the OpenTelemetry SDK, and only when otlp_endpoint is set.
"""
