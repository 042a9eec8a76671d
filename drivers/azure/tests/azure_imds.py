"""Azure's Instance Metadata Service as an HTTP handler for SSHTestServer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from cloudvm.testing import HTTPRequest, HTTPResponse

__all__ = ["AzureIMDS"]


def _error(status: int, message: str) -> HTTPResponse:
    return HTTPResponse(
        status, json.dumps({"error": message}).encode(), content_type="application/json"
    )


class AzureIMDS:
    """Answers ``GET /metadata/instance?api-version=...`` like Azure IMDS for
    one VM, whose ARM JSON ``vm()`` returns (read on every request, so tag
    changes show at once). Requests without ``Metadata: true`` are refused
    with 400, as Azure does, and so are those without an api-version."""

    def __init__(self, vm: Callable[[], dict[str, Any] | None]) -> None:
        self._vm = vm
        self.requests: list[HTTPRequest] = []

    def __call__(self, request: HTTPRequest) -> HTTPResponse:
        self.requests.append(request)
        if request.headers.get("metadata", "").lower() != "true":
            return _error(400, "Bad request. Required metadata header not specified")
        if request.method != "GET":
            return _error(405, "Method not allowed")
        if not parse_qs(request.query).get("api-version"):
            return _error(400, "Bad request. api-version was not specified in the request")
        if request.path.rstrip("/") != "/metadata/instance":
            return _error(404, "Not found")
        vm = self._vm()
        if vm is None:
            return _error(404, "Not found")
        tags = vm.get("tags") or {}
        props = vm.get("properties") or {}
        document = {
            "compute": {
                "name": vm["name"],
                "location": vm.get("location", ""),
                "vmId": props.get("vmId", ""),
                "vmSize": (props.get("hardwareProfile") or {}).get("vmSize", ""),
                "tags": ";".join(f"{k}:{v}" for k, v in tags.items()),
                "tagsList": [{"name": k, "value": v} for k, v in tags.items()],
            },
            "network": {"interface": []},
        }
        return HTTPResponse(200, json.dumps(document).encode(), content_type="application/json")
