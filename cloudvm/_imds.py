"""An IMDSv2-style metadata service (EC2's protocol), as an HTTP handler."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping

from ._http_server import HTTPRequest, HTTPResponse

__all__ = ["IMDSv2Service"]

_MAX_TOKEN_TTL = 21600  # seconds, as EC2


class IMDSv2Service:
    """Answers EC2's IMDSv2 protocol for one instance.

    ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
    (1-21600) returns a session token; every GET must carry it in
    ``X-aws-ec2-metadata-token`` (else 401). GET paths:
    ``/latest/meta-data/instance-id``, ``/latest/meta-data/tags/instance``
    (keys, one per line), ``/latest/meta-data/tags/instance/<key>``, and
    ``/latest/user-data``. ``tags`` is called on every request, so tag changes
    show at once, as with EC2's InstanceMetadataTags.
    """

    def __init__(
        self,
        instance_id: str,
        tags: Callable[[], Mapping[str, str]],
        user_data: bytes = b"",
    ) -> None:
        self._instance_id = instance_id
        self._tags = tags
        self._user_data = user_data
        self._tokens: dict[str, float] = {}  # token -> expiry on the monotonic clock

    def __call__(self, request: HTTPRequest) -> HTTPResponse:
        if request.method == "PUT" and request.path == "/latest/api/token":
            try:
                ttl = int(request.headers.get("x-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                return HTTPResponse(400, b"missing or invalid token TTL\n")
            if not 1 <= ttl <= _MAX_TOKEN_TTL:
                return HTTPResponse(400, b"token TTL out of range\n")
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            token = secrets.token_urlsafe(32)
            self._tokens[token] = now + ttl
            return HTTPResponse(200, token.encode())
        if request.method != "GET":
            return HTTPResponse(405, b"method not allowed\n")
        token = request.headers.get("x-aws-ec2-metadata-token", "")
        if self._tokens.get(token, 0.0) < time.monotonic():
            return HTTPResponse(401, b"a valid session token is required\n")
        if request.path == "/latest/meta-data/instance-id":
            return HTTPResponse(200, self._instance_id.encode())
        if request.path == "/latest/user-data":
            return HTTPResponse(200, self._user_data) if self._user_data else HTTPResponse(404)
        tags = self._tags()
        if request.path == "/latest/meta-data/tags/instance":
            return HTTPResponse(200, "\n".join(sorted(tags)).encode())
        prefix = "/latest/meta-data/tags/instance/"
        if request.path.startswith(prefix) and request.path[len(prefix) :] in tags:
            return HTTPResponse(200, tags[request.path[len(prefix) :]].encode())
        return HTTPResponse(404, b"not found\n")
