"""Case 4: creates under an EC2-shaped token bucket, on the real clock."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
from _stats import CaseResult, Row, interleaved

import cloudvm
from cloudvm import ImageID, InitCommand, InstanceSet, InstanceSetID, InstanceType, RateLimitError
from cloudvm.testing import FakeCloud

__all__ = ["run"]

NAME = "throttle"
RESILIENT = "cloudvm.resilient"
NAIVE = "naive sleep(1 s)+retry"
LIMIT = "bucket limit"
BURST, REFILL = 5, 2.0  # EC2 RunInstances (REFERENCE.md section 2)
NAIVE_SLEEP = 1.0  # seconds: a fixed pause, ignoring earliest_retry
ITYPE = InstanceType(
    name="small",
    provider_type="t3.small",
    vcpus=2,
    ram=2 << 30,
    scratch=0,
    included_scratch=0,
    added_scratch=0,
    price=0.02,
)


async def _create_all(instance_set: InstanceSet, count: int, *, naive: bool) -> None:
    async def one() -> None:
        while True:
            try:
                await instance_set.create(ITYPE, ImageID("ami-bench"), {}, InitCommand(""), None)
                return
            except RateLimitError:
                if not naive:
                    raise
                await anyio.sleep(NAIVE_SLEEP)

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)


def _cloud() -> FakeCloud:
    bucket = {"burst": BURST, "refill": REFILL}
    return FakeCloud({"rate_limits": {"create": bucket, "list": None, "other": None}})


async def run(*, quick: bool) -> CaseResult:
    result = CaseResult(NAME, "Creates under an EC2-shaped bucket (burst 5, +2/s), real clock")
    count = 7 if quick else 25
    repeats = 1 if quick else 3
    throttled: dict[str, list[float]] = {RESILIENT: [], NAIVE: []}

    def probe(naive: bool) -> Callable[[], Awaitable[float]]:
        async def measure() -> float:
            async with _cloud() as cloud:
                raw = await cloud.instance_set(InstanceSetID("bench"))
                target = raw if naive else cloudvm.resilient(raw, retry_rate_limited=True)
                start = time.perf_counter()
                await _create_all(target, count, naive=naive)
                elapsed = time.perf_counter() - start
                outcomes = [call.outcome for call in cloud.calls]
                throttled[NAIVE if naive else RESILIENT].append(
                    float(outcomes.count("RateLimitError"))
                )
            return elapsed

        return measure

    samples = await interleaved(
        {RESILIENT: probe(False), NAIVE: probe(True)},
        repeats=repeats,
        warmup=0,
    )
    minimum = (count - BURST) / REFILL
    for variant, values in samples.items():
        result.rows.append(
            Row(
                NAME,
                variant,
                "s",
                values,
                n=count,
                ratio_to=(LIMIT,) if variant == RESILIENT else (LIMIT, RESILIENT),
            )
        )
        result.rows.append(
            Row(
                NAME,
                variant,
                "throttled calls",
                throttled[variant],
                n=count,
                ratio_to=(RESILIENT,) if variant != RESILIENT else None,
            )
        )
    result.rows.append(Row(NAME, LIMIT, "s", [minimum], n=count))
    result.notes.append(
        f"{count} concurrent creates on the fake cloud (SystemClock); limit = (N-burst)/refill "
        f"= {minimum:.1f} s; the resilient wrapper retries rate limits itself; the naive loop "
        f"sleeps {NAIVE_SLEEP:.0f} s after each RateLimitError"
    )
    return result
