"""``cloudvm cloudtest`` runs the conformance kit and prints each step."""

from __future__ import annotations

from cloudvm.testing.conformance import STEPS

from .conftest import Cloud, cloudvm


async def test_cloudtest_on_loopback_passes(cloud: Cloud) -> None:
    result = await cloudvm(
        "cloudtest", *cloud.args(), "--type", "loopback.small", "--image", "local",
        "--key", str(cloud.key), "--command", "echo extra-ran",
        "--boot-timeout", "30", "--destroy-timeout", "20", "--poll-interval", "0.05",
    )  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split("  ", 1)[1].rsplit(" (", 1)[0] for line in lines if line[:4] == "PASS"]
    assert steps == list(STEPS)
    assert "extra-ran" in result.stdout
    assert lines[-1].startswith("cloudtest PASSED")


async def test_cloudtest_failure_exits_1(cloud: Cloud) -> None:
    result = await cloudvm(
        "cloudtest", *cloud.args(), "--type", "loopback.small", "--image", "local",
        "--command", "exit 3", "--boot-timeout", "30", "--poll-interval", "0.05",
    )  # fmt: skip
    assert result.code == 1, result.stdout + result.stderr
    assert "FAIL  extra command" in result.stdout
    assert "'exit 3' exited 3" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("cloudtest FAILED: extra command")


async def test_a_cancellation_step_that_cancelled_nothing_is_skipped(cloud: Cloud) -> None:
    # Each create returns long before it would be cancelled: nothing is tested.
    result = await cloudvm(
        "cloudtest", *cloud.args(), "--type", "loopback.small", "--image", "local",
        "--key", str(cloud.key), "--cancel-delays", "600,900",
        "--boot-timeout", "30", "--destroy-timeout", "20", "--poll-interval", "0.05",
    )  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [at] = [n for n, line in enumerate(lines) if "cancelled create leaves nothing untagged" in line]
    assert lines[at].startswith("SKIP  cancelled create leaves nothing untagged")
    assert lines[at + 1].strip() == (
        "none of the 2 creates was cancelled: each returned within its delay (600, 900 s), "
        "so nothing was tested; give shorter cancel_delays (2 instances existed afterwards, "
        "all tagged, all destroyed)"
    )
