"""The conformance kit's runner: every step of the sequence, in order."""

from __future__ import annotations

import logging
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import anyio
import asyncssh

from .._critical import run_critical
from .._drivers import load_driver
from .._errors import CloudError, ExecuteError, HostKeyError, RateLimitError
from .._executor import SSHExecutor
from .._protocols import Driver, Instance, InstanceSet
from .._types import InitCommand, InstanceID, InstanceSetID, InstanceTags
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
    StepResult,
    StepStatus,
)
from ._ssh_server import SSHTestServer

__all__ = ["RUN_TAG", "ProgressCallback", "run_conformance"]

#: The tag key carrying the run's random id on every instance the kit creates.
RUN_TAG = "conformance-run"
_ROLE_TAG = "conformance-role"
# Awkward but portable values: spaces (leading, doubled), case, unicode.
_AWKWARD_TAGS = {
    "conformance-name": " Mixed Case  with spaces",
    "conformance-unicode": "ünïcødé ✓ 雲",
}
_RATE_LIMIT_WAIT_MAX = 60.0  # seconds; a longer earliest_retry is waited in slices
_SSH_ERRORS = (OSError, asyncssh.Error, TimeoutError, ExecuteError, ValueError)

ProgressCallback = Callable[[StepResult], object]


class _StepFailed(Exception):
    """A step found the driver breaking the contract; the message says how."""


class _Skip(Exception):
    """A step had nothing to check."""


def _fail(message: str) -> NoReturn:
    raise _StepFailed(message)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tag_diff(got: Mapping[str, str], want: Mapping[str, str]) -> str:
    parts = []
    extra = sorted(set(got) - set(want))
    missing = sorted(set(want) - set(got))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if extra:
        parts.append("unexpected keys " + ", ".join(f"{k!r}={got[k]!r}" for k in extra))
    if missing:
        parts.append("missing keys " + ", ".join(repr(k) for k in missing))
    for key in changed:
        parts.append(f"{key!r} is {got[key]!r}, expected {want[key]!r}")
    return "; ".join(parts)


