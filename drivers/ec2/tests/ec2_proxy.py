"""A small HTTP proxy in front of moto's EC2 server that does what moto cannot.

- It answers chosen Actions with EC2's real error XML (HTTP 503 for
  throttling, 400 for the rest), or with a canned body, so the driver's real
  botocore parse path runs.
- It can lose a response: forward the request to moto (so the instance
  exists), then drop the connection without answering.
- It enforces ClientToken idempotency for RunInstances, which moto ignores: a
  repeat with the same token and parameters gets the first answer again; a
  repeat with other parameters gets IdempotentParameterMismatch.
- It can hold a request for a while before forwarding it, or until the test
  releases it, so that a test can cancel the caller mid-call.
- It answers a second TerminateInstances of an instance as EC2 does (a
  success), where moto fails with InvalidNetworkInterfaceID.NotFound.
- It records every request's Action and parameters, in order.

It runs in its own thread (a ``ThreadingHTTPServer`` on 127.0.0.1, port 0),
like moto's server, so it works whatever event loop the test runs.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Self
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

__all__ = ["EC2FaultProxy", "Hold", "Recorded", "error_xml"]

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
_THROTTLE_STATUS = {"RequestLimitExceeded": 503, "Throttling": 400, "ThrottlingException": 400}


def error_xml(code: str, message: str, request_id: str) -> bytes:
    """EC2's error document, byte for byte in the shape EC2 sends."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{escape(request_id)}</RequestID></Response>"
    ).encode()


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request the proxy received: its Action and form parameters."""

    action: str
    params: Mapping[str, str]
    answer: str  # "moto", "error:<code>", "canned", "lost", "replayed"
    at: float  # time.monotonic() when the proxy received it


class Hold:
    """A request held by :meth:`EC2FaultProxy.hold`: :attr:`arrived` is set
    when it reaches the proxy, which forwards it to moto once
    :meth:`release` is called (or after ``timeout`` seconds at most)."""

    def __init__(self, timeout: float) -> None:
        self.arrived = threading.Event()
        self._released = threading.Event()
        self._timeout = timeout

    def release(self) -> None:
        self._released.set()

    def _wait(self) -> None:
        self.arrived.set()
        self._released.wait(self._timeout)


@dataclasses.dataclass
class _Rule:
    action: str
    when: Callable[[Mapping[str, str]], bool] | None
    times: int | None  # None: forever
    kind: str  # "error", "canned", "lose", "delay", "hold"
    status: int = 200
    body: bytes = b""
    code: str = ""
    delay: float = 0.0
    hold: Hold | None = None

    def matches(self, action: str, params: Mapping[str, str]) -> bool:
        if action != self.action or self.times == 0:
            return False
        return self.when is None or self.when(params)


class EC2FaultProxy:
    """The proxy; see the module docstring. Use it as a context manager."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self._upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()  # one RunInstances with a token at a time
        self._rules: list[_Rule] = []
        self._tokens: dict[str, tuple[dict[str, str], int, bytes]] = {}
        self.requests: list[Recorded] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ----------------------------------------------------------

    def fail(
        self,
        action: str,
        code: str,
        message: str | None = None,
        *,
        status: int | None = None,
        times: int | None = 1,
        when: Callable[[Mapping[str, str]], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` requests for ``action`` (that ``when``
        accepts) with EC2's error XML for ``code``."""
        rule = _Rule(
            action,
            when,
            times,
            "error",
            status=status or _THROTTLE_STATUS.get(code, 400),
            body=error_xml(code, message or f"injected {code}", str(uuid.uuid4())),
            code=code,
        )
        with self._lock:
            self._rules.append(rule)

    def respond(self, action: str, body: str, *, status: int = 200, times: int | None = 1) -> None:
        """Answer the next ``times`` requests for ``action`` with ``body``."""
        with self._lock:
            self._rules.append(_Rule(action, None, times, "canned", status, body.encode()))

    def lose_response(self, action: str, *, times: int | None = 1) -> None:
        """Forward the next ``times`` requests for ``action`` to moto, then
        drop the connection instead of answering."""
        with self._lock:
            self._rules.append(_Rule(action, None, times, "lose"))

    def delay(self, action: str, seconds: float, *, times: int | None = 1) -> None:
        """Hold the next ``times`` requests for ``action`` for ``seconds``
        before forwarding them to moto (the caller may give up meanwhile)."""
        with self._lock:
            self._rules.append(_Rule(action, None, times, "delay", delay=seconds))

    def hold(self, action: str, *, timeout: float = 30.0) -> Hold:
        """Hold the next request for ``action`` until the returned
        :class:`Hold` is released, then forward it to moto (whether or not
        the caller still waits for the answer)."""
        hold = Hold(timeout)
        with self._lock:
            self._rules.append(_Rule(action, None, 1, "hold", hold=hold))
        return hold

    def actions(self) -> list[str]:
        """The Actions received, in order."""
        with self._lock:
            return [r.action for r in self.requests]

    def calls(self, action: str) -> list[Recorded]:
        """The requests for one Action, in order."""
        with self._lock:
            return [r for r in self.requests if r.action == action]

    # -- serving ------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                proxy._handle(self)

            def do_GET(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet test output

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        received = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        action = params.get("Action", "")
        with self._lock:
            rule = next((r for r in self._rules if r.matches(action, params)), None)
            if rule is not None and rule.times is not None:
                rule.times -= 1
        kind = rule.kind if rule is not None else "forward"
        if kind == "error":
            assert rule is not None
            self._record(action, params, f"error:{rule.code}", received)
            self._reply(handler, rule.status, rule.body)
            return
        if kind == "canned":
            assert rule is not None
            self._record(action, params, "canned", received)
            self._reply(handler, rule.status, rule.body)
            return
        if kind == "delay":
            assert rule is not None
            time.sleep(rule.delay)
        if kind == "hold":
            assert rule is not None and rule.hold is not None
            rule.hold._wait()
        status, headers, answer, how = self._forward(handler, body, action, params)
        if kind == "lose":
            self._record(action, params, "lost", received)
            handler.close_connection = True  # the client sees the connection drop
            return
        self._record(action, params, how, received)
        self._reply(handler, status, answer, headers)

    def _record(self, action: str, params: Mapping[str, str], answer: str, received: float) -> None:
        with self._lock:
            self.requests.append(Recorded(action, dict(params), answer, received))

    def _forward(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        body: bytes,
        action: str,
        params: Mapping[str, str],
    ) -> tuple[int, dict[str, str], bytes, str]:
        if action == "TerminateInstances":
            return self._terminate(handler, body, params)
        token = params.get("ClientToken") if action == "RunInstances" else None
        if token is None:
            return (*self._upstream_call(handler, body), "moto")
        same = {k: v for k, v in params.items() if k != "ClientToken"}
        with self._token_lock:
            if token in self._tokens:
                first, status, answer = self._tokens[token]
                if first != same:
                    return (
                        400,
                        {},
                        error_xml(
                            "IdempotentParameterMismatch",
                            "The client token you have provided is associated with a "
                            "resource that is already deleted or has different parameters.",
                            str(uuid.uuid4()),
                        ),
                        "error:IdempotentParameterMismatch",
                    )
                return status, {"Content-Type": "text/xml"}, answer, "replayed"
            status, headers, answer = self._upstream_call(handler, body)
            if status == 200:
                self._tokens[token] = (same, status, answer)
            return status, headers, answer, "moto"

    def _terminate(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes, params: Mapping[str, str]
    ) -> tuple[int, dict[str, str], bytes, str]:
        status, headers, answer = self._upstream_call(handler, body)
        if status != 400 or b"InvalidNetworkInterfaceID.NotFound" not in answer:
            return status, headers, answer, "moto"
        # moto fails a second TerminateInstances (it deletes the instance's NIC
        # again); EC2 answers it as a success with the state unchanged.
        ids = [v for k, v in sorted(params.items()) if k.startswith("InstanceId.")]
        items = "".join(
            f"<item><instanceId>{escape(i)}</instanceId>"
            "<currentState><code>48</code><name>terminated</name></currentState>"
            "<previousState><code>48</code><name>terminated</name></previousState></item>"
            for i in ids
        )
        return (
            200,
            {"Content-Type": "text/xml"},
            (
                '<TerminateInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f"<requestId>{uuid.uuid4()}</requestId><instancesSet>{items}</instancesSet>"
                "</TerminateInstancesResponse>"
            ).encode(),
            "terminated-again",
        )

    def _upstream_call(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            return response.status, kept, answer
        finally:
            conn.close()

    def _reply(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        sent = {k.lower() for k in (headers or {})}
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if "content-type" not in sent:
            handler.send_header("Content-Type", "text/xml;charset=UTF-8")
        handler.send_header("Content-Length", str(len(body)))
        try:
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up waiting
