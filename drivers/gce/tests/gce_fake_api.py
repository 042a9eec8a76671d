"""A local Compute Engine REST API (v1) for tests, on aiohttp.

It speaks the real JSON wire format of the endpoints the GCE driver uses, so
the real google-cloud-compute client talks to it unmodified:

    instances: insert, list, get, delete, setLabels, setMetadata,
               getGuestAttributes
    zoneOperations: get, wait

Faithful where the driver depends on it: operations that progress (PENDING,
RUNNING, DONE; errors inside finished operations), ``nextPageToken``
pagination with ``maxResults``, ``labels.KEY = "VALUE"`` filters,
``requestId`` idempotency, label/metadata fingerprints (412
conditionNotMet), name and label validation, and GCE's error JSON
(``{"error": {"code", "message", "errors": [{"reason", "domain", "message"}]}}``).

Knobs, not scripts: :meth:`FakeCompute.fail` queues an HTTP error for a
method, :meth:`FakeCompute.fail_operation` makes the next insert's operation
finish with an error (``errorDetails`` included, as GCE sends them),
``exhausted_zones`` answer every insert with ZONE_RESOURCE_POOL_EXHAUSTED,
:meth:`FakeCompute.drop_response` processes a call and then cuts the
connection, :meth:`FakeCompute.hold` keeps a call waiting until released,
:meth:`FakeCompute.conflict_in_operation` reports a name conflict inside
the insert's operation (as GCE does for a resent insert) instead of the
synchronous 409, ``op_steps`` sets how many polls an operation needs,
``op_seconds`` how long it runs at least (``wait`` then blocks until it is
done, as GCE's does), :meth:`FakeCompute.hold_operations` keeps every new
operation RUNNING until released. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cloudvm.testing import HTTPRequest, HTTPResponse

__all__ = ["FakeCompute", "GCEMetadataService", "RecordedRequest"]

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_FILTER_TERM = re.compile(r'^\(labels\.([a-z][a-z0-9_-]*) = "([a-z0-9_-]*)"\)$')
_BASE = "/compute/v1/projects/{project}/zones/{zone}"


@dataclasses.dataclass
class RecordedRequest:
    """One request the fake received. ``method`` is the API method
    (``"insert"``, ``"list"``, ``"wait"``...); ``body`` the parsed JSON or None."""

    method: str
    http_method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclasses.dataclass
class _Injected:
    status: int
    reason: str
    message: str
    domain: str
    headers: dict[str, str]


@dataclasses.dataclass
class _OperationError:
    code: str
    message: str
    http_status: int
    details: list[dict[str, Any]]


@dataclasses.dataclass
class _Operation:
    resource: dict[str, Any]
    steps_left: int
    on_done: Callable[[], dict[str, Any] | None]  # returns an error body, or None
    ready_at: float = 0.0  # the loop time before which it cannot be DONE
    gate: asyncio.Event | None = None  # while not set, it cannot be DONE

    def ready(self) -> bool:
        gate_open = self.gate is None or self.gate.is_set()
        return gate_open and asyncio.get_running_loop().time() >= self.ready_at

    async def until_ready(self, limit: float) -> None:
        """Wait (at most ``limit`` s) until the operation may be DONE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                if self.gate is not None:
                    await self.gate.wait()
                await asyncio.sleep(max(0.0, self.ready_at - loop.time()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _fingerprint(value: Any) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _error_body(status: int, reason: str, message: str, domain: str = "global") -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }


class _APIError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class FakeCompute:
    """The fake API's state and knobs; :meth:`start` serves it on 127.0.0.1."""

    def __init__(self, project: str = "test-project") -> None:
        self.project = project
        #: (zone, name) -> the instance resource as the API returns it.
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[tuple[str, str], _Operation] = {}
        #: Every request received, in order.
        self.requests: list[RecordedRequest] = []
        #: Guest attributes per instance name: a list of {namespace, key, value}.
        self.guest_attributes: dict[str, list[dict[str, str]]] = {}
        #: Zones whose inserts all end with ZONE_RESOURCE_POOL_EXHAUSTED.
        self.exhausted_zones: set[str] = set()
        #: How many get/wait polls an operation needs before it is DONE.
        self.op_steps = 1
        #: How many seconds an operation runs at least before it can be DONE.
        self.op_seconds = 0.0
        #: How long one ``wait`` call blocks at most (GCE's: about 2 minutes).
        self.wait_limit = 120.0
        self._op_gate: asyncio.Event | None = None
        #: The page size when a list call gives no maxResults.
        self.default_page_size = 500
        self._request_ids: dict[str, tuple[str, str]] = {}
        self._errors: dict[str, list[_Injected]] = {}
        self._op_errors: dict[str, list[_OperationError]] = {}
        self._conflicts: list[str] = []
        self._held: dict[str, list[asyncio.Event]] = {}
        self._arrivals: list[asyncio.Event] = []  # woken by each request
        self._drop: dict[str, int] = {}
        self._ids = itertools.count(1000)
        self._ips = itertools.count(2)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- knobs -------------------------------------------------------------

    def fail(
        self,
        method: str,
        status: int,
        reason: str,
        message: str = "injected error",
        *,
        domain: str = "global",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with this HTTP error."""
        injected = _Injected(status, reason, message, domain, dict(headers or {}))
        self._errors.setdefault(method, []).extend([injected] * times)

    def fail_operation(
        self,
        zone: str,
        code: str,
        message: str,
        http_status: int = 400,
        *,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        """Make the next insert in ``zone`` finish its operation with this
        error; ``details`` are its ``errorDetails`` (``quotaInfo``, ``help``...)."""
        failure = _OperationError(code, message, http_status, list(details or []))
        self._op_errors.setdefault(zone, []).append(failure)

    def conflict_in_operation(self, code: str = "RESOURCE_ALREADY_EXISTS") -> None:
        """Accept the next insert whose name already exists in its zone, even
        one whose ``requestId`` is known, and finish its operation with this
        409 error code instead of answering the insert with a synchronous 409:
        what GCE can do with a resent insert."""
        self._conflicts.append(code)

    def hold(self, method: str) -> asyncio.Event:
        """Keep the next call of ``method`` waiting, before it is processed,
        until the returned event is set."""
        gate = asyncio.Event()
        self._held.setdefault(method, []).append(gate)
        return gate

    def hold_operations(self) -> asyncio.Event:
        """Keep every operation made from now on RUNNING (``get`` answers
        RUNNING, ``wait`` blocks) until the returned event is set; operations
        made after it is set are held again only by a new call."""
        gate = asyncio.Event()
        self._op_gate = gate
        return gate

    def drop_response(self, method: str, times: int = 1) -> None:
        """Process the next ``times`` calls of ``method``, then cut the connection
        instead of answering (a lost response)."""
        self._drop[method] = self._drop.get(method, 0) + times

    async def wait_for_calls(self, method: str, count: int = 1) -> None:
        """Return once ``count`` calls of ``method`` have arrived (held ones
        included). Bound it with a deadline."""
        while len(self.calls(method)) < count:
            arrival = asyncio.Event()
            self._arrivals.append(arrival)
            await arrival.wait()

    def calls(self, method: str) -> list[RecordedRequest]:
        """The recorded requests of one API method."""
        return [r for r in self.requests if r.method == method]

    def secret_of(self, name: str, key: str) -> str | None:
        """A metadata item of the instance called ``name`` (any zone)."""
        for (_zone, iname), inst in self.instances.items():
            if iname == name:
                for item in inst.get("metadata", {}).get("items", []):
                    if item["key"] == key:
                        return str(item.get("value", ""))
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- server --------------------------------------------------------------

    async def start(self) -> FakeCompute:
        app = web.Application()
        base = _BASE
        routes: list[tuple[str, str, str, Callable[..., Awaitable[Any]]]] = [
            ("POST", base + "/instances", "insert", self._insert),
            ("GET", base + "/instances", "list", self._list),
            ("GET", base + "/instances/{instance}", "get", self._get),
            ("DELETE", base + "/instances/{instance}", "delete", self._delete),
            ("POST", base + "/instances/{instance}/setLabels", "setLabels", self._set_labels),
            ("POST", base + "/instances/{instance}/setMetadata", "setMetadata", self._set_metadata),
            (
                "GET",
                base + "/instances/{instance}/getGuestAttributes",
                "getGuestAttributes",
                self._guest_attributes,
            ),
            ("GET", base + "/operations/{operation}", "operations.get", self._op_get),
            ("POST", base + "/operations/{operation}/wait", "wait", self._op_wait),
        ]
        for http_method, path, name, handler in routes:
            app.router.add_route(http_method, path, self._wrap(name, handler))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _wrap(
        self, name: str, handler: Callable[..., Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            body = json.loads(raw) if raw else None
            self.requests.append(
                RecordedRequest(name, request.method, request.path, dict(request.query), body)
            )
            arrivals, self._arrivals = self._arrivals, []
            for arrival in arrivals:
                arrival.set()
            held = self._held.get(name)
            if held:
                await held.pop(0).wait()
            if request.match_info["project"] != self.project:
                return self._json(_error_body(404, "notFound", "The project was not found"), 404)
            queued = self._errors.get(name)
            if queued:
                err = queued.pop(0)
                return self._json(
                    _error_body(err.status, err.reason, err.message, err.domain),
                    err.status,
                    headers=err.headers,
                )
            try:
                result = await handler(request, body)
            except _APIError as exc:
                return self._json(_error_body(exc.status, exc.reason, exc.message), exc.status)
            if self._drop.get(name):
                self._drop[name] -= 1
                assert request.transport is not None
                request.transport.abort()  # processed, but the answer is lost
            return self._json(result, 200)

        return serve

    @staticmethod
    def _json(value: Any, status: int, *, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps(value),
            content_type="application/json",
            headers=headers,
        )

    # -- helpers -------------------------------------------------------------

    def _zone_url(self, zone: str) -> str:
        return f"{self.url}/compute/v1/projects/{self.project}/zones/{zone}"

    def _instance(self, request: web.Request) -> tuple[str, str, dict[str, Any]]:
        zone, name = request.match_info["zone"], request.match_info["instance"]
        inst = self.instances.get((zone, name))
        if inst is None:
            raise _APIError(
                404,
                "notFound",
                f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' "
                "was not found",
            )
        return zone, name, inst

    def _new_operation(
        self,
        zone: str,
        op_type: str,
        target: str,
        request_id: str | None,
        on_done: Callable[[], dict[str, Any] | None],
    ) -> dict[str, Any]:
        if request_id is not None:
            try:
                uuid.UUID(request_id)
            except ValueError:
                raise _APIError(400, "invalid", "Invalid value for field 'requestId'") from None
            known = self._request_ids.get(request_id)
            if known is not None:
                return self.operations[known].resource
        op_id = next(self._ids)
        name = f"operation-{op_id}-{uuid.uuid4().hex[:12]}"
        resource: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(op_id),
            "name": name,
            "zone": self._zone_url(zone),
            "operationType": op_type,
            "targetLink": f"{self._zone_url(zone)}/instances/{target}",
            "status": "RUNNING",
            "user": "fake@example.com",
            "progress": 0,
            "insertTime": _now(),
            "startTime": _now(),
            "selfLink": f"{self._zone_url(zone)}/operations/{name}",
        }
        gate = self._op_gate if self._op_gate and not self._op_gate.is_set() else None
        ready_at = asyncio.get_running_loop().time() + self.op_seconds
        op = _Operation(resource, self.op_steps, on_done, ready_at, gate)
        self.operations[(zone, name)] = op
        if request_id is not None:
            self._request_ids[request_id] = (zone, name)
        if op.steps_left <= 0 and op.ready():
            self._advance(op)
        return resource

    def _advance(self, op: _Operation) -> None:
        if op.resource["status"] == "DONE":
            return
        op.steps_left -= 1
        if op.steps_left > 0 or not op.ready():
            return
        error = op.on_done()
        op.resource.update(status="DONE", progress=100, endTime=_now())
        if error is not None:
            op.resource.update(error=error["error"], **error["http"])

    def _operation(self, request: web.Request) -> _Operation:
        key = (request.match_info["zone"], request.match_info["operation"])
        op = self.operations.get(key)
        if op is None:
            raise _APIError(404, "notFound", f"The resource '{key[1]}' was not found")
        return op

    # -- instances -----------------------------------------------------------

    async def _insert(self, request: web.Request, body: Any) -> dict[str, Any]:
        zone = request.match_info["zone"]
        request_id = request.query.get("requestId")
        name = str(body.get("name", "")) if isinstance(body, dict) else ""
        conflict = (
            f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}' already exists"
        )
        if (zone, name) in self.instances and self._conflicts:
            code = self._conflicts.pop(0)
            clash = _OperationError(code, conflict, 409, [])
            return self._new_operation(zone, "insert", name, None, lambda: _failed(clash))
        if request_id is not None and request_id in self._request_ids:
            return self._new_operation(zone, "insert", "", request_id, lambda: None)
        if not isinstance(body, dict) or not _NAME.match(name):
            raise _APIError(400, "invalid", "Invalid value for field 'resource.name'")
        if (zone, name) in self.instances:
            raise _APIError(409, "alreadyExists", conflict)
        labels = body.get("labels", {})
        if len(labels) > 64 or not all(
            _LABEL_KEY.match(k) and _LABEL_VALUE.match(v) for k, v in labels.items()
        ):
            raise _APIError(400, "invalid", "Invalid value for field 'resource.labels'")
        items = body.get("metadata", {}).get("items", [])
        if not all(_METADATA_KEY.match(i.get("key", "")) for i in items):
            raise _APIError(400, "invalid", "Invalid value for field 'resource.metadata'")
        machine_type = _last(body.get("machineType", ""))
        nics = body.get("networkInterfaces") or [{}]
        ip = next(self._ips)
        inst = dict(body)
        inst.update(
            kind="compute#instance",
            id=str(next(self._ids)),
            creationTimestamp=_now(),
            status="PROVISIONING",
            zone=self._zone_url(zone),
            machineType=f"{self._zone_url(zone)}/machineTypes/{machine_type}",
            selfLink=f"{self._zone_url(zone)}/instances/{name}",
            labels=dict(labels),
            labelFingerprint=_fingerprint(labels),
            metadata={
                "kind": "compute#metadata",
                "items": items,
                "fingerprint": _fingerprint(items),
            },
            networkInterfaces=[
                {
                    **nics[0],
                    "name": "nic0",
                    "network": nics[0].get("network")
                    or f"{self.url}/compute/v1/projects/{self.project}/global/networks/default",
                    "networkIP": f"10.128.{ip // 250}.{ip % 250}",
                }
            ],
        )
        for ac in inst["networkInterfaces"][0].get("accessConfigs", []):
            ac["natIP"] = f"203.0.113.{ip % 250}"
        self.instances[(zone, name)] = inst
        failures = self._op_errors.get(zone)
        failure = failures.pop(0) if failures else None
        if failure is None and zone in self.exhausted_zones:
            failure = _OperationError(
                "ZONE_RESOURCE_POOL_EXHAUSTED",
                f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                "resources available to fulfill the request.  Try a different zone, or try "
                "again later.",
                503,
                [_HELP_DETAIL],
            )

        def done() -> dict[str, Any] | None:
            if failure is not None:
                self.instances.pop((zone, name), None)
                return _failed(failure)
            if (zone, name) in self.instances:
                self.instances[(zone, name)]["status"] = "RUNNING"
            return None

        return self._new_operation(zone, "insert", name, request_id, done)

    async def _list(self, request: web.Request, body: Any) -> dict[str, Any]:
        zone = request.match_info["zone"]
        wanted = _parse_filter(request.query.get("filter", ""))
        size = int(request.query.get("maxResults", self.default_page_size))
        if not 0 < size <= 500:
            raise _APIError(400, "invalid", "Invalid value for field 'maxResults'")
        matching = [
            inst
            for (izone, _name), inst in sorted(self.instances.items())
            if izone == zone and all(inst["labels"].get(k) == v for k, v in wanted.items())
        ]
        start = int(request.query.get("pageToken") or 0)
        page = matching[start : start + size]
        result: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{self.project}/zones/{zone}/instances",
            "items": page,
            "selfLink": f"{self._zone_url(zone)}/instances",
        }
        if start + size < len(matching):
            result["nextPageToken"] = str(start + size)
        return result

    async def _get(self, request: web.Request, body: Any) -> dict[str, Any]:
        return self._instance(request)[2]

    async def _delete(self, request: web.Request, body: Any) -> dict[str, Any]:
        request_id = request.query.get("requestId")
        if request_id is not None and request_id in self._request_ids:
            return self._new_operation("", "delete", "", request_id, lambda: None)
        zone, name, inst = self._instance(request)
        inst["status"] = "STOPPING"

        def done() -> dict[str, Any] | None:
            self.instances.pop((zone, name), None)
            self.guest_attributes.pop(name, None)
            return None

        return self._new_operation(zone, "delete", name, request_id, done)

    async def _set_labels(self, request: web.Request, body: Any) -> dict[str, Any]:
        zone, name, inst = self._instance(request)
        if body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise _APIError(412, "conditionNotMet", "Labels fingerprint either invalid or stale")
        labels = body.get("labels", {})
        if len(labels) > 64 or not all(
            _LABEL_KEY.match(k) and _LABEL_VALUE.match(v) for k, v in labels.items()
        ):
            raise _APIError(400, "invalid", "Invalid value for field 'labels'")

        def done() -> dict[str, Any] | None:
            inst.update(labels=dict(labels), labelFingerprint=_fingerprint(labels))
            return None

        return self._new_operation(zone, "setLabels", name, request.query.get("requestId"), done)

    async def _set_metadata(self, request: web.Request, body: Any) -> dict[str, Any]:
        zone, name, inst = self._instance(request)
        if body.get("fingerprint") != inst["metadata"]["fingerprint"]:
            raise _APIError(412, "conditionNotMet", "Metadata fingerprint either invalid or stale")
        items = body.get("items", [])
        if not all(_METADATA_KEY.match(i.get("key", "")) for i in items):
            raise _APIError(400, "invalid", "Invalid value for field 'metadata'")

        def done() -> dict[str, Any] | None:
            inst["metadata"] = {
                "kind": "compute#metadata",
                "items": items,
                "fingerprint": _fingerprint(items),
            }
            return None

        return self._new_operation(zone, "setMetadata", name, request.query.get("requestId"), done)

    async def _guest_attributes(self, request: web.Request, body: Any) -> dict[str, Any]:
        zone, name, _inst = self._instance(request)
        query_path = request.query.get("queryPath", "")
        namespace = query_path.rstrip("/")
        items = [a for a in self.guest_attributes.get(name, []) if a["namespace"] == namespace]
        if not items:
            raise _APIError(
                404,
                "notFound",
                f"The resource 'projects/{self.project}/zones/{zone}/instances/{name}/"
                f"guestAttributes/{query_path}' was not found",
            )
        return {
            "kind": "compute#guestAttributes",
            "queryPath": query_path,
            "queryValue": {"items": items},
            "selfLink": f"{self._zone_url(zone)}/instances/{name}/getGuestAttributes",
        }

    # -- operations ----------------------------------------------------------

    async def _op_get(self, request: web.Request, body: Any) -> dict[str, Any]:
        op = self._operation(request)
        self._advance(op)
        return op.resource

    async def _op_wait(self, request: web.Request, body: Any) -> dict[str, Any]:
        op = self._operation(request)
        await asyncio.sleep(0)
        await op.until_ready(self.wait_limit)
        self._advance(op)
        return op.resource


# The troubleshooting link GCE puts in the errorDetails of resource errors.
_HELP_DETAIL = {
    "help": {
        "links": [
            {
                "description": "Troubleshooting documentation",
                "url": "https://cloud.google.com/compute/docs/resource-error",
            }
        ]
    }
}
_HTTP_REASONS = {400: "BAD REQUEST", 403: "FORBIDDEN", 409: "CONFLICT", 503: "SERVICE UNAVAILABLE"}


def _failed(failure: _OperationError) -> dict[str, Any]:
    """The ``error`` and ``httpError*`` fields of an operation that failed."""
    error: dict[str, Any] = {"code": failure.code, "message": failure.message}
    if failure.details:
        error["errorDetails"] = failure.details
    return {
        "error": {"errors": [error]},
        "http": {
            "httpErrorStatusCode": failure.http_status,
            "httpErrorMessage": _HTTP_REASONS.get(failure.http_status, "ERROR"),
        },
    }


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _parse_filter(text: str) -> dict[str, str]:
    """The labels a filter of ANDed ``(labels.KEY = "VALUE")`` terms asks for."""
    if not text.strip():
        return {}
    wanted = {}
    for term in text.split(" AND "):
        match = _FILTER_TERM.match(term.strip())
        if match is None:
            raise _APIError(400, "invalid", f"Invalid list filter expression '{text}'")
        wanted[match.group(1)] = match.group(2)
    return wanted


class GCEMetadataService:
    """GCE's instance metadata server protocol as an HTTP handler for
    :class:`cloudvm.testing.SSHTestServer`, serving one instance's custom
    metadata (``/computeMetadata/v1/instance/attributes/<key>``) read live
    from a :class:`FakeCompute`. Like the real one it refuses requests
    without ``Metadata-Flavor: Google`` and answers with that header."""

    _PREFIX = "/computeMetadata/v1/instance/attributes/"

    def __init__(self, fake: FakeCompute, instance_name: str) -> None:
        self._fake = fake
        self._name = instance_name
        #: Every request path received.
        self.paths: list[str] = []

    def __call__(self, request: HTTPRequest) -> HTTPResponse:
        self.paths.append(request.path)
        flavor = {"metadata-flavor": "Google"}
        if request.headers.get("metadata-flavor") != "Google":
            return HTTPResponse(403, b"Missing Metadata-Flavor:Google header.\n", flavor)
        if request.method != "GET" or not request.path.startswith(self._PREFIX):
            return HTTPResponse(404, b"Not found\n", flavor)
        value = self._fake.secret_of(self._name, request.path[len(self._PREFIX) :])
        if value is None:
            return HTTPResponse(404, b"Not found\n", flavor)
        return HTTPResponse(200, value.encode(), flavor, content_type="application/text")
