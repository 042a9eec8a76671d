"""The conformance kit as a pytest base class (imports pytest)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from ._conformance_report import (
    STEP_BAD_INPUTS,
    STEP_BOOT,
    STEP_CANCELLATION,
    STEP_CLEANUP,
    STEP_CREATE,
    STEP_DESTROY,
    STEP_EXTRA_COMMAND,
    STEP_HOST_KEY,
    STEP_INIT_COMMAND,
    STEP_LEFTOVERS,
    STEP_LISTED_AT_ONCE,
    STEP_MAKE_SET,
    STEP_OTHER_SETS,
    STEP_SET_TAGS,
    STEP_STOP,
    STEP_TAG_FILTER,
    STEP_TAGS_EXACT,
    ConformanceConfig,
    ConformanceReport,
    StepStatus,
)
from ._conformance_run import run_conformance

__all__ = ["ConformanceSuite"]

# One run per test class: its first test runs the whole sequence and the
# others read their step from the same report.
_reports: dict[type, ConformanceReport] = {}


class ConformanceSuite:
    """Subclass it in a test module to run the conformance kit under pytest.

    The subclass provides the settings either as a ``conformance_config``
    fixture (which may be async and depend on other fixtures) or as the class
    attribute :attr:`conformance`. Each test method checks one step; the first
    test of the class to run executes the whole sequence (so it takes the
    time, and needs a per-test timeout above the kit's boot timeout), the
    others read the same report. A step whose prerequisite failed fails too,
    naming it; a step with nothing to check is skipped. The test methods are
    coroutines: run them with pytest-asyncio (auto mode, or mark the class).
    """

    #: The settings, when the subclass gives them as a class attribute.
    conformance: ClassVar[ConformanceConfig | None] = None

    @pytest.fixture
    def conformance_config(self) -> ConformanceConfig:
        """The kit's settings; override this fixture or set :attr:`conformance`."""
        if self.conformance is None:
            pytest.fail(
                f"{type(self).__name__} must set `conformance` or define a "
                "`conformance_config` fixture returning a ConformanceConfig"
            )
        return self.conformance

    async def conformance_report(self, config: ConformanceConfig) -> ConformanceReport:
        """The report of this class's run, running the kit on first use."""
        report = _reports.get(type(self))
        if report is None:
            report = _reports[type(self)] = await run_conformance(config)
        return report

    async def check_step(self, config: ConformanceConfig, name: str) -> None:
        """Fail the calling test unless step ``name`` passed (skip it when the
        step had nothing to check)."""
        report = await self.conformance_report(config)
        result = report.step(name)
        if result is None:
            pytest.fail(f"step {name!r} did not run\n{report}", pytrace=False)
        if result.status is StepStatus.SKIPPED:
            pytest.skip(f"{name}: {result.message}")
        if result.status is not StepStatus.PASSED:
            pytest.fail(f"step {name!r} {result.status.name}: {result.message}", pytrace=False)

    async def test_make_instance_set(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_MAKE_SET)

    async def test_no_leftover_instances(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_LEFTOVERS)

    async def test_bad_inputs_rejected(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_BAD_INPUTS)

    async def test_create(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_CREATE)

    async def test_listed_at_once(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_LISTED_AT_ONCE)

    async def test_tags_exact(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_TAGS_EXACT)

    async def test_listing_filters_by_tags(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_TAG_FILTER)

    async def test_other_sets_see_nothing(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_OTHER_SETS)

    async def test_boot(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_BOOT)

    async def test_host_key_proof(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_HOST_KEY)

    async def test_init_command(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_INIT_COMMAND)

    async def test_extra_command(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_EXTRA_COMMAND)

    async def test_set_tags_replaces(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_SET_TAGS)

    async def test_cancelled_create(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_CANCELLATION)

    async def test_destroy(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_DESTROY)

    async def test_cleanup(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_CLEANUP)

    async def test_stop(self, conformance_config: ConformanceConfig) -> None:
        await self.check_step(conformance_config, STEP_STOP)
