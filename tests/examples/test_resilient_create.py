"""examples/resilient_create.py: what a dispatcher sees under throttling,
quota and capacity errors, next to what reached the (fake) cloud."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


async def test_each_scene_shows_what_the_dispatcher_and_the_cloud_saw(
    example: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = await example("resilient_create").main()

    throttling = scenes["throttling"]
    created = [o for o in throttling.outcomes if ": created " in o]
    throttled = [o for o in throttling.outcomes if ": RateLimitError: retry in " in o]
    assert len(created) + len(throttled) == 10 and created and throttled
    # Only the caller whose own call was throttled saw the error; the others
    # waited out the hold-off and went on.
    assert throttling.cloud_calls == {"ok": len(created), "RateLimitError": len(throttled)}

    quota = scenes["quota"]
    steps = [outcome.split(" ", 3)[:3] for outcome in quota.outcomes]
    assert [" ".join(step) for step in steps] == [
        "create 1: created",
        "create 2: created",
        "create 3: created",
        "create 4: QuotaError:",
        "create 5: QuotaError:",
        "destroy: i-00000000000000001 is",
        "create 6: created",
    ]
    assert quota.cloud_calls == {"ok": 4, "QuotaError": 1}  # the 5th create made no call

    capacity = scenes["capacity"]
    assert capacity.outcomes[0].startswith("create 1 (big): CapacityError for this type: ")
    assert capacity.outcomes[1].startswith("create 2 (big): CapacityError for this type: ")
    assert capacity.outcomes[2].startswith("create 3 (small): created ")
    assert capacity.cloud_calls == {"CapacityError": 1, "ok": 1}  # the 2nd made no call

    out = capsys.readouterr().out
    assert "the cloud saw 5 create calls: 1 QuotaError, 4 ok" in out
    assert "the cloud saw 2 create calls: 1 CapacityError, 1 ok" in out
