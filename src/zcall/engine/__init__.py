"""The I/O engine: the loop thread, the edge-triggered reader, socket helpers, liveness, and the in-flight
call table and DEALER channel the async client runs on."""
