"""The public surface is a decision: this pins it, so a change to it is a visible diff."""

import zcall


def test_public_exports_are_pinned():
    assert sorted(zcall.__all__) == sorted(
        [
            "PROTOCOL_VERSION",
            "AsyncClient",
            "AsyncServer",
            "AuthenticationFailed",
            "Backpressure",
            "CallContext",
            "CallTimeout",
            "ClientClosed",
            "ClientInterceptor",
            "ClientSecurity",
            "Codec",
            "ConnectionLost",
            "DeadlineExceeded",
            "InvalidArguments",
            "MessageTooLarge",
            "MethodNotFound",
            "OutgoingCall",
            "Peer",
            "PermissionDenied",
            "ProtocolError",
            "Rejected",
            "RemoteError",
            "SerializationError",
            "ServerBusy",
            "ServerInterceptor",
            "ServerSecurity",
            "Service",
            "StatusCode",
            "StreamsUnsupported",
            "SyncClient",
            "SyncServer",
            "ZcallError",
            "current_call",
            "register_error",
            "register_type",
        ]
    )
    for name in zcall.__all__:
        assert hasattr(zcall, name), name


def test_no_pickle_in_the_package():
    import pathlib

    src = pathlib.Path(zcall.__file__).parent
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "import pickle" not in text and "recv_pyobj" not in text and "send_pyobj" not in text, f
