"""Sessions: tests, lint, typecheck, demo (and bench once benchmarks exist).

``nox -s tests`` installs cloudvm and every driver under ``drivers/`` with
their test extras into a fresh virtualenv, makes sure OpenSSH's ``sshd`` is
available (installing Debian's openssh-server with apt-get when running as
root), and runs the whole suite.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"

ROOT = Path(__file__).parent
DRIVERS = sorted(p.parent for p in ROOT.glob("drivers/*/pyproject.toml"))
SSHD = "/usr/sbin/sshd"


def _install_everything(session: nox.Session) -> None:
    # One pip run, so that the drivers' "cloudvm" requirement resolves to this tree.
    editables = [".[test]", *(f"{driver}[test]" for driver in DRIVERS)]
    session.install(*(arg for path in editables for arg in ("-e", path)))


def _ensure_sshd(session: nox.Session) -> bool:
    """True when OpenSSH's sshd can run here (installing it if we may)."""
    if os.path.exists(SSHD):
        return True
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run(
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "openssh-server",
            external=True,
            env=env,
        )
        return os.path.exists(SSHD)
    session.warn("sshd is not installed and cannot be installed here: OpenSSH tests will skip")
    return False


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: core, loopback, fake, and every driver."""
    _install_everything(session)
    env = {"CLOUDVM_REQUIRE_SSHD": "1"} if _ensure_sshd(session) else {}
    paths = ["tests", *(str(d.relative_to(ROOT) / "tests") for d in DRIVERS)]
    session.run("python", "-m", "pytest", *paths, *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.17,<0.18")  # a newer ruff may format differently
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core, tests, examples and every driver."""
    _install_everything(session)
    session.install("mypy>=1.10", "nox")  # nox: the noxfile is type-checked too
    session.run("mypy")
    for driver in DRIVERS:
        session.run("mypy", "--strict", str(driver.relative_to(ROOT) / f"cloudvm_{driver.name}"))


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart on the loopback cloud."""
    session.install(".")
    session.run("python", "examples/quickstart.py")


# What the bench needs beyond cloudvm; each may fail to install, and the case
# that needs it then says so instead of the whole session failing.
_BENCH_OPTIONAL = ("parallel-ssh", "matplotlib", "pyinstrument")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side (benchmarks/run.py): command latency, SSH fan-out,
    cloud-call overhead, throughput under throttling, memory. Arguments after
    ``--`` go to run.py (``nox -s bench -- --quick`` for a smoke run)."""
    ec2 = ROOT / "drivers" / "ec2"
    editables = ["-e", "."]
    if (ec2 / "pyproject.toml").exists():
        # One pip run, so that the driver's "cloudvm" requirement resolves to this tree.
        editables += ["-e", str(ec2.relative_to(ROOT)), "moto[server]>=5.0"]
    session.install(*editables)
    for package in _BENCH_OPTIONAL:
        try:
            session.install(package)
        except nox.command.CommandFailed:
            session.warn(f"{package} could not be installed: the cases that need it will skip")
    _ensure_sshd(session)
    session.run("python", "benchmarks/run.py", *session.posargs)
