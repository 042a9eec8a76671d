"""Operations are waited for without holding a worker thread, and client
sets outlive the worker threads that use them.

The local Compute API holds every operation RUNNING (``hold_operations``):
creates wait for their operations as long as the test likes, and whatever
needs a worker thread meanwhile (a listing) must still get one. Nothing
here measures time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading

import anyio
import pytest
from cloudvm_gce import DRIVER
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE, gce_config

import cloudvm
from cloudvm import InitCommand, InstanceSetID

CREATES = 50
CALLS = 4  # max_concurrent_calls: far fewer threads than waiting creates


async def test_a_listing_completes_while_fifty_creates_wait_for_their_operations(
    fake_gce: FakeCompute,
) -> None:
    # One worker thread for everything: 50 creates waiting and a listing.
    config = gce_config(fake_gce, max_concurrent_calls=1)
    iset = await DRIVER.instance_set(config, InstanceSetID("busy"), {}, logging.getLogger("t"))
    async with iset:
        api = iset._api  # type: ignore[attr-defined]
        release = fake_gce.hold_operations()
        created: list[cloudvm.Instance] = []

        async def create_one(n: int) -> None:
            created.append(await iset.create(ITYPE, IMAGE, {"n": str(n)}, InitCommand(""), None))

        try:
            async with anyio.create_task_group() as tg:
                for n in range(CREATES):
                    tg.start_soon(create_one, n)
                with anyio.fail_after(60):
                    await fake_gce.wait_for_calls("insert", CREATES)
                    # Every create is now waiting for its operation, polling it.
                    await fake_gce.wait_for_calls("operations.get", CREATES)
                    listed = await iset.instances()
                assert not release.is_set() and created == []
                assert {i.tags["n"] for i in listed} == {str(n) for n in range(CREATES)}
                # No call holds a thread while its operation runs: the waits
                # use short polls, never zoneOperations.wait.
                assert fake_gce.calls("wait") == []
                release.set()
        finally:
            release.set()
        assert len(created) == CREATES
        assert api.clients_made == 1
        async with anyio.create_task_group() as tg:
            for inst in created:
                tg.start_soon(inst.destroy)
    assert fake_gce.instances == {}


async def test_a_create_cancelled_during_its_operation_leaves_at_once_and_tagged(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    release = fake_gce.hold_operations()
    try:
        task = asyncio.ensure_future(
            gce_set.create(ITYPE, IMAGE, {"c": "1"}, InitCommand(""), None)
        )
        with anyio.fail_after(30):
            await fake_gce.wait_for_calls("operations.get")
            task.cancel()
            # It returns while its operation is still held: no call waits for it.
            with pytest.raises(asyncio.CancelledError):
                await task
        assert not release.is_set()
        assert gce_set._api.calls_in_flight == 0  # type: ignore[attr-defined]
        (found,) = await gce_set.instances({"c": "1"})  # tagged at insert
    finally:
        release.set()
    await found.destroy()


async def test_client_sets_outlive_retired_worker_threads(
    fake_gce: FakeCompute, monkeypatch: pytest.MonkeyPatch
) -> None:
    # anyio retires a worker thread idle for WorkerThread.MAX_IDLE_TIME (10 s)
    # when another call takes a thread; at 0 every wave of calls below finds
    # the threads of the previous wave retired, as calls spread over minutes
    # would.
    from anyio._backends import _asyncio as anyio_asyncio

    monkeypatch.setattr(anyio_asyncio.WorkerThread, "MAX_IDLE_TIME", 0)
    config = gce_config(fake_gce, max_concurrent_calls=CALLS)
    iset = await DRIVER.instance_set(config, InstanceSetID("waves"), {}, logging.getLogger("t"))
    lock = threading.Lock()
    in_use: set[int] = set()
    threads = itertools.count()  # a serial per thread: idents are reused
    per_thread = threading.local()
    shared: list[int] = []

    def one_call(clients: object) -> None:
        if not hasattr(per_thread, "serial"):
            per_thread.serial = next(threads)
        with lock:
            if id(clients) in in_use:
                shared.append(id(clients))
            in_use.add(id(clients))
        try:
            threading.Event().wait(0.005)  # overlap with the wave's other calls
        finally:
            with lock:
                in_use.discard(id(clients))

    async with iset:
        api = iset._api  # type: ignore[attr-defined]
        for _wave in range(12):
            async with anyio.create_task_group() as tg:
                for _ in range(2 * CALLS):
                    tg.start_soon(api.call, "test call", one_call)
            await iset.instances()  # and the driver's own calls
    assert shared == [], "a client set was used by two calls at once"
    assert next(threads) > 2 * CALLS, "the worker threads did not turn over"
    assert api.clients_made <= CALLS


async def test_a_throttled_operation_poll_is_asked_again_not_a_failed_create(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    fake_gce.op_steps = 2  # two polls: the first is refused
    fake_gce.fail(
        "operations.get",
        403,
        "rateLimitExceeded",
        "Quota exceeded for quota metric 'Read requests'",
        domain="usageLimits",
        headers={"Retry-After": "1"},
    )
    inst = await gce_set.create(ITYPE, IMAGE, {}, InitCommand(""), None)
    assert len(fake_gce.calls("operations.get")) == 3
    assert fake_gce.instances[("us-central1-a", inst.id)]["status"] == "RUNNING"
    fake_gce.op_steps = 1
    await inst.destroy()
