"""Case gce-listing: what the GCE driver adds over the raw google-cloud-compute SDK.

The local Compute API of the driver's tests (drivers/gce/tests/gce_fake_api.py)
runs in a child process, so that the figures are this process's (the
client's) CPU only. Measured:

- listing: ``instances()`` vs the SDK's own ``InstancesClient.list`` pager
  over the same pages (same filter, same page size, every configured zone),
  at 100 and 1000 instances: client CPU per listed instance, interleaved;
  and the memory a listing's result keeps per instance (tracemalloc), next
  to the wire size of the SDK's messages for the same instances;
- concurrency: 50 concurrent creates (started over one second) whose
  operations take 3 s, at the default 16 concurrent calls, and a listing
  issued while they wait:
  seconds until all are created and until the listing is back, next to one
  create alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from _stats import CaseResult, Row, interleaved

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceSet, InstanceSetID, InstanceType

__all__ = ["run"]

NAME = "gce-listing"
PROJECT = "bench-project"
ZONES = ["us-central1-a", "us-central1-b"]
PAGE_SIZE = 500  # the driver's default list page size
IMAGE = ImageID("projects/debian-cloud/global/images/family/debian-12")
ITYPE = InstanceType(
    name="n2-standard-2",
    provider_type="n2-standard-2",
    vcpus=2,
    ram=8 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.097,
)
FAKE_DIR = Path(__file__).resolve().parents[1] / "drivers" / "gce" / "tests"
RAW = "google-cloud-compute list"
_ARRIVALS = 1.0  # seconds over which the concurrent creates start
DRIVER = "cloudvm instances()"


def _set_id(size: int) -> str:
    return f"bench-{size}"


def _config(url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "project": PROJECT,
        "zones": list(ZONES),
        "api_endpoint": url,
        "credentials": "anonymous",
        "admin_username": "bench",
        "operation_timeout": 120.0,
        **overrides,
    }


# -- the local API, in a child process -------------------------------------


async def _serve(sizes: list[int], op_seconds: float) -> None:
    """Child: serve the local API with ``sizes`` sets of instances made by
    the driver's own create (so they look as the driver makes them), print
    the URL, run until stdin closes."""
    sys.path.insert(0, str(FAKE_DIR))
    from gce_fake_api import FakeCompute  # type: ignore[import-not-found]

    fake = await FakeCompute(project=PROJECT).start()
    fake.op_steps = 0
    driver = cloudvm.load_driver("gce")
    for size in sizes:
        iset = await driver.instance_set(
            _config(fake.url, max_concurrent_calls=8),
            InstanceSetID(_set_id(size)),
            {},
            logging.getLogger("bench.gce"),
        )
        limit = anyio.Semaphore(8)
        async with iset, anyio.create_task_group() as tg:

            async def create(
                n: int, iset: InstanceSet = iset, limit: anyio.Semaphore = limit
            ) -> None:
                async with limit:
                    await iset.create(
                        ITYPE, IMAGE, {"role": "worker", "n": str(n)}, InitCommand("true"), None
                    )

            for n in range(size):
                tg.start_soon(create, n)
    fake.op_steps = 1
    fake.op_seconds = op_seconds
    print(json.dumps({"url": fake.url}), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)
    await fake.stop()


@contextlib.contextmanager
def _local_api(sizes: list[int], op_seconds: float = 0.0) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "serve", json.dumps(sizes), str(op_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the local Compute API did not start")
        yield str(json.loads(line)["url"])
    finally:
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the two listings --------------------------------------------------------


def _raw_lister(url: str, size: int) -> Callable[[], list[Any]]:
    """The SDK's own pager over the pages the driver asks for; returns the items."""
    from cloudvm_gce._tags import label_filter
    from google.api_core.client_options import ClientOptions
    from google.auth import credentials as gcredentials
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(
        client_options=ClientOptions(api_endpoint=url),
        credentials=gcredentials.AnonymousCredentials(),  # type: ignore[no-untyped-call]
    )
    flt = label_filter(_set_id(size), {})

    def listing() -> list[Any]:
        items: list[Any] = []
        for zone in ZONES:
            request = compute_v1.ListInstancesRequest(
                project=PROJECT, zone=zone, filter=flt, max_results=PAGE_SIZE
            )
            for page in client.list(request=request, retry=None, timeout=60).pages:
                items.extend(page.items)
        return items

    return listing


@contextlib.asynccontextmanager
async def _driver_set(url: str, size: int, **overrides: Any) -> AsyncIterator[InstanceSet]:
    iset = await cloudvm.load_driver("gce").instance_set(
        _config(url, **overrides),
        InstanceSetID(_set_id(size)),
        {},
        logging.getLogger("bench.gce"),
    )
    async with iset:
        yield iset


def _cpu_per_instance(
    listing: Callable[[], Awaitable[int]], size: int, listings: int
) -> Callable[[], Awaitable[float]]:
    async def probe() -> float:
        start = time.process_time()
        for _ in range(listings):
            found = await listing()
            assert found == size, (found, size)
        return (time.process_time() - start) / (listings * size) * 1e6

    return probe


