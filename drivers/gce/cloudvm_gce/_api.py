"""The Compute API, called from worker threads, one client set per call.

google-cloud-compute is synchronous and its clients (a ``requests`` session
each) must not be used by two threads at once. Every call here runs in an
anyio worker thread, bounded by a CapacityLimiter, with a client set taken
from a pool for the call's length and given back after: never two calls on
one set at once, and the sets (and their HTTPS connections to the API)
outlive the worker threads, which anyio retires after a few idle seconds.
At most ``max_concurrent_calls`` sets are ever made, as many as calls run
at once. The SDK's own retries are off (``retry=None`` at each call site):
throttling surfaces as RateLimitError at once.

A request on the wire cannot be recalled, and a thread cannot be stopped:
every call runs as a :func:`cloudvm.driverkit.run_critical` section, so a
caller cancelled by any means (``Task.cancel()``, ``asyncio.wait_for``, an
anyio scope) sees its cancellation only once the call's answer is in. What
the call did is then in the cloud for the next listing to see, and no thread
keeps working for a caller that is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import credentials as gcredentials
from google.cloud import compute_v1

from cloudvm import CloudError, ConfigError
from cloudvm.driverkit import run_critical

from ._config import GCEConfig
from ._errors import wrap_api_error
from ._redact import install_redaction

__all__ = ["Clients", "ComputeAPI", "NotFoundError", "TransportError", "load_credentials"]

_T = TypeVar("_T")


class NotFoundError(CloudError):
    """Raised by :meth:`ComputeAPI.call` when the API answers 404."""


class TransportError(CloudError):
    """Raised by :meth:`ComputeAPI.call` when no HTTP answer arrived (the
    connection failed or was cut, or the call timed out): the request may or
    may not have taken effect."""


def load_credentials(config: GCEConfig) -> gcredentials.Credentials:
    """The credentials ``config.credentials`` names. Blocking (reads a file,
    and Application Default Credentials may probe the metadata server).

    Raises ConfigError naming the field, never quoting the file's content.
    """
    import google.auth
    import google.auth.exceptions
    from google.oauth2 import service_account

    scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    if config.credentials == "anonymous":
        return gcredentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        if config.credentials is None:
            found, _project = google.auth.default(scopes=scopes)
            return found
        file_credentials = service_account.Credentials.from_service_account_file
        loaded: gcredentials.Credentials = file_credentials(  # type: ignore[no-untyped-call]
            config.credentials, scopes=scopes
        )
        return loaded
    except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        kind = "Application Default Credentials" if config.credentials is None else "the file"
        raise ConfigError(
            f"invalid gce config: credentials: cannot load {kind} ({type(exc).__name__})"
        ) from None


class Clients:
    """One client set: used by one call at a time."""

    def __init__(self, options: ClientOptions, credentials: gcredentials.Credentials) -> None:
        self.instances = compute_v1.InstancesClient(client_options=options, credentials=credentials)
        self.operations = compute_v1.ZoneOperationsClient(
            client_options=options, credentials=credentials
        )

    def close(self) -> None:
        """Close the clients' HTTP sessions."""
        self.instances.transport.close()  # type: ignore[no-untyped-call]
        self.operations.transport.close()  # type: ignore[no-untyped-call]


class ComputeAPI:
    """Runs Compute API calls in worker threads, each with a client set of
    its own for its length, taken from (and given back to) a pool.

    At most ``config.max_concurrent_calls`` calls run at once, so at most as
    many client sets are made; a cancelled caller, whatever cancelled it,
    waits for its call to finish in the thread (at most the call's own
    timeout), then sees the cancellation.
    """

    def __init__(self, config: GCEConfig, credentials: gcredentials.Credentials) -> None:
        install_redaction()
        self._options = ClientOptions(api_endpoint=config.api_endpoint)
        self._credentials = credentials
        self._limiter = anyio.CapacityLimiter(config.max_concurrent_calls)
        self._lock = threading.Lock()
        self._idle: list[Clients] = []  # the most recently given back last
        self._closed = False
        #: How many client sets were made (each opens its own connections).
        self.clients_made = 0
        #: Calls not yet ended, their thread's work included.
        self.calls_in_flight = 0

    def _take(self) -> Clients:
        with self._lock:
            if self._closed:
                raise RuntimeError("the GCE InstanceSet is stopped")
            if self._idle:
                # The last given back: its connections are the likeliest open.
                return self._idle.pop()
            self.clients_made += 1
        return Clients(self._options, self._credentials)

    def _give_back(self, clients: Clients) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(clients)
                return
        clients.close()

    def _run(self, what: str, fn: Callable[[Clients], _T]) -> _T:
        clients = self._take()
        try:
            return fn(clients)
        except gexc.NotFound as exc:
            raise NotFoundError(f"GCE {what}: not found", code="notFound") from exc
        except gexc.GoogleAPICallError as exc:
            raise wrap_api_error(exc, what) from exc
        except requests.RequestException as exc:
            raise TransportError(
                f"GCE {what}: no answer from the Compute API ({type(exc).__name__})"
            ) from exc
        finally:
            self._give_back(clients)

    async def call(self, what: str, fn: Callable[[Clients], _T]) -> _T:
        """Run ``fn(clients)`` in a worker thread with a client set no other
        call uses meanwhile.

        ``what`` names the call in error messages. Raises NotFoundError for a
        404, TransportError when no answer arrived, and otherwise the cloudvm
        error :func:`wrap_api_error` picks. A cancelled caller returns only
        once the call has ended, then raises its cancellation.
        """

        async def in_thread() -> _T:
            return await anyio.to_thread.run_sync(self._run, what, fn, limiter=self._limiter)

        self.calls_in_flight += 1
        try:
            return await run_critical(in_thread)
        finally:
            self.calls_in_flight -= 1

    def close(self) -> None:
        """Close every client set's HTTP sessions (a set still in use, when
        its call ends). Later calls raise RuntimeError."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for clients in idle:
            clients.close()