class _Runner:
    def __init__(self, config: ConformanceConfig, progress: ProgressCallback | None) -> None:
        self.cfg = config
        self.progress = progress
        self.log = config.logger or logging.getLogger("cloudvm.conformance")
        self.run_id = secrets.token_hex(6)
        self.set_id = config.instance_set_id or InstanceSetID(f"conformance-{self.run_id}")
        self.other_id = InstanceSetID(f"{self.set_id}-other")
        self.report = ConformanceReport(self.set_id)
        self.public_key = config.ssh_key.convert_to_public()
        self.main_tags: InstanceTags = {RUN_TAG: self.run_id, _ROLE_TAG: "main", **_AWKWARD_TAGS}
        self.marker = secrets.token_hex(8)
        self.driver: Driver | None = None
        self.iset: InstanceSet | None = None
        self.other: InstanceSet | None = None
        self.main: Instance | None = None
        self.created_ok = False  # create returned (rather than raised)
        self.executor: SSHExecutor | None = None
        # Instances the kit made (or may have made), per set, for the cleanup.
        self.made: dict[InstanceID, Instance] = {}
        self.made_other: dict[InstanceID, Instance] = {}
        self.preexisting: set[InstanceID] = set()

    # -- the sequence ----------------------------------------------------------

    async def run(self) -> ConformanceReport:
        try:
            await self.step(STEP_MAKE_SET, self.make_set)
            await self.step(STEP_LEFTOVERS, self.leftovers, STEP_MAKE_SET)
            base = (STEP_MAKE_SET, STEP_LEFTOVERS)
            await self.step(STEP_BAD_INPUTS, self.bad_inputs, *base)
            await self.step(STEP_CREATE, self.create, *base)
            main = (*base, STEP_CREATE)
            await self.step(STEP_LISTED_AT_ONCE, self.listed_at_once, *main)
            await self.step(STEP_TAGS_EXACT, self.tags_exact, *main)
            await self.step(STEP_TAG_FILTER, self.tag_filter, *main)
            await self.step(STEP_OTHER_SETS, self.other_sets, *main)
            await self.step(STEP_BOOT, self.boot, *main)
            booted = (*main, STEP_BOOT)
            await self.step(STEP_HOST_KEY, self.host_key, *booted)
            await self.step(STEP_INIT_COMMAND, self.init_command, *booted)
            await self.step(STEP_EXTRA_COMMAND, self.extra_command, *booted)
            await self.step(STEP_SET_TAGS, self.set_tags, *main)
            await self.step(STEP_CANCELLATION, self.cancellation, *base)
            await self.step(STEP_DESTROY, self.destroy, *main)
        finally:
            # Whatever happened (a failure, our caller cancelling us, Ctrl-C
            # in `cloudvm cloudtest`), destroy everything the run made and
            # release what it holds: a critical section, since an anyio shield
            # would not stop asyncio's own cancellation and would leave
            # instances running in a real account.
            await run_critical(self._clean_up)
        return self.report

    async def _clean_up(self) -> None:
        if self.executor is not None:
            await self.executor.close()
        if self.iset is not None:
            await self.step(STEP_CLEANUP, self.cleanup)
            await self.step(STEP_STOP, self.stop)

    async def step(
        self,
        name: str,
        body: Callable[[], Awaitable[str]],
        *requires: str,
    ) -> None:
        for needed in requires:
            result = self.report.step(needed)
            if result is None or result.status is not StepStatus.PASSED:
                self.record(StepResult(name, StepStatus.NOT_RUN, f"needs {needed!r}, which failed"))
                return
        limit = self.cfg.boot_timeout + self.cfg.destroy_timeout + self.cfg.settle_timeout
        started = time.monotonic()
        try:
            with anyio.fail_after(limit):
                message = await body()
            status = StepStatus.PASSED
        except _Skip as exc:
            status, message = StepStatus.SKIPPED, str(exc)
        except _StepFailed as exc:
            status, message = StepStatus.FAILED, str(exc)
        except TimeoutError:
            status, message = StepStatus.FAILED, f"the step took longer than {limit:.0f} s"
        except Exception as exc:
            status, message = StepStatus.FAILED, f"unexpected error: {_describe(exc)}"
            self.log.debug("conformance step %r raised", name, exc_info=True)
        self.record(StepResult(name, status, message, time.monotonic() - started))

    def record(self, result: StepResult) -> None:
        self.report.steps.append(result)
        log = self.log.info if result.ok else self.log.warning
        log("conformance step %s: %s %s", result.name, result.status.value, result.message)
        if self.progress is not None:
            self.progress(result)

    # -- helpers ---------------------------------------------------------------

    async def list(self, iset: InstanceSet, tags: InstanceTags | None = None) -> list[Instance]:
        """``iset.instances(tags)``, waiting out RateLimitErrors."""
        while True:
            try:
                return await iset.instances(tags)
            except RateLimitError as exc:
                wait = (exc.earliest_retry - datetime.now(UTC)).total_seconds()
                self.log.info("listing throttled; waiting %.2f s", wait)
                await anyio.sleep(min(max(wait, 0.01), _RATE_LIMIT_WAIT_MAX))

    async def find(self, iset: InstanceSet, instance_id: InstanceID) -> Instance | None:
        for instance in await self.list(iset):
            if instance.id == instance_id:
                return instance
        return None

    async def poll(
        self, timeout: float, check: Callable[[], Awaitable[Any]]
    ) -> Any:  # the check's first truthy answer, or None at the deadline
        deadline = anyio.current_time() + timeout
        while True:
            answer = await check()
            if answer or anyio.current_time() >= deadline:
                return answer
            await anyio.sleep(min(self.cfg.poll_interval, max(deadline - anyio.current_time(), 0)))

    async def create_tracked(
        self,
        iset: InstanceSet,
        made: dict[InstanceID, Instance],
        tags: InstanceTags,
        init: str,
        public_key: asyncssh.SSHKey | None,
    ) -> tuple[Instance | None, str]:
        """Create an instance, the way a careful dispatcher would: when create
        raises, the instance may exist anyway, so poll the listing for its tags
        until it appears or the boot timeout passes. A RateLimitError is waited
        out and the create retried if nothing appeared. Returns the instance
        (None if none appeared) and a note on what happened."""
        notes: list[str] = []
        for _attempt in range(5):
            try:
                instance = await iset.create(
                    self.cfg.instance_type, self.cfg.image_id, tags, InitCommand(init), public_key
                )
            except (ValueError, TypeError) as exc:
                _fail(f"create rejected valid input: {_describe(exc)}")
            except Exception as exc:
                notes.append(f"create raised {_describe(exc)}")
                timeout = self.cfg.boot_timeout
                if isinstance(exc, RateLimitError):
                    wait = (exc.earliest_retry - datetime.now(UTC)).total_seconds()
                    timeout = min(max(wait, 0.0), _RATE_LIMIT_WAIT_MAX)
                found = await self.poll(timeout, lambda: self.list(iset, tags))
                if found:
                    for instance in found:
                        made[instance.id] = instance
                    notes.append(f"but instance {found[0].id} appeared in the listing")
                    return found[0], "; ".join(notes)
                if isinstance(exc, RateLimitError):
                    continue
                notes.append(f"and no instance appeared within {timeout:.0f} s")
                return None, "; ".join(notes)
            else:
                made[instance.id] = instance
                return instance, "; ".join(notes)
        return None, "; ".join(notes)

    async def wait_gone(self, iset: InstanceSet, ids: set[InstanceID]) -> set[InstanceID]:
        """Re-list until none of ``ids`` is listed; returns those still listed."""

        async def gone() -> bool:
            left[:] = [i.id for i in await self.list(iset) if i.id in ids]
            return not left

        left: list[InstanceID] = []
        await self.poll(self.cfg.destroy_timeout, gone)
        return set(left)

    # -- the steps -------------------------------------------------------------

    async def make_set(self) -> str:
        driver = self.cfg.driver
        if isinstance(driver, str):
            try:
                driver = load_driver(driver)
            except LookupError as exc:
                _fail(str(exc))
        self.driver = driver
        try:
            self.iset = await driver.instance_set(
                self.cfg.config, self.set_id, dict(self.cfg.shared_tags), self.log
            )
        except ValueError as exc:  # ConfigError included
            _fail(f"the driver refused the config: {exc}")
        return f"instance set {self.set_id}"

    async def leftovers(self) -> str:
        assert self.iset is not None
        existing = await self.list(self.iset)
        if not existing:
            return "the set has no instances"
        ids = sorted({i.id for i in existing})
        if not self.cfg.destroy_existing:
            self.preexisting = set(ids)
            _fail(
                f"instance set {self.set_id} already has {len(ids)} instances "
                f"({', '.join(ids)}); refusing to run. Destroy them first, or pass "
                "destroy_existing=True (cloudtest: --destroy-existing)"
            )
        for instance in existing:
            await instance.destroy()
        left = await self.wait_gone(self.iset, set(ids))
        if left:
            _fail(f"destroyed the set's {len(ids)} instances but {sorted(left)} are still listed")
        return f"destroyed {len(ids)} instances left by an earlier run"

    async def bad_inputs(self) -> str:
        assert self.iset is not None
        before = {i.id for i in await self.list(self.iset)}
        itype, image = self.cfg.instance_type, self.cfg.image_id
        good = {RUN_TAG: self.run_id, _ROLE_TAG: "bad-input"}
        cases: list[tuple[str, InstanceTags, str]] = [
            ("an init command of 1 KiB", good, "x" * 1024),
            ("an empty tag key", {**good, "": "x"}, ""),
            ("a tag key with a newline", {**good, "bad\nkey": "x"}, ""),
            ("a tag value with a control character", {**good, "k": "a\x07b"}, ""),
            ("a non-string tag value", {**good, "k": 5}, ""),  # type: ignore[dict-item]
            ("the reserved key cloudvm-instance-set", {**good, "cloudvm-instance-set": "x"}, ""),
            ("a reserved cloudvm- key", {**good, "cloudvm-anything": "x"}, ""),
        ]
        problems = []
        for what, tags, init in cases:
            try:
                instance = await self.iset.create(itype, image, tags, InitCommand(init), None)
            except (ValueError, TypeError):
                continue
            except Exception as exc:
                problems.append(f"{what}: raised {_describe(exc)} instead of ValueError")
            else:
                self.made[instance.id] = instance
                problems.append(f"{what}: accepted (created {instance.id})")
        after = await self.list(self.iset)
        new = sorted({i.id for i in after} - before)
        for instance in after:
            if instance.id in new:
                self.made[instance.id] = instance
        if new:
            problems.append(f"the set's listing changed: new instances {', '.join(new)}")
        if problems:
            _fail("bad input reached the cloud: " + "; ".join(problems))
        return f"{len(cases)} bad inputs raised ValueError/TypeError; the listing is unchanged"

    async def create(self) -> str:
        assert self.iset is not None
        init = f"echo {self.marker} > {shlex.quote(self.cfg.marker_path)}"
        instance, note = await self.create_tracked(
            self.iset, self.made, self.main_tags, init, self.public_key
        )
        if instance is None:
            _fail(note)
        self.main = instance
        self.created_ok = not note
        return f"created {instance.id}" + (f" ({note})" if note else "")

    async def listed_at_once(self) -> str:
        assert self.iset is not None and self.main is not None
        if not self.created_ok:
            raise _Skip("create raised, so the instance was found by polling")
        ids = [i.id for i in await self.list(self.iset, self.main_tags)]
        if self.main.id not in ids:
            _fail(
                f"{self.main.id} was created but the listing right after did not show it "
                f"(listed: {ids or 'nothing'}): a dispatcher would think it lost"
            )
        return f"{self.main.id} is in the first listing after create"

    async def tags_exact(self) -> str:
        assert self.iset is not None and self.main is not None
        problems = []
        if self.created_ok and self.main.tags != self.main_tags:
            diff = _tag_diff(self.main.tags, self.main_tags)
            problems.append(f"the instance create returned has wrong tags: {diff}")
        iset, main_id = self.iset, self.main.id
        listed = await self.poll(self.cfg.settle_timeout, lambda: self.find(iset, main_id))
        if listed is None:
            problems.append(f"{self.main.id} is not in the unfiltered listing")
        elif listed.tags != self.main_tags:
            diff = _tag_diff(listed.tags, self.main_tags)
            problems.append(f"the listed instance has wrong tags: {diff}")
        if problems:
            _fail("; ".join(problems) + " (Instance.tags must be exactly the caller's tags)")
        return f"tags are exactly the {len(self.main_tags)} given"

    async def tag_filter(self) -> str:
        assert self.iset is not None and self.main is not None
        problems = []
        other_value = {RUN_TAG: f"{self.run_id}-nothing"}
        partly = {RUN_TAG: self.run_id, _ROLE_TAG: "no-such-role"}
        for what, tags in (("another run tag value", other_value), ("one of two tags", partly)):
            listed = [i.id for i in await self.list(self.iset, tags)]
            if self.main.id in listed:
                problems.append(f"instances({tags!r}) listed {self.main.id}, which matches {what}")
        if problems:
            _fail("; ".join(problems) + " (instances(tags) must list only instances with all tags)")
        return "listings with non-matching tags leave the instance out"

    async def other_sets(self) -> str:
        assert self.driver is not None and self.iset is not None and self.main is not None
        self.other = await self.driver.instance_set(
            self.cfg.config, self.other_id, dict(self.cfg.shared_tags), self.log
        )
        problems = []
        seen = [i.id for i in await self.list(self.other)]
        if self.main.id in seen:
            problems.append(f"set {self.other_id} lists our {self.main.id}")
        foreign_tags = {RUN_TAG: self.run_id, _ROLE_TAG: "foreign"}
        foreign, note = await self.create_tracked(
            self.other, self.made_other, foreign_tags, "", None
        )
        if foreign is None:
            _fail(f"could not create an instance in set {self.other_id}: {note}")
        for tags in (None, {RUN_TAG: self.run_id}, foreign_tags):
            ours = [i.id for i in await self.list(self.iset, tags)]
            if foreign.id in ours:
                problems.append(
                    f"our set {self.set_id} lists {foreign.id} of set {self.other_id} "
                    f"(instances({tags!r}))"
                )
        other, foreign_id = self.other, foreign.id
        theirs = await self.poll(self.cfg.settle_timeout, lambda: self.find(other, foreign_id))
        if theirs is None:
            problems.append(f"set {self.other_id} does not list its own {foreign.id}")
        elif theirs.tags != foreign_tags:
            problems.append(f"{foreign.id} has wrong tags: {_tag_diff(theirs.tags, foreign_tags)}")
        if self.main.id in {i.id for i in await self.list(self.other)}:
            problems.append(f"set {self.other_id} lists our {self.main.id}")
        if await self.find(self.iset, self.main.id) is None:
            problems.append(f"our {self.main.id} vanished from our listing")
        await foreign.destroy()
        left = await self.wait_gone(self.other, {foreign.id})
        if left:
            problems.append(f"{foreign.id} is still listed by its set after destroy")
        if problems:
            _fail("; ".join(problems))
        return f"set {self.other_id} and ours never saw each other's instances"

    async def boot(self) -> str:
        assert self.iset is not None and self.main is not None
        self.executor = SSHExecutor(
            signers=[self.cfg.ssh_key],
            trust_on_first_use=self.cfg.trust_on_first_use,
            connect_timeout=self.cfg.ssh_connect_timeout,
            logger=self.log,
        )
        deadline = anyio.current_time() + self.cfg.boot_timeout
        last = "the instance never had an address"
        main_id = self.main.id
        while True:
            instance = await self.find(self.iset, main_id)
            if instance is None:
                last = f"{main_id} is not listed"
            elif instance.address:
                current = self.executor.target
                if current is None or current.address != instance.address:
                    self.executor.set_target(instance)
                    self.main = instance
                try:
                    with anyio.fail_after(max(deadline - anyio.current_time(), 0.1)):
                        await self.executor.execute(self.cfg.boot_probe_command)
                except HostKeyError as exc:
                    _fail(f"host key verification failed for {main_id}: {exc}")
                except _SSH_ERRORS as exc:
                    last = f"probe on {instance.address}: {_describe(exc)}"
                else:
                    return f"{main_id} at {instance.address} answered the boot probe"
            if anyio.current_time() >= deadline:
                _fail(f"{main_id} did not boot within {self.cfg.boot_timeout:.0f} s; last: {last}")
            await anyio.sleep(self.cfg.poll_interval)

    async def host_key(self) -> str:
        assert self.main is not None
        main = self.main
        stranger = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
        notes = []
        try:
            await main.verify_host_key(stranger, None)
        except NotImplementedError:
            notes.append("a random key without a connection: not implemented")
        except HostKeyError:
            notes.append("a random key without a connection: refused")
        else:
            _fail(f"{main.id}.verify_host_key accepted a random key with no connection")
        async with SSHTestServer(authorized_keys=[self.cfg.ssh_key]) as impostor:
            host, port = impostor.address.rsplit(":", 1)
            conn = await asyncssh.connect(
                host,
                int(port),
                username=main.remote_user,
                client_keys=[self.cfg.ssh_key],
                known_hosts=None,
                agent_path=None,
                config=None,
                connect_timeout=self.cfg.ssh_connect_timeout,
            )
            try:
                with anyio.fail_after(self.cfg.ssh_connect_timeout):
                    await main.verify_host_key(impostor.host_key.convert_to_public(), conn)
            except HostKeyError:
                notes.append("an impostor SSH server: refused")
            except NotImplementedError:
                if not self.cfg.trust_on_first_use:
                    _fail(
                        f"{main.id}.verify_host_key raised NotImplementedError for an impostor "
                        "(allowed only with trust_on_first_use)"
                    )
                notes.append("an impostor SSH server: not implemented (trust on first use)")
            except TimeoutError:
                _fail(f"{main.id}.verify_host_key hung on an impostor SSH server")
            else:
                _fail(
                    f"{main.id}.verify_host_key accepted an impostor SSH server "
                    "(a host that is not the instance): it must prove the host, not trust it"
                )
            finally:
                conn.close()
                await conn.wait_closed()
        return "; ".join(notes)

    async def init_command(self) -> str:
        assert self.executor is not None
        cmd = f"cat {shlex.quote(self.cfg.marker_path)}"
        last: list[str] = []

        async def read() -> bool:
            assert self.executor is not None
            try:
                out, _ = await self.executor.execute(cmd)
            except ExecuteError as exc:
                err = exc.stderr.decode(errors="replace").strip()
                last[:] = [f"{cmd!r} exited {exc.exit_status}: {err}"]
                return False
            if out.strip() != self.marker.encode():
                last[:] = [f"{self.cfg.marker_path} holds {out[:80]!r}, not the marker"]
                return False
            return True

        if not await self.poll(self.cfg.boot_timeout, read):
            _fail(f"the init command's marker never appeared: {last[0] if last else ''}")
        return f"{self.cfg.marker_path} holds the marker the init command wrote"

    async def extra_command(self) -> str:
        assert self.executor is not None
        if self.cfg.extra_command is None:
            raise _Skip("no extra command given")
        try:
            out, _ = await self.executor.execute(self.cfg.extra_command)
        except ExecuteError as exc:
            err = exc.stderr.decode(errors="replace").strip()[-500:]
            _fail(f"{self.cfg.extra_command!r} exited {exc.exit_status}: {err}")
        text = out.decode(errors="replace").strip()
        return f"{self.cfg.extra_command!r} succeeded" + (f": {text[:200]}" if text else "")

    async def set_tags(self) -> str:
        assert self.iset is not None and self.main is not None
        iset, main = self.iset, self.main
        problems = []
        try:
            await main.set_tags({**self.main_tags, "cloudvm-instance-set": "elsewhere"})
        except (ValueError, TypeError):
            pass
        else:
            problems.append("set_tags accepted the reserved key cloudvm-instance-set")
        new_tags = {RUN_TAG: self.run_id, _ROLE_TAG: "main", "conformance-retagged": "Yes, Ré ✓"}
        await main.set_tags(new_tags)
        self.main_tags = new_tags

        async def settled() -> bool:
            listed = await self.find(iset, main.id)
            seen[:] = [listed.tags if listed else None]
            return listed is not None and listed.tags == new_tags

        seen: list[InstanceTags | None] = []
        if not await self.poll(self.cfg.settle_timeout, settled):
            got = seen[0] if seen else None
            what = "not listed" if got is None else _tag_diff(got, new_tags)
            problems.append(f"after set_tags the listing shows {main.id} with {what}")
        old = {"conformance-name": _AWKWARD_TAGS["conformance-name"]}
        if main.id in [i.id for i in await self.list(iset, old)]:
            problems.append(f"instances({old!r}) still lists {main.id}: the old tag was kept")
        if main.id not in [i.id for i in await self.list(iset, new_tags)]:
            problems.append(f"instances(<the new tags>) does not list {main.id}")
        if problems:
            _fail("; ".join(problems))
        return "old keys gone, new tags listed"

    async def cancellation(self) -> str:
        assert self.iset is not None
        iset = self.iset
        cancelled = 0
        notes = []
        for n, delay in enumerate(self.cfg.cancel_delays):
            tags = {RUN_TAG: self.run_id, _ROLE_TAG: f"cancel-{n}"}
            try:
                with anyio.move_on_after(delay) as scope:
                    instance = await iset.create(
                        self.cfg.instance_type, self.cfg.image_id, tags, InitCommand(""), None
                    )
                    self.made[instance.id] = instance
            except CloudError as exc:
                notes.append(f"create after {delay} s raised {_describe(exc)}")
            if scope.cancelled_caught:
                cancelled += 1
        # The set is this run's alone (it was empty when the run began), so every
        # instance in it must carry the run tag: one without it was left untagged.
        listed = [i for i in await self.list(iset) if i.id not in self.preexisting]
        untagged = []
        mine = set()
        for instance in listed:
            self.made.setdefault(instance.id, instance)
            tags = instance.tags
            if tags.get(RUN_TAG) != self.run_id:
                untagged.append(f"{instance.id} (tags {tags!r})")
            if tags.get(_ROLE_TAG, "").startswith("cancel-") or tags.get(RUN_TAG) != self.run_id:
                mine.add(instance.id)
        for instance in listed:
            if instance.id in mine:
                await instance.destroy()
        left = await self.wait_gone(iset, mine)
        if untagged:
            _fail(
                f"after {cancelled} cancelled creates, instances without the run tag exist: "
                + ", ".join(untagged)
            )
        if left:
            _fail(f"instances made by cancelled creates are still listed after destroy: {left}")
        delays = self.cfg.cancel_delays
        aftermath = f"{len(mine)} instances existed afterwards, all tagged, all destroyed"
        if notes:
            aftermath += f"; {'; '.join(notes)}"
        if not cancelled:
            # Creates that finished before their cancellation tested nothing.
            raise _Skip(
                f"none of the {len(delays)} creates was cancelled: each returned within its "
                f"delay ({', '.join(f'{d:g}' for d in delays)} s), so nothing was tested; "
                f"give shorter cancel_delays ({aftermath})"
            )
        return f"{cancelled} of {len(delays)} creates cancelled; {aftermath}"

    async def destroy(self) -> str:
        assert self.iset is not None and self.main is not None
        main = self.main
        await main.destroy()
        left = await self.wait_gone(self.iset, {main.id})
        if left:
            _fail(f"{main.id} is still listed {self.cfg.destroy_timeout:.0f} s after destroy")
        try:
            await main.destroy()
        except Exception as exc:
            _fail(f"destroying {main.id} again raised {_describe(exc)} (it must be a no-op)")
        return f"{main.id} is gone from listings; a second destroy is a no-op"

    async def cleanup(self) -> str:
        destroyed: list[str] = []
        failures: list[str] = []
        for iset, made in ((self.iset, self.made), (self.other, self.made_other)):
            if iset is None:
                continue
            targets = dict(made)
            listed: list[Instance] | None
            try:
                listed = await self.list(iset)
            except Exception as exc:
                failures.append(f"listing failed: {_describe(exc)}")
                listed = None
            for instance in listed or []:
                if iset is self.other:
                    if instance.tags.get(RUN_TAG) == self.run_id:
                        targets[instance.id] = instance
                elif instance.id not in self.preexisting:
                    targets[instance.id] = instance
            if listed is not None:  # destroy only what is still there
                still = {i.id for i in listed}
                targets = {k: v for k, v in targets.items() if k in still}
            for instance_id, instance in targets.items():
                try:
                    await instance.destroy()
                    destroyed.append(instance_id)
                except Exception as exc:
                    failures.append(f"destroying {instance_id}: {_describe(exc)}")
            if targets:
                left = await self.wait_gone(iset, set(targets))
                if left:
                    failures.append(f"still listed after destroy: {', '.join(sorted(left))}")
        if failures:
            _fail("instances may be left; destroy them by hand: " + "; ".join(failures))
        if destroyed:
            return f"destroyed {len(destroyed)} instances left by failed steps: {destroyed}"
        return "nothing was left"

    async def stop(self) -> str:
        for iset in (self.iset, self.other):
            if iset is not None:
                await iset.stop()
                await iset.stop()  # twice is harmless
        return "stopped (twice, harmlessly)"


async def run_conformance(
    config: ConformanceConfig, *, progress: ProgressCallback | None = None
) -> ConformanceReport:
    """Run the whole conformance sequence against one driver and report.

    The steps run in the order of :data:`~cloudvm.testing.conformance.STEPS`;
    a step whose prerequisite failed is reported as not run. A failing step
    never raises: the report says what went wrong. Whatever happens (failures,
    cancellation of this coroutine), the kit destroys every instance it made,
    closes its SSH connections and stops its sets before returning.

    Parameters:
        config: the driver, account and instance settings.
        progress: called with each step's result as soon as it is known
            (None: no calls).

    Returns:
        The report; ``report.ok`` is the verdict.
    """
    return await _Runner(config, progress).run()
