"""What a server serves, transport-free: the handler registry, dispatch (admit once, finish once), the reply
cache, call metrics, the call context and server interceptors."""