async def _cpu(url: str, size: int, listings: int, repeats: int) -> dict[str, list[float]]:
    raw = _raw_lister(url, size)
    async with _driver_set(url, size) as iset:

        async def driver_listing() -> int:
            return len(await iset.instances())

        async def raw_listing() -> int:
            return len(await anyio.to_thread.run_sync(raw))

        return await interleaved(
            {
                DRIVER: _cpu_per_instance(driver_listing, size, listings),
                RAW: _cpu_per_instance(raw_listing, size, listings),
            },
            repeats=repeats,
        )


async def _kept_kb(url: str, size: int) -> tuple[float, float]:
    """What one listing's result keeps per instance, in KB: the driver's
    (all of it on the Python heap, as tracemalloc counts it), and the wire
    size of the SDK's messages (what a caller of the raw SDK keeps at the
    least: protobuf's own heap is out of tracemalloc's sight)."""
    from google.cloud import compute_v1

    async with _driver_set(url, size) as iset:
        await iset.instances()  # the client sets are made, the code paths warm
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = await iset.instances()
            gc.collect()
            driver = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(kept) == size
    items = await anyio.to_thread.run_sync(_raw_lister(url, size))
    wire = sum(compute_v1.Instance.pb(item).ByteSize() for item in items)
    return driver / size / 1024, wire / size / 1024


# -- concurrency ---------------------------------------------------------------


async def _concurrent_creates(url: str, creates: int, round_: int) -> dict[str, float]:
    """Seconds for one create alone, for ``creates`` started over
    ``_ARRIVALS``, and for a listing issued once they are all started."""
    async with _driver_set(url, 10_000 + round_) as iset:
        started = time.perf_counter()
        first = await iset.create(ITYPE, IMAGE, {}, InitCommand(""), None)
        alone = time.perf_counter() - started
        listed_after = 0.0
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            # They arrive over a second, as a dispatcher's creates do.
            for _ in range(creates):
                tg.start_soon(iset.create, ITYPE, IMAGE, {}, InitCommand(""), None)
                await anyio.sleep(_ARRIVALS / creates)
            listing_started = time.perf_counter()
            found = await iset.instances()
            listed_after = time.perf_counter() - listing_started
        everything = time.perf_counter() - started
        assert first.id in {i.id for i in found}
    return {"alone": alone, "concurrent": everything, "listing": listed_after}


# -- the case --------------------------------------------------------------


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "GCE driver vs the raw google-cloud-compute SDK on the local API")
    if "gce" not in cloudvm.available_drivers():
        result.skipped = "skipped: GCE driver not installed"
        return result
    try:
        import aiohttp  # noqa: F401  (the local API's server)
    except ImportError:
        result.skipped = "skipped: aiohttp (the local Compute API's server) not installed"
        return result
    logging.getLogger("bench.gce").setLevel(logging.WARNING)
    sizes = [10, 20] if quick else [100, 1000]
    # Single listings vary by some 15% on a shared machine: many rounds.
    repeats = 1 if quick else 15
    with _local_api(sizes) as url:
        for size in sizes:
            # Each sample lists some 3000 instances: short samples are noise.
            listings = 1 if quick else max(3, 3000 // size)
            samples = await _cpu(url, size, listings, repeats)
            for variant, values in samples.items():
                baseline = (RAW,) if variant == DRIVER else None
                result.rows.append(
                    Row(NAME, variant, "CPU us per instance", values, n=size, ratio_to=baseline)
                )
        for size in sizes:
            driver_kb, wire_kb = await _kept_kb(url, size)
            result.rows += [
                Row(NAME, DRIVER, "KB kept per instance", [driver_kb], n=size),
                Row(NAME, RAW, "KB wire size per instance", [wire_kb], n=size),
            ]
    creates, op_seconds = (5, 0.3) if quick else (50, 3.0)
    timings: dict[str, list[float]] = {"alone": [], "concurrent": [], "listing": []}
    with _local_api([], op_seconds) as url:
        for round_ in range(1 if quick else 2):
            for key, value in (await _concurrent_creates(url, creates, round_)).items():
                timings[key].append(value)
    alone = "one create alone"
    result.rows += [
        Row(NAME, alone, "s", timings["alone"], n=1),
        Row(NAME, f"{creates} creates at once", "s", timings["concurrent"], n=1, ratio_to=(alone,)),
        Row(NAME, "a listing meanwhile", "s", timings["listing"], n=1, ratio_to=(alone,)),
    ]
    result.notes.append(
        f"local Compute API in a child process; {len(ZONES)} zones, pages of {PAGE_SIZE}; "
        f"CPU: 3000 instances listed per sample, {repeats} interleaved rounds; "
        f"memory: what one listing's result keeps (tracemalloc); "
        f"concurrency: operations of {op_seconds:g} s, default max_concurrent_calls"
    )
    return result


def _child(argv: list[str]) -> None:
    logging.getLogger("bench.gce").setLevel(logging.WARNING)
    if argv[0] == "serve":
        asyncio.run(_serve(json.loads(argv[1]), float(argv[2])))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", PROJECT)
    _child(sys.argv[1:])
