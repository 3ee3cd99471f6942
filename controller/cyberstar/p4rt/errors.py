"""The one P4Runtime error: a gRPC status code and a message, and for a failed Write the
per-update errors. The server raises it to answer a request with the specification's code;
the clients raise it for a failed RPC."""

from __future__ import annotations

import grpc


class P4RuntimeError(Exception):
    """`errors` holds (update index, canonical code name, message) for each failed update of a
    Write batch (P4Runtime §12.3); it is empty otherwise."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        errors: list[tuple[int, str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = errors or []
