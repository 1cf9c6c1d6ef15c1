"""Optional integrations with monitoring systems, each behind its own extra and never imported by the core.

- ``zcall.integrations.prometheus`` (``pip install 'zcall[prometheus]'``): per-method metrics in the
  Prometheus text format, from a local service or a remote ``zcall.stats``, and an HTTP scrape endpoint;
- ``zcall.integrations.opentelemetry`` (``pip install 'zcall[opentelemetry]'``): client and server
  interceptors that make spans for calls and carry W3C trace context in the call headers.

Importing one without its extra raises ``ImportError`` naming the extra to install.
"""
