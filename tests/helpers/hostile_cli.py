"""``helpers.hostile_server``'s service as a module attribute, for ``zcall serve helpers.hostile_cli:service``
(a command line serves a ``Service`` it finds at MODULE:ATTR; ``holder`` is its probe's holder)."""

from __future__ import annotations

from helpers.hostile_server import make_service

service, holder = make_service()
