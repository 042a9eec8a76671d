"""Making EC2 calls: the client's narrow face, one place where each call is
counted and its error translated, pagination, and what an error says about
whether the call was applied."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from cloudvm import CloudError
from cloudvm.driverkit import CallMetrics

from ._errors import Backoff, CallKind, EC2APIError, classify

__all__ = [
    "GONE_CODES",
    "LOST_RESPONSE_PAUSE",
    "EC2Calls",
    "EC2Client",
    "Response",
    "answered",
    "error_detail",
    "is_lost_response",
]

#: A parsed EC2 response.
Response = dict[str, Any]
#: Codes saying that the instance is gone for good.
GONE_CODES = frozenset({"InvalidInstanceID.NotFound"})
#: Seconds before repeating a call that got no answer.
LOST_RESPONSE_PAUSE = 0.5


class EC2Client(Protocol):
    """The calls the driver makes: the narrow face of an aiobotocore EC2
    client, so that tests can hand in a stub (each takes the API's keyword
    arguments and returns its parsed response)."""

    def describe_key_pairs(self, **kwargs: Any) -> Awaitable[Response]: ...
    def import_key_pair(self, **kwargs: Any) -> Awaitable[Response]: ...
    def run_instances(self, **kwargs: Any) -> Awaitable[Response]: ...
    def describe_instances(self, **kwargs: Any) -> Awaitable[Response]: ...
    def describe_spot_price_history(self, **kwargs: Any) -> Awaitable[Response]: ...
    def describe_tags(self, **kwargs: Any) -> Awaitable[Response]: ...
    def create_tags(self, **kwargs: Any) -> Awaitable[Response]: ...
    def delete_tags(self, **kwargs: Any) -> Awaitable[Response]: ...
    def terminate_instances(self, **kwargs: Any) -> Awaitable[Response]: ...


class EC2Calls:
    """One InstanceSet's way of calling EC2: its client, its call metrics,
    and per kind of call (create, list, other) the throttling backoff that
    EC2's missing Retry-After makes necessary."""

    def __init__(self, client: EC2Client, metrics: CallMetrics) -> None:
        #: The client every call goes through.
        self.client = client
        self._metrics = metrics
        self._backoffs = {kind: Backoff() for kind in CallKind}

    async def call(
        self,
        operation: str,
        kind: CallKind,
        method: Callable[..., Awaitable[Response]],
        **params: Any,
    ) -> Response:
        """Make one API call, counted in the metrics under ``operation``, with
        EC2's errors translated once, here (chained to the botocore error):
        RateLimitError, QuotaError, CapacityError or EC2APIError (``code``
        None when no answer arrived)."""
        backoff = self._backoffs[kind]
        with self._metrics.observe(operation):
            try:
                response = await method(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                meta = exc.response.get("ResponseMetadata", {})
                raise classify(
                    code=str(error.get("Code") or "Unknown"),
                    message=str(error.get("Message") or ""),
                    operation=operation,
                    request_id=meta.get("RequestId") or None,
                    status=meta.get("HTTPStatusCode"),
                    backoff=backoff,
                ) from exc
            except (BotoCoreError, OSError) as exc:
                backoff.reset()
                raise EC2APIError(
                    f"EC2 {operation}: no answer from the endpoint: {exc}",
                    code=None,
                    operation=operation,
                ) from exc
        backoff.reset()
        return response

    async def pages(
        self,
        operation: str,
        kind: CallKind,
        method: Callable[..., Awaitable[Response]],
        **params: Any,
    ) -> AsyncIterator[Response]:
        """Every page of a paginated call, each made as :meth:`call` does. A
        missing or empty NextToken ends it: some endpoints send
        ``<nextToken/>`` on the last page."""
        while True:
            page = await self.call(operation, kind, method, **params)
            yield page
            token = page.get("NextToken")
            if not token:
                return
            params["NextToken"] = token


def answered(exc: CloudError) -> bool:
    """False when the call got no answer (it may have been applied or not)."""
    return not (isinstance(exc, EC2APIError) and exc.code is None)


def is_lost_response(exc: EC2APIError) -> bool:
    """True when the request may have reached EC2 but its answer did not
    reach us (a repeat with the same ClientToken is then safe)."""
    return isinstance(exc.__cause__, (HTTPClientError, BotoConnectionError, OSError))


def error_detail(exc: CloudError) -> tuple[str, str]:
    """EC2's own code and message behind a translated error."""
    cause = exc.__cause__
    if isinstance(cause, ClientError):
        error = cause.response.get("Error", {})
        return str(error.get("Code", "")), str(error.get("Message", ""))
    return exc.code or "", exc.message
