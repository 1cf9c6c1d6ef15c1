"""Code the integration tests load in-process and in spawned server processes (``helpers.services``)."""
