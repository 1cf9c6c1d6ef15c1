"""The clients: one core (configuration, options, call spec, retry and failover, error mapping,
statistics) under the sync (REQ) face and the async (DEALER) faces, asyncio and callback."""
