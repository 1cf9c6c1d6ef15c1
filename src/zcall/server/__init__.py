"""The servers: REP (one call at a time) and ROUTER (many in flight), differing only in how a handler runs;
one lifecycle (start, stop(grace), serve_forever, serve, aclose) shared with Peer."""
