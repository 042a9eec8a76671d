"""The ``cloudvm`` command: drive any installed driver from a shell.

Subcommands: ``drivers``, ``list``, ``create``, ``destroy``, ``exec`` and
``cloudtest`` (the conformance kit). Every one but ``drivers`` takes
``--driver NAME``, ``--config FILE`` (JSON, or YAML with PyYAML installed) and
``--set-id ID``.

Exit codes (scripts may rely on them):

===== ==================================================================
0     success
1     failure: conformance failed, no such instance, host unreachable,
      timed out, confirmation declined
2     usage or config error (bad arguments, unreadable or invalid config,
      unknown driver, invalid tags)
3     cloud error (any CloudError but the two below)
4     host key error: the SSH server could not be proven to be the instance
N     ``exec``: the remote command's own exit status
130   interrupted
===== ==================================================================

Expected errors print one line on stderr and no traceback. Config values are
never printed (they may be credentials).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import asyncssh

from ._drivers import available_drivers, load_driver
from ._errors import CloudError, ConfigError, ExecuteError, HostKeyError
from ._executor import SSHExecutor
from ._protocols import Instance, InstanceSet
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

    p = sub.add_parser("exec", help="run a command on an instance over SSH")
    _common(p, set_id_default=DEFAULT_SET_ID)
    p.add_argument("--key", type=Path, required=True, metavar="FILE", help="SSH private key")
    p.add_argument("--timeout", type=_seconds, default=None, help="command timeout in seconds")
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="accept the host key when the driver cannot verify it",
    )
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument("remote_command", nargs=argparse.REMAINDER, metavar="COMMAND")

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
                f"{path} is YAML, which needs PyYAML. Install it with: pip install pyyaml "
                "(or: pip install 'cloudvm[yaml]'), or give a JSON file"
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


def _tags_text(tags: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def _as_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "provider_type": instance.provider_type,
        "address": instance.address,
        "remote_user": instance.remote_user,
        "tags": instance.tags,
    }


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
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
    async with await _open_set(args) as iset:
        instances = _unique(await iset.instances(dict(args.tag) or None))
    if args.json:
        json.dump([_as_json(i) for i in instances], sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif instances:
        rows = [("ID", "TYPE", "ADDRESS", "TAGS")]
        rows += [(i.id, i.provider_type, i.address or "-", _tags_text(i.tags)) for i in instances]
        _table(rows, sys.stdout)
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
    tty = sys.stderr.isatty()
    started = anyio.current_time()
    sys.stderr.write(f"waiting for {instance_id} to boot")
    sys.stderr.write("" if tty else "\n")
    sys.stderr.flush()
    try:
        with anyio.fail_after(timeout):
            while True:
                for instance in await iset.instances():
                    if instance.id == instance_id and instance.address:
                        return instance
                if tty:
                    elapsed = anyio.current_time() - started
                    sys.stderr.write(f"\rwaiting for {instance_id} to boot ... {elapsed:.0f} s")
                    sys.stderr.flush()
                await anyio.sleep(0.2)
    except TimeoutError:
        raise _Failure(f"{instance_id} did not boot within {timeout:.0f} s") from None
    finally:
        elapsed = anyio.current_time() - started
        sys.stderr.write(f"{chr(13) if tty else ''}waited {elapsed:.1f} s for {instance_id}\n")


async def _cmd_create(args: argparse.Namespace) -> int:
    itype = _instance_type(args)
    init = _init_command(args.init_command)
    public_key = _read_key(args.public_key, public=True) if args.public_key else None
    tags: InstanceTags = dict(args.tag)
    async with await _open_set(args) as iset:
        try:
            instance = await iset.create(itype, ImageID(args.image), tags, init, public_key)
        except CloudError as exc:
            tag_args = " ".join(f"--tag {k}={v}" for k, v in tags.items())
            exc.add_note(
                f"the instance may exist anyway; check with: cloudvm list --driver {args.driver} "
                f"--set-id {args.set_id} {tag_args}".rstrip()
            )
            raise
        if args.wait:
            instance = await _wait_booted(iset, instance.id, args.timeout)
    if args.json:
        json.dump(_as_json(instance), sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        print(instance.id + (f" {instance.address}" if instance.address else ""))
    return EXIT_OK


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise _UsageError(f"{question} needs confirmation; pass --yes to confirm")
    sys.stderr.write(f"{question} [y/N] ")
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
                print(f"no instance in set {args.set_id} has tags {wanted}", file=sys.stderr)
            elif not args.yes and not _confirm(
                f"destroy {len(tagged)} instances with tags {wanted} "
                f"({', '.join(i.id for i in tagged)})?"
            ):
                raise _Failure("nothing destroyed")
            targets.update((i.id, i) for i in tagged)
        for instance in targets.values():
            await instance.destroy()
            print(f"destroyed {instance.id}")
    return EXIT_OK


async def _cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.remote_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _UsageError("give the command to run after the instance id")
    key = _read_key(args.key, public=False)
    async with await _open_set(args) as iset:
        found = [i for i in await iset.instances() if i.id == args.instance_id]
    if not found:
        raise _Failure(f"no instance {args.instance_id} in set {args.set_id}")
    instance = found[0]
    if not instance.address:
        raise _Failure(f"{instance.id} has no address yet (it is booting); try again later")
    cmd = " ".join(command)
    async with SSHExecutor(
        instance, signers=[key], trust_on_first_use=args.trust_on_first_use
    ) as executor:
        try:
            stdout, stderr = await executor.execute(cmd, timeout=args.timeout)
            status = EXIT_OK
        except ExecuteError as exc:
            stdout, stderr = exc.stdout, exc.stderr
            status = exc.exit_status if exc.exit_status > 0 else 255
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
        logger=logging.getLogger("cloudvm.cli.cloudtest"),
    )

    def show(result: StepResult) -> None:
        print(result, flush=True)

    print(f"cloudtest: driver {args.driver}", flush=True)
    report = await run_conformance(config, progress=show)
    verdict = "PASSED" if report.ok else f"FAILED: {', '.join(s.name for s in report.failed)}"
    print(f"cloudtest {verdict} (instance set {report.instance_set_id})", flush=True)
    return EXIT_OK if report.ok else EXIT_FAILURE


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "list": _cmd_list,
    "create": _cmd_create,
    "destroy": _cmd_destroy,
    "exec": _cmd_exec,
    "cloudtest": _cmd_cloudtest,
}


def _error(message: str, code: int) -> int:
    print(f"cloudvm: error: {message}", file=sys.stderr)
    return code


def _with_notes(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", [])
    return "\n".join([str(exc) or type(exc).__name__, *notes])


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
            print(json.dumps(names))
        else:
            print("\n".join(names))
        return EXIT_OK
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="cloudvm: %(levelname)s: %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # The kit reports its steps itself; its log would repeat every failure.
        logging.getLogger("cloudvm.cli.cloudtest").setLevel(logging.ERROR)
    try:
        return anyio.run(_COMMANDS[args.command], args, backend="asyncio")
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED)
    except _UsageError as exc:
        return _error(str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return _error(str(exc), EXIT_USAGE)
    except _Failure as exc:
        return _error(str(exc), EXIT_FAILURE)
    except HostKeyError as exc:
        return _error(f"host key: {_with_notes(exc)}", EXIT_HOST_KEY_ERROR)
    except CloudError as exc:
        code = f" [{exc.code}]" if exc.code else ""
        return _error(f"{type(exc).__name__}{code}: {_with_notes(exc)}", EXIT_CLOUD_ERROR)
    except (ValueError, TypeError) as exc:
        # Drivers reject invalid input (tags, init command) before any call.
        return _error(f"invalid input: {exc}", EXIT_USAGE)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        return _error(f"cannot reach the host: {_describe(exc)}", EXIT_FAILURE)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
