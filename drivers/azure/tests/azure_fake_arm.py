"""A faithful local Azure Resource Manager API for the driver's tests.

It serves HTTPS (a self-signed certificate made at start with
``cryptography``; plain HTTP with ``tls=False``) and speaks ARM's wire
format for the three resource types the driver uses, modelled on the public
REST reference:

- ``Microsoft.Compute/virtualMachines``, ``Microsoft.Network/networkInterfaces``
  and ``Microsoft.Compute/disks``: PUT, GET, PATCH (tags), DELETE, and list by
  resource group with ``nextLink`` paging (``$skiptoken``).
- Long-running operations: PUT, PATCH and DELETE answer 201/200/202 with an
  ``Azure-AsyncOperation`` header (and ``Location`` for DELETE) plus
  ``Retry-After``; the operation's status URL says ``InProgress`` for
  ``lro_polls`` polls, then ``Succeeded`` or ``Failed`` with an ARM error.
- A VM's PUT creates its OS and data disks (untagged, as Azure does), attaches
  its NICs; deleting the VM detaches them and deletes those whose
  ``deleteOption`` is ``Delete``. A NIC in use cannot be deleted (400
  ``NicInUse``), nor an attached disk (409 ``OperationNotAllowed``).
- Errors are ARM's JSON, ``{"error": {"code": ..., "message": ...}}``.
- Entra ID's token endpoint (``POST /{tenant}/oauth2/v2.0/token``, the
  client-credentials grant) for the service principals in
  :attr:`FakeARM.clients`; once it has issued a token, ARM accepts no other.

Knobs, not scripts: :meth:`FakeARM.inject` answers matching requests with an
error (any status, code, headers: 429 with or without ``Retry-After``, quota,
capacity); :meth:`FakeARM.fail_operation` makes the next matching LRO end in
``Failed``; :meth:`FakeARM.hold` stalls matching requests until released (for
cancellation tests). Every request is recorded in :attr:`FakeARM.requests`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hmac
import ipaddress
import json
import re
import secrets
import ssl
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["FakeARM", "Fault", "Hold", "RecordedRequest"]

_TYPES = {
    "microsoft.compute/virtualmachines": "Microsoft.Compute/virtualMachines",
    "microsoft.network/networkinterfaces": "Microsoft.Network/networkInterfaces",
    "microsoft.compute/disks": "Microsoft.Compute/disks",
}
VM = "Microsoft.Compute/virtualMachines"
NIC = "Microsoft.Network/networkInterfaces"
DISK = "Microsoft.Compute/disks"

_ITEM = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"(?P<ns>[^/]+)/(?P<type>[^/]+)(?:/(?P<name>[^/]+))?$",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token$")
_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/(?P<ns>[^/]+)/locations/(?P<loc>[^/]+)/"
    r"(?P<kind>operations|operationResults)/(?P<op>[^/]+)$",
    re.IGNORECASE,
)


@dataclasses.dataclass
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclasses.dataclass
class Fault:
    """An injected error answer for requests matching ``method`` and ``path``
    (a regular expression searched in the path)."""

    method: str
    path: str
    status: int
    code: str | None
    message: str
    headers: dict[str, str]
    times: int


@dataclasses.dataclass
class Hold:
    """Stalls matching requests until :meth:`release`; ``reached`` is set when
    one arrives."""

    method: str
    path: str
    skip: int = 0
    reached: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    released: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@dataclasses.dataclass
class _Operation:
    polls_left: int
    on_done: Any  # a callable run once when the operation ends
    error: tuple[str, str] | None = None
    done: bool = False


def _connection_tasks() -> list[asyncio.Task[Any]]:
    """The tasks in which aiohttp serves a connection (one per connection)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and getattr(task.get_coro(), "__qualname__", "") == "RequestHandler.start"
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _arm_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _self_signed(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-arm.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


class FakeARM:
    """The fake ARM server; ``async with FakeARM() as arm:`` then use
    :attr:`base_url`. Resources are keyed by lower-case resource id."""

    def __init__(
        self,
        *,
        page_size: int = 50,
        lro_polls: int = 1,
        lro_retry_after: int = 0,
        tls: bool = True,
    ):
        self.tls = tls
        self.page_size = page_size
        self.lro_polls = lro_polls
        self.lro_retry_after = lro_retry_after
        self.resources: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self._failures: list[tuple[str, str, str, str]] = []  # (method, path, code, message)
        self._operations: dict[str, _Operation] = {}
        self._runner: web.AppRunner | None = None
        self._next_ip = 4
        #: Service principals the token endpoint knows: (tenant, client id) -> secret.
        self.clients: dict[tuple[str, str], str] = {}
        #: Access tokens it issued; once there is one, ARM accepts only those.
        self.tokens: list[str] = []
        #: Requests being handled right now (a held one counts).
        self.in_flight = 0
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeARM:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.tls:
            with tempfile.TemporaryDirectory() as tmp:
                context = _self_signed(Path(tmp))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for hold in self.holds:
            hold.release()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- knobs --------------------------------------------------------------

    def inject(
        self,
        method: str,
        path: str,
        status: int,
        code: str | None = None,
        message: str = "injected error",
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> Fault:
        """Answer the next ``times`` requests matching with this error."""
        fault = Fault(method.upper(), path, status, code, message, headers or {}, times)
        self.faults.append(fault)
        return fault

    def fail_operation(self, method: str, path: str, code: str, message: str) -> None:
        """Make the next LRO started by a matching request end ``Failed``."""
        self._failures.append((method.upper(), path, code, message))

    def clear_faults(self) -> None:
        """Forget every injected error and pending operation failure."""
        self.faults.clear()
        self._failures.clear()

    def hold(self, method: str, path: str, *, skip: int = 0) -> Hold:
        """Stall matching requests, after the first ``skip`` of them, until
        the returned Hold is released."""
        hold = Hold(method.upper(), path, skip)
        self.holds.append(hold)
        return hold

    def add(
        self, subscription: str, group: str, rtype: str, name: str, body: dict[str, Any]
    ) -> str:
        """Store a resource directly (for resources 'made by someone else')."""
        rid = f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{rtype}/{name}"
        resource = {"id": rid, "name": name, "type": rtype, **body}
        resource.setdefault("properties", {}).setdefault("provisioningState", "Succeeded")
        self.resources[rid.lower()] = resource
        return rid

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.resources.values() if r["type"] == rtype]

    def get(self, rtype: str, name: str) -> dict[str, Any] | None:
        for resource in self.of_type(rtype):
            if resource["name"] == name:
                return resource
        return None

    def calls(self, method: str, pattern: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path, re.I)]

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until the server handles no request and serves no connection.

        Call it after every client has closed its connections: a request that
        a cancelled client had already sent is then either answered or
        dropped, never still to come. (aiohttp may still handle one request
        it read just before the connection was lost, in the connection's own
        task: so wait for those tasks, not only for :attr:`in_flight`.)
        """
        with anyio.fail_after(timeout):
            while self.in_flight or _connection_tasks():  # noqa: ASYNC110 - server state
                await anyio.sleep(0.005)

    # -- the server ---------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if request.method == "POST" and (match := _TOKEN.match(request.path)):
            return self._token(match.group("tenant"), raw)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _arm_error(400, "InvalidRequestContent", "The request content is not JSON.")
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                {k.lower(): v for k, v in request.headers.items()},
                body,
            )
        )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            return _arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                **{"WWW-Authenticate": 'Bearer authorization_uri="https://login"'},
            )
        if self.tokens and auth.removeprefix("Bearer ") not in self.tokens:
            return _arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if "api-version" not in request.query:
            return _arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        for hold in self.holds:
            if hold.method == request.method and re.search(hold.path, request.path, re.I):
                if hold.skip > 0:
                    hold.skip -= 1
                    continue
                hold.reached.set()
                await hold.released.wait()
        for fault in self.faults:
            if (
                fault.times > 0
                and fault.method == request.method
                and re.search(fault.path, request.path, re.I)
            ):
                fault.times -= 1
                if fault.code is None:
                    return web.Response(status=fault.status, headers=fault.headers)
                return _arm_error(fault.status, fault.code, fault.message, **fault.headers)
        if match := _OPERATION.match(request.path):
            return self._operation(match.group("kind").lower(), match.group("op"))
        match = _ITEM.match(request.path)
        if match is None:
            return _arm_error(404, "NotFound", f"No route for {request.path}.")
        rtype = _TYPES.get(f"{match.group('ns')}/{match.group('type')}".lower())
        if rtype is None:
            return _arm_error(
                400, "InvalidResourceType", f"The resource type '{match.group('type')}' is unknown."
            )
        prefix = f"/subscriptions/{match.group('sub')}/resourceGroups/{match.group('rg')}"
        name = match.group("name")
        if name is None:
            if request.method != "GET":
                return _arm_error(405, "MethodNotAllowed", "Only GET lists resources.")
            return self._list(request, prefix, rtype)
        rid = f"{prefix}/providers/{rtype}/{name}"
        if request.method == "GET":
            resource = self.resources.get(rid.lower())
            if resource is None:
                return _arm_error(
                    404, "ResourceNotFound", f"The Resource '{rtype}/{name}' was not found."
                )
            return web.json_response(resource)
        if request.method == "PUT":
            return self._put(request, rid, rtype, name, body)
        if request.method == "PATCH":
            return self._patch(request, rid, body)
        if request.method == "DELETE":
            return self._delete(request, rid, rtype)
        return _arm_error(405, "MethodNotAllowed", f"{request.method} is not supported.")

    def _token(self, tenant: str, raw: bytes) -> web.Response:
        """Entra ID's token endpoint, for the client-credentials grant."""
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        key = (tenant, form.get("client_id", ""))
        if form.get("grant_type") != "client_credentials" or key not in self.clients:
            return web.json_response(
                {"error": "unauthorized_client", "error_description": "AADSTS700016: unknown."},
                status=400,
            )
        if not hmac.compare_digest(form.get("client_secret", ""), self.clients[key]):
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                },
                status=401,
            )
        token = secrets.token_urlsafe(32)
        self.tokens.append(token)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }
        )

    def _list(self, request: web.Request, prefix: str, rtype: str) -> web.Response:
        scope = f"{prefix}/providers/{rtype}/".lower()
        items = sorted(
            (r for rid, r in self.resources.items() if rid.startswith(scope)),
            key=lambda r: str(r["name"]),
        )
        start = int(request.query.get("$skiptoken", "0"))
        page = items[start : start + self.page_size]
        answer: dict[str, Any] = {"value": page}
        if start + self.page_size < len(items):
            query = {"api-version": request.query["api-version"], "$skiptoken": start + len(page)}
            answer["nextLink"] = f"{self.base_url}{request.path}?{urlencode(query)}"
        return web.json_response(answer)

    def _lro(
        self,
        request: web.Request,
        location: str,
        namespace: str,
        on_done: Any,
        *,
        status: int,
        body: Any,
        with_location: bool = False,
    ) -> web.Response:
        op_id = str(uuid.uuid4())
        error = None
        for failure in self._failures:
            if failure[0] == request.method and re.search(failure[1], request.path, re.I):
                self._failures.remove(failure)
                error = (failure[2], failure[3])
                break
        self._operations[op_id] = _Operation(self.lro_polls, on_done, error)
        sub = request.path.split("/")[2]
        base = f"{self.base_url}/subscriptions/{sub}/providers/{namespace}/locations/{location}"
        version = request.query["api-version"]
        headers = {
            "Azure-AsyncOperation": f"{base}/operations/{op_id}?api-version={version}",
            "Retry-After": str(self.lro_retry_after),
        }
        if with_location:
            headers["Location"] = f"{base}/operationResults/{op_id}?api-version={version}"
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _operation(self, kind: str, op_id: str) -> web.Response:
        operation = self._operations.get(op_id)
        if operation is None:
            return _arm_error(404, "OperationNotFound", f"Operation {op_id} was not found.")
        if not operation.done:
            operation.polls_left -= 1
            if operation.polls_left < 0:
                operation.done = True
                operation.on_done(operation.error)
        if kind == "operationresults":
            return web.Response(status=204 if operation.done else 202)
        answer: dict[str, Any] = {"name": op_id, "startTime": _now()}
        if not operation.done:
            answer["status"] = "InProgress"
        elif operation.error is None:
            answer["status"] = "Succeeded"
        else:
            answer["status"] = "Failed"
            answer["error"] = {"code": operation.error[0], "message": operation.error[1]}
        return web.json_response(answer)

    def _put(
        self, request: web.Request, rid: str, rtype: str, name: str, body: Any
    ) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("location"), str):
            return _arm_error(400, "LocationRequired", "The location property is required.")
        existing = self.resources.get(rid.lower())
        props = body.get("properties")
        if not isinstance(props, dict):
            return _arm_error(400, "InvalidRequestContent", "The properties object is required.")
        if existing is not None:
            # A repeated PUT with the same name updates: keep server-set fields.
            resource = {**existing, **body, "properties": {**existing["properties"], **props}}
            self.resources[rid.lower()] = resource
            return web.json_response(resource, status=200)
        if rtype == NIC:
            problem = self._prepare_nic(props)
        elif rtype == VM:
            problem = self._prepare_vm(rid, name, body)
        else:
            problem = None
            props.setdefault("diskState", "Unattached")
            props["timeCreated"] = _now()
        if problem is not None:
            return problem
        resource = {"id": rid, "name": name, "type": rtype, **body}
        resource["properties"]["provisioningState"] = "Creating" if rtype == VM else "Updating"
        self.resources[rid.lower()] = resource

        def done(error: tuple[str, str] | None) -> None:
            current = self.resources.get(rid.lower())
            if current is not None:
                state = "Failed" if error else "Succeeded"
                current["properties"]["provisioningState"] = state

        namespace = rtype.split("/")[0]
        return self._lro(request, body["location"], namespace, done, status=201, body=resource)

    def _prepare_nic(self, props: dict[str, Any]) -> web.Response | None:
        configs = props.get("ipConfigurations")
        if not isinstance(configs, list) or not configs:
            return _arm_error(
                400, "InvalidRequestFormat", "A network interface needs an ipConfiguration."
            )
        for config in configs:
            subnet = (config.get("properties") or {}).get("subnet") or {}
            if not str(subnet.get("id", "")).lower().startswith("/subscriptions/"):
                return _arm_error(400, "InvalidRequestFormat", "The subnet id is invalid.")
            config["properties"]["privateIPAddress"] = (
                f"10.0.{self._next_ip // 250}.{self._next_ip % 250}"
            )
            config["properties"]["privateIPAllocationMethod"] = "Dynamic"
            self._next_ip += 1
        props["macAddress"] = None
        props["virtualMachine"] = None
        return None

    def _prepare_vm(self, rid: str, name: str, body: dict[str, Any]) -> web.Response | None:
        props = body["properties"]
        try:
            size = props["hardwareProfile"]["vmSize"]
            storage = props["storageProfile"]
            os_profile = props["osProfile"]
            nic_refs = props["networkProfile"]["networkInterfaces"]
        except (KeyError, TypeError):
            return _arm_error(400, "InvalidParameter", "A required VM property is missing.")
        if not isinstance(size, str) or "imageReference" not in storage:
            return _arm_error(400, "InvalidParameter", "vmSize and imageReference are required.")
        if not os_profile.get("adminUsername") or not os_profile.get("computerName"):
            return _arm_error(
                400, "InvalidParameter", "adminUsername and computerName are required."
            )
        nics = []
        for ref in nic_refs:
            nic = self.resources.get(str(ref.get("id", "")).lower())
            if nic is None:
                return _arm_error(
                    400, "InvalidResourceReference", "A referenced network interface was not found."
                )
            if nic["properties"].get("virtualMachine"):
                return _arm_error(400, "NicInUse", f"Network interface {nic['name']} is in use.")
            nics.append(nic)
        for nic in nics:
            nic["properties"]["virtualMachine"] = {"id": rid}
        prefix = rid.split("/providers/")[0]
        disks = [storage.setdefault("osDisk", {})]
        disks[0].setdefault("name", f"{name}_OsDisk_1_{uuid.uuid4().hex}")
        disks.extend(storage.get("dataDisks") or [])
        for disk in disks:
            disk_id = f"{prefix}/providers/{DISK}/{disk['name']}"
            self.resources[disk_id.lower()] = {
                "id": disk_id,
                "name": disk["name"],
                "type": DISK,
                "location": body["location"],
                "managedBy": rid,
                "properties": {
                    "diskState": "Attached",
                    "diskSizeGB": disk.get("diskSizeGB", 30),
                    "timeCreated": _now(),
                    "provisioningState": "Succeeded",
                },
            }
            disk.setdefault("managedDisk", {})["id"] = disk_id
        props["vmId"] = str(uuid.uuid4())
        props["timeCreated"] = _now()
        return None

    def _patch(self, request: web.Request, rid: str, body: Any) -> web.Response:
        resource = self.resources.get(rid.lower())
        if resource is None:
            return _arm_error(404, "ResourceNotFound", "The resource was not found.")
        if not isinstance(body, dict):
            return _arm_error(400, "InvalidRequestContent", "The body must be a JSON object.")
        if "tags" in body:
            resource["tags"] = dict(body["tags"] or {})
        namespace = resource["type"].split("/")[0]
        return self._lro(
            request, resource["location"], namespace, lambda error: None, status=200, body=resource
        )

    def _delete(self, request: web.Request, rid: str, rtype: str) -> web.Response:
        resource = self.resources.get(rid.lower())
        if resource is None:
            return web.Response(status=204)
        props = resource["properties"]
        if rtype == NIC and props.get("virtualMachine"):
            return _arm_error(
                400,
                "NicInUse",
                f"Network Interface {rid} is used by existing resource "
                f"{props['virtualMachine']['id']}. In order to delete the network interface, "
                "it must be dissociated from the resource.",
            )
        if rtype == DISK and resource.get("managedBy"):
            return _arm_error(
                409,
                "OperationNotAllowed",
                f"Disk {resource['name']} is attached to VM {resource['managedBy']}.",
            )
        if rtype == VM:
            props["provisioningState"] = "Deleting"

        def done(error: tuple[str, str] | None) -> None:
            if error is not None:
                return
            gone = self.resources.pop(rid.lower(), None)
            if gone is not None and rtype == VM:
                self._release(gone)

        namespace = rtype.split("/")[0]
        return self._lro(
            request,
            resource["location"],
            namespace,
            done,
            status=202,
            body=None,
            with_location=True,
        )

    def _release(self, vm: dict[str, Any]) -> None:
        """Detach a deleted VM's NICs and disks; delete those marked Delete."""
        props = vm["properties"]
        for ref in props["networkProfile"]["networkInterfaces"]:
            nic = self.resources.get(str(ref["id"]).lower())
            if nic is None:
                continue
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                del self.resources[str(ref["id"]).lower()]
            else:
                nic["properties"]["virtualMachine"] = None
        storage = props["storageProfile"]
        for disk in [storage["osDisk"], *(storage.get("dataDisks") or [])]:
            disk_id = disk["managedDisk"]["id"].lower()
            stored = self.resources.get(disk_id)
            if stored is None:
                continue
            if disk.get("deleteOption") == "Delete":
                del self.resources[disk_id]
            else:
                stored["managedBy"] = None
                stored["properties"]["diskState"] = "Unattached"
