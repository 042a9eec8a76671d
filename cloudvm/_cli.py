"""The ``cloudvm`` command: drive any installed driver from a shell.

Subcommands: ``drivers``, ``list``, ``create``, ``destroy``, ``exec`` and
``cloudtest`` (the conformance kit). Every one but ``drivers`` takes
``--driver NAME``, ``--config FILE`` (JSON, or YAML with PyYAML installed) and
``--set-id ID``.

Exit codes (scripts may rely on them):

===== ==================================================================
0     success
1     failure: conformance failed, no such instance, host unreachable,
      key refused, timed out, confirmation declined
2     usage or config error (bad arguments, unreadable or invalid config,
      unknown driver, invalid tags, no cloud credentials found)
3     cloud error (any CloudError but the two below)
4     host key error: the SSH server could not be proven to be the instance
N     ``exec``: the remote command's own exit status
130   interrupted (Ctrl-C); what was left behind is said, with how to remove it
===== ==================================================================

Expected errors print one line on stderr and no traceback. Config values are
never printed (they may be credentials). Text that neither the user nor
cloudvm chose (tags, ids and addresses from the cloud, an unproven server's
words in errors) is printed through :func:`cloudvm.driverkit.printable`, so
it cannot carry terminal escape sequences; ``--json`` output escapes the same
characters as JSON ``\\u`` escapes and stays valid JSON. ``exec`` is the
exception: the remote command's own output is passed through unchanged, as
OpenSSH's ``ssh`` does, once the host is proven.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import asyncssh

from ._delegating import DelegatingInstance
from ._drivers import available_drivers, load_driver
from ._errors import CloudError, ConfigError, ExecuteError, HostKeyError
from ._executor import SSHExecutor
from ._protocols import Instance, InstanceSet
from ._text import printable
from ._types import ImageID, InitCommand, InstanceID, InstanceSetID, InstanceTags, InstanceType

__all__ = [
    "EXIT_CLOUD_ERROR",
    "EXIT_FAILURE",
    "EXIT_HOST_KEY_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's own code for usage errors
EXIT_CLOUD_ERROR = 3
EXIT_HOST_KEY_ERROR = 4
EXIT_INTERRUPTED = 130

DEFAULT_SET_ID = "cloudvm-cli"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


class _UsageError(Exception):
    """A mistake in the command line or the config: exit 2."""


class _Failure(Exception):
    """The command could not do what was asked: exit 1."""


# -- argument parsing ----------------------------------------------------------


def _size(text: str) -> int:
    """Bytes from ``"512"``, ``"2G"``, ``"2GiB"``, ``"1.5 GB"``."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 2GiB, 512M, 1048576)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    base = unit[:1] if unit[:1] != "b" else ""
    factor = (1024 ** "kmgt".index(base) * 1024 if base else 1) if binary else _UNITS[base]
    return int(number * factor)


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"tag {text!r} must look like key=value")
    return key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seconds")
    if any(not delay >= 0 for delay in delays):
        raise argparse.ArgumentTypeError(f"{text!r}: each delay must be 0 or more seconds")
    return delays


def _common(parser: argparse.ArgumentParser, *, set_id_default: str | None) -> None:
    parser.add_argument("--driver", required=True, help="the driver's name (see: cloudvm drivers)")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the driver's config: a JSON file, or YAML (.yaml/.yml) with PyYAML installed",
    )
    default = set_id_default or "a fresh id per run"
    parser.add_argument(
        "--set-id", default=set_id_default, help=f"the InstanceSetID (default: {default})"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the driver does")


def _instance_type_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("instance type")
    group.add_argument("--type", dest="provider_type", required=True, help="provider type")
    group.add_argument("--type-name", help="cloudvm's name for the type (default: --type)")
    group.add_argument("--vcpus", type=int, default=1)
    group.add_argument("--ram", type=_size, default=2**30, help="e.g. 4GiB (default 1GiB)")
    group.add_argument("--scratch", type=_size, default=0, help="included scratch disk")
    group.add_argument("--added-scratch", type=_size, default=0, help="extra scratch disk")
    group.add_argument("--price", type=float, default=0.0, help="per hour")
    group.add_argument("--preemptible", action="store_true")
    group.add_argument("--gpu-count", type=int, default=0)
    parser.add_argument("--image", required=True, help="the image id")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudvm",
        description="Create, list, reach and destroy cloud VMs through any cloudvm driver.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 cloud error, "
        "4 host key error; exec exits with the remote command's status.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("drivers", help="list the installed drivers")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = sub.add_parser("list", help="list the set's instances")
    _common(p, set_id_default=DEFAULT_SET_ID)
    p.add_argument("--tag", type=_tag, action="append", default=[], metavar="K=V")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("create", help="create one instance")
    _common(p, set_id_default=DEFAULT_SET_ID)
    _instance_type_options(p)
    p.add_argument("--tag", type=_tag, action="append", default=[], metavar="K=V")
    p.add_argument(
        "--init-command", default="", metavar="TEXT|@FILE", help="runs at first boot (< 1 KiB)"
    )
    p.add_argument("--public-key", type=Path, metavar="FILE", help="OpenSSH public key to allow")
    p.add_argument("--wait", action="store_true", help="wait until the instance has an address")
    p.add_argument("--timeout", type=_seconds, default=600.0, help="seconds --wait may take")
    p.add_argument("--json", action="store_true", help="print the instance as JSON")

    p = sub.add_parser("destroy", help="destroy instances")
    _common(p, set_id_default=DEFAULT_SET_ID)
    p.add_argument("ids", nargs="*", metavar="INSTANCE_ID")
    p.add_argument(
        "--all-with-tag",
        type=_tag,
        action="append",
        default=[],
        metavar="K=V",
        help="destroy every instance with all these tags",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser(
        "exec",
        help="run a command on an instance over SSH",
        description="Run a command on an instance over SSH, once its host key is proven. "
        "COMMAND and its arguments are joined with spaces into one command line "
        "(as OpenSSH's ssh does), which the remote user's shell runs: quote what "
        "that shell must see as one word, e.g. cloudvm exec ... ID -- 'ls -l \"my file\"'. "
        "Exits with the command's status.",
    )
    _common(p, set_id_default=DEFAULT_SET_ID)
    p.add_argument("--key", type=Path, required=True, metavar="FILE", help="SSH private key")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        help="seconds the command may run; then it is stopped (default: no limit)",
    )
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the host key when the driver cannot verify it",
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument(
        "remote_command",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="the command and its arguments (after --), joined with spaces",
    )

    p = sub.add_parser("cloudtest", help="run the conformance kit; exit 0 if it passes")
    _common(p, set_id_default=None)
    _instance_type_options(p)
    p.add_argument("--key", type=Path, metavar="FILE", help="SSH private key (default: a new one)")
    p.add_argument("--boot-probe-command", default="true")
    p.add_argument("--command", dest="extra_command", help="a command to run once booted")
    p.add_argument("--marker-path", default="cloudvm-conformance-marker")
    p.add_argument("--boot-timeout", type=_seconds, default=600.0)
    p.add_argument("--destroy-timeout", type=_seconds, default=300.0)
    p.add_argument("--poll-interval", type=_seconds, default=2.0)
    p.add_argument(
        "--cancel-delays",
        type=_delays,
        default=(0.0, 0.05, 0.5),
        metavar="S,S,...",
        help="seconds after which each create of the cancellation step is cancelled "
        "(default 0,0.05,0.5)",
    )
    p.add_argument("--destroy-existing", action="store_true")
    p.add_argument("--trust-on-first-use", action="store_true")
    return parser


# -- config and driver -----------------------------------------------------------


def _load_config(path: Path | None) -> Mapping[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            # Imported by name: PyYAML is optional and ships no type stubs.
            yaml = importlib.import_module("yaml")
        except ImportError:
            raise _UsageError(
                f"{path} is YAML, which needs PyYAML. Install it with: "
                "pip install 'aiocloudvm[yaml]' (or: pip install pyyaml), or give a JSON file"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise _UsageError(f"config file {path} is not valid YAML{where}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _UsageError(
                f"config file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _UsageError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


async def _open_set(args: argparse.Namespace, set_id: str | None = None) -> InstanceSet:
    try:
        driver = load_driver(args.driver)
    except LookupError as exc:
        raise _UsageError(str(exc)) from None
    config = _load_config(args.config)
    logger = logging.getLogger(f"cloudvm.cli.{args.driver}")
    return await driver.instance_set(
        config, InstanceSetID(set_id or args.set_id), {}, logger
    )  # ConfigError propagates to main (exit 2)


def _instance_type(args: argparse.Namespace) -> InstanceType:
    return InstanceType(
        name=args.type_name or args.provider_type,
        provider_type=args.provider_type,
        vcpus=args.vcpus,
        ram=args.ram,
        scratch=args.scratch + args.added_scratch,
        included_scratch=args.scratch,
        added_scratch=args.added_scratch,
        price=args.price,
        preemptible=args.preemptible,
        gpu_count=args.gpu_count,
    )


def _read_key(path: Path, *, public: bool) -> asyncssh.SSHKey:
    what = "public" if public else "private"
    try:
        if public:
            return asyncssh.read_public_key(path)
        return asyncssh.read_private_key(path)
    except OSError as exc:
        raise _UsageError(f"cannot read {what} key {path}: {exc.strerror or exc}") from None
    except (asyncssh.KeyImportError, ValueError):
        raise _UsageError(f"{path} is not an OpenSSH {what} key (or it is encrypted)") from None


# -- output --------------------------------------------------------------------

# Longer than any line cloudvm or a provider writes (a table row with 50
# tags of 128 + 256 characters, escaped), so only text that is nothing but
# garbage is cut.
_SHOWN_CHARS = 100_000


def _safe(text: object) -> str:
    """``text`` fit for a terminal: each line through :func:`printable`, so
    nothing in it is a control or escape character but the line breaks."""
    return "\n".join(printable(line, limit=_SHOWN_CHARS) for line in str(text).split("\n"))


def _json_text(data: object) -> str:
    """JSON for ``data`` that a terminal shows as it is: characters that
    :func:`printable` would escape (C1 controls, DEL, bidi and other format
    characters, which ``json`` leaves raw) become ``\\u`` escapes, so the
    text stays valid JSON with the same values."""
    text = json.dumps(data, ensure_ascii=False, indent=2)
    # json escapes C0 controls itself; a raw newline here is indentation.
    return "".join(
        json.dumps(ch)[1:-1] if ch != "\n" and printable(ch) != ch else ch for ch in text
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _tags_text(tags: Mapping[str, str], sep: str = ",") -> str:
    return sep.join(f"{k}={v}" for k, v in sorted(tags.items()))


def _hint(*argv: str) -> str:
    """A ``cloudvm`` command line for the user to paste: every word quoted
    for a POSIX shell, so nothing in it (a tag like ``$(...)``) runs."""
    return shlex.join(["cloudvm", *argv])


def _set_options(args: argparse.Namespace) -> list[str]:
    """The options that name the same set again: driver, config, set id."""
    options = ["--driver", args.driver]
    if args.config is not None:
        options += ["--config", str(args.config)]
    return [*options, "--set-id", args.set_id]


class _StatusLine:
    """One line of progress on a terminal, rewritten in place; nothing but
    the first and last lines when ``out`` is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._shown = 0  # characters on the line now

    def start(self, text: str) -> None:
        if self._tty:
            self._replace(text)
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def update(self, text: str) -> None:
        if self._tty:
            self._replace(text)
            self._out.flush()

    def finish(self, text: str) -> None:
        if self._tty:
            self._replace(text)
            self._shown = 0
        else:
            self._out.write(text)
        self._out.write("\n")
        self._out.flush()

    def _replace(self, text: str) -> None:
        # Blank the old text first: a shorter line would leave its tail.
        self._out.write("\r" + " " * self._shown + "\r" + text)
        self._shown = len(text)


def _as_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "provider_type": instance.provider_type,
        "address": instance.address,
        "remote_user": instance.remote_user,
        "tags": instance.tags,
    }


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    rows = [[_safe(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _unique(instances: list[Instance]) -> list[Instance]:
    seen: dict[InstanceID, Instance] = {}
    for instance in instances:
        seen.setdefault(instance.id, instance)
    return list(seen.values())


# -- the subcommands -------------------------------------------------------------


async def _cmd_list(args: argparse.Namespace) -> int:
    tags = dict(args.tag)
    async with await _open_set(args) as iset:
        instances = _unique(await iset.instances(tags or None))
    if args.json:
        print(_json_text([_as_json(i) for i in instances]))
    elif instances:
        rows = [("ID", "TYPE", "ADDRESS", "TAGS")]
        rows += [(i.id, i.provider_type, i.address or "-", _tags_text(i.tags)) for i in instances]
        _table(rows, sys.stdout)
    else:
        # On stderr: a script reading the table sees no rows, a person sees why.
        where = f" with tags {_tags_text(tags, ' ')}" if tags else ""
        print(_safe(f"no instances in set {args.set_id}{where}"), file=sys.stderr)
    return EXIT_OK


def _init_command(text: str) -> InitCommand:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return InitCommand(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _UsageError(f"cannot read init command file {path}: {exc.strerror}") from None
    return InitCommand(text)


async def _wait_booted(iset: InstanceSet, instance_id: InstanceID, timeout: float) -> Instance:
    status = _StatusLine(sys.stderr)
    shown_id = _safe(instance_id)
    started = anyio.current_time()
    status.start(f"waiting for {shown_id} to boot")
    try:
        with anyio.fail_after(timeout):
            while True:
                for instance in await iset.instances():
                    if instance.id == instance_id and instance.address:
                        return instance
                elapsed = anyio.current_time() - started
                status.update(f"waiting for {shown_id} to boot ... {elapsed:.0f} s")
                await anyio.sleep(0.2)
    except TimeoutError:
        raise _Failure(f"{instance_id} did not boot within {timeout:.0f} s") from None
    finally:
        status.finish(f"waited {anyio.current_time() - started:.1f} s for {shown_id}")


async def _cmd_create(args: argparse.Namespace) -> int:
    itype = _instance_type(args)
    init = _init_command(args.init_command)
    public_key = _read_key(args.public_key, public=True) if args.public_key else None
    tags: InstanceTags = dict(args.tag)
    check = _hint(
        "list", *_set_options(args), *(w for k, v in tags.items() for w in ("--tag", f"{k}={v}"))
    )
    async with await _open_set(args) as iset:
        try:
            instance = await iset.create(itype, ImageID(args.image), tags, init, public_key)
        except CloudError as exc:
            exc.add_note(f"the instance may exist anyway; check with: {check}")
            raise
        except anyio.get_cancelled_exc_class():
            args.interrupted_note = f"an instance may exist anyway; check with: {check}"
            raise
        if args.wait:
            try:
                instance = await _wait_booted(iset, instance.id, args.timeout)
            except anyio.get_cancelled_exc_class():
                destroy = _hint("destroy", *_set_options(args), instance.id)
                args.interrupted_note = (
                    f"{instance.id} exists and is still booting; destroy it with: {destroy}"
                )
                raise
    if args.json:
        print(_json_text(_as_json(instance)))
    else:
        print(_safe(instance.id + (f" {instance.address}" if instance.address else "")))
    return EXIT_OK


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise _UsageError(f"{question} needs confirmation; pass --yes to confirm")
    sys.stderr.write(f"{_safe(question)} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _cmd_destroy(args: argparse.Namespace) -> int:
    if not args.ids and not args.all_with_tag:
        raise _UsageError("give instance ids, or --all-with-tag K=V")
    async with await _open_set(args) as iset:
        by_id = {i.id: i for i in await iset.instances()}
        targets: dict[InstanceID, Instance] = {}
        missing = [i for i in args.ids if i not in by_id]
        if missing:
            raise _Failure(f"no instance {', '.join(missing)} in set {args.set_id}")
        targets.update((InstanceID(i), by_id[i]) for i in args.ids)
        if args.all_with_tag:
            tagged = _unique(await iset.instances(dict(args.all_with_tag)))
            wanted = " ".join(f"{k}={v}" for k, v in args.all_with_tag)
            if not tagged:
                shown = _safe(f"no instances in set {args.set_id} with tags {wanted}")
                print(shown, file=sys.stderr)
            elif not args.yes and not _confirm(
                f"destroy {_count(len(tagged), 'instance')} with tags {wanted} "
                f"({', '.join(i.id for i in tagged)})?"
            ):
                raise _Failure("nothing destroyed")
            targets.update((i.id, i) for i in tagged)
        for instance in targets.values():
            await instance.destroy()
            print(_safe(f"destroyed {instance.id}"))
    return EXIT_OK


class _Watched(DelegatingInstance):
    """The instance as the executor's target, noting when a connection got as
    far as host-key verification (so it was up and logged in): a TimeoutError
    after that is the command's own."""

    def __init__(self, instance: Instance) -> None:
        super().__init__(instance)
        self.logged_in = False

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        self.logged_in = True
        await self._wrapped.verify_host_key(key, conn)


async def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.remote_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _UsageError("give the command to run after the instance id")
    key = _read_key(args.key, public=False)
    # Joined as OpenSSH's ssh joins them: the remote shell splits the words.
    cmd = " ".join(command)
    # The set stays open while the command runs: verifying the host may ask the cloud.
    async with await _open_set(args) as iset:
        found = [i for i in await iset.instances() if i.id == args.instance_id]
        if not found:
            raise _Failure(f"no instance {args.instance_id} in set {args.set_id}")
        target = _Watched(found[0])
        if not target.address:
            raise _Failure(f"{target.id} has no address yet (it is booting); try again later")
        async with SSHExecutor(
            target, signers=[key], trust_on_first_use=args.trust_on_first_use
        ) as executor:
            try:
                stdout, stderr = await executor.execute(cmd, timeout=args.timeout)
                status = EXIT_OK
            except ExecuteError as exc:
                stdout, stderr = exc.stdout, exc.stderr
                status = exc.exit_status if exc.exit_status > 0 else 255
            except asyncssh.PermissionDenied:
                raise _Failure(
                    f"the host refused the key for user {target.remote_user} ({args.key})"
                ) from None
            except TimeoutError:
                if target.logged_in and args.timeout is not None:
                    raise _Failure(
                        f"the command did not finish within {args.timeout:g} s (it was stopped)"
                    ) from None
                raise
    sys.stdout.buffer.write(stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(stderr)
    sys.stderr.flush()
    return status


async def _cmd_cloudtest(args: argparse.Namespace) -> int:
    from .testing.conformance import ConformanceConfig, StepResult, run_conformance

    try:
        driver = load_driver(args.driver)
    except LookupError as exc:
        raise _UsageError(str(exc)) from None
    if args.key is not None:
        key = _read_key(args.key, public=False)
    else:
        key = asyncssh.generate_private_key("ssh-ed25519")
    config = ConformanceConfig(
        driver=driver,
        config=_load_config(args.config),
        image_id=ImageID(args.image),
        instance_type=_instance_type(args),
        ssh_key=key,
        instance_set_id=InstanceSetID(args.set_id) if args.set_id else None,
        destroy_existing=args.destroy_existing,
        boot_probe_command=args.boot_probe_command,
        extra_command=args.extra_command,
        marker_path=args.marker_path,
        trust_on_first_use=args.trust_on_first_use,
        boot_timeout=args.boot_timeout,
        destroy_timeout=args.destroy_timeout,
        poll_interval=args.poll_interval,
        cancel_delays=args.cancel_delays,
        logger=logging.getLogger("cloudvm.cli.cloudtest"),
    )

    def show(result: StepResult) -> None:
        print(_safe(result), flush=True)

    print(_safe(f"cloudtest: driver {args.driver}"), flush=True)
    report = await run_conformance(config, progress=show)
    verdict = "PASSED" if report.ok else f"FAILED: {', '.join(s.name for s in report.failed)}"
    print(_safe(f"cloudtest {verdict} (instance set {report.instance_set_id})"), flush=True)
    return EXIT_OK if report.ok else EXIT_FAILURE


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "list": _cmd_list,
    "create": _cmd_create,
    "destroy": _cmd_destroy,
    "exec": _cmd_exec,
    "cloudtest": _cmd_cloudtest,
}


def _error(message: str, code: int) -> int:
    print(_safe(f"cloudvm: error: {message}"), file=sys.stderr)
    return code


def _with_notes(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", [])
    return "\n".join([str(exc) or type(exc).__name__, *notes])


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- what errors mean -----------------------------------------------------------

_EXTRA_KEY = re.compile(r"(?:^|; |: )([A-Za-z0-9_.-]+): Extra inputs are not permitted")
_MISSING_KEY = re.compile(r"(?:^|; |: )([A-Za-z0-9_.-]+): Field required")


def _config_problem(exc: ConfigError) -> str:
    """The driver's message, with the closest valid key after each unknown one.

    The only valid keys the message itself names are the required ones it
    misses (a typo of ``region`` gives ``regoin: Extra inputs...`` and
    ``region: Field required``); the message never holds config values."""
    message = str(exc)
    if "did you mean" in message:  # the driver already suggests
        return message
    missing = _MISSING_KEY.findall(message)

    def suggest(match: re.Match[str]) -> str:
        close = difflib.get_close_matches(match.group(1), missing, n=1)
        return match.group(0) + (f" (did you mean {close[0]!r}?)" if close else "")

    return _EXTRA_KEY.sub(suggest, message)


def _no_aws_credentials(exc: BaseException) -> bool:
    """Whether botocore's NoCredentialsError is behind ``exc`` (the ec2
    driver chains it; the core does not import botocore)."""
    seen: BaseException | None = exc
    while seen is not None:
        kind = type(seen)
        if kind.__name__ == "NoCredentialsError" and kind.__module__.startswith("botocore"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _aws_places(config: Mapping[str, Any]) -> str:
    """Where botocore's default chain looked for credentials, in its order,
    as this process's environment and the config pointed it."""
    env = os.environ
    credentials = os.path.expanduser(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    aws_config = os.path.expanduser(env.get("AWS_CONFIG_FILE", "~/.aws/config"))
    profile = config.get("profile") or env.get("AWS_PROFILE") or "default"
    imds = (
        "disabled by AWS_EC2_METADATA_DISABLED"
        if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        else "no credentials there, or no answer"
    )

    def given(*names: str) -> str:
        present = [name for name in names if env.get(name)]
        return f"only {', '.join(present)} set" if present else "not set"

    container = given(
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    )

    return (
        "the config (access_key_id and secret_access_key, or profile: none given); "
        f"the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: "
        f"{given('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY')}); "
        f"the shared credentials file {credentials} and the AWS config file {aws_config} "
        f"(profile {profile!r}); "
        "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI: "
        f"{container}); "
        f"the instance metadata service ({imds})"
    )


def _cloud_error(args: argparse.Namespace, exc: CloudError) -> int:
    if _no_aws_credentials(exc):
        try:
            config = _load_config(args.config)
        except _UsageError:  # pragma: no cover - it was read a moment ago
            config = {}
        return _error(
            f"no AWS credentials were found. Looked in: {_aws_places(config)}. "
            "Give access_key_id and secret_access_key or a profile in the config, "
            "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            EXIT_USAGE,
        )
    code = f" [{exc.code}]" if exc.code else ""
    return _error(f"{type(exc).__name__}{code}: {_with_notes(exc)}", EXIT_CLOUD_ERROR)


class _SafeFormatter(logging.Formatter):
    """Log lines fit for a terminal: a record may quote a server or a cloud."""

    def format(self, record: logging.LogRecord) -> str:
        return _safe(super().format(record))


def _log_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("cloudvm: %(levelname)s: %(name)s: %(message)s"))
    return handler


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``cloudvm`` command with ``argv`` (default: ``sys.argv[1:]``) and
    exit with its status (see the module docstring for the codes)."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the ``cloudvm`` command and return its exit status."""
    args = _parser().parse_args(argv)
    if args.command == "drivers":
        names = available_drivers()
        if args.json:
            print(_json_text(names))
        else:
            print(_safe("\n".join(names)))
        return EXIT_OK
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, handlers=[_log_handler()]
    )
    if not args.verbose:
        # The kit reports its steps itself; its log would repeat every failure.
        logging.getLogger("cloudvm.cli.cloudtest").setLevel(logging.ERROR)
    # What a Ctrl-C leaves behind, set by the command while it matters.
    args.interrupted_note = None
    try:
        return anyio.run(_COMMANDS[args.command], args, backend="asyncio")
    except KeyboardInterrupt:
        note = f": {args.interrupted_note}" if args.interrupted_note else ""
        return _error(f"interrupted{note}", EXIT_INTERRUPTED)
    except _UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return _error(_config_problem(exc), EXIT_USAGE)
    except _Failure as exc:
        return _error(str(exc), EXIT_FAILURE)
    except HostKeyError as exc:
        return _error(f"host key: {_with_notes(exc)}", EXIT_HOST_KEY_ERROR)
    except CloudError as exc:
        return _cloud_error(args, exc)
    except (ValueError, TypeError) as exc:
        # Drivers reject invalid input (tags, init command) before any call.
        return _error(f"invalid input: {exc}", EXIT_USAGE)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return _error(f"cannot reach the host: {_describe(exc)}", EXIT_FAILURE)
