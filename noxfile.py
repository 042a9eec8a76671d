"""Sessions: tests, lint, typecheck, docs, build, demo, bench.

``nox -s tests`` installs cloudvm and every driver under ``drivers/`` with
their test extras into a fresh virtualenv, makes sure OpenSSH's ``sshd`` is
available (installing Debian's openssh-server with apt-get when running as
root, without enabling or starting the system's SSH service), and runs the
whole suite. ``nox -s build`` builds and checks the four distributions and
tries each wheel in a fresh virtualenv; ``nox -s docs`` builds the
documentation site. nox uses uv when it is installed, else virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs", "build"]
nox.options.default_venv_backend = "uv|virtualenv"

ROOT = Path(__file__).parent
DRIVERS = sorted(p.parent for p in ROOT.glob("drivers/*/pyproject.toml"))
SSHD = "/usr/sbin/sshd"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# invoke-rc.d's answer "action forbidden by policy" (101) to every request.
_POLICY = "#!/bin/sh\n# cloudvm's noxfile: no service starts during its apt-get.\nexit 101\n"

# The documentation toolchain, pinned: a newer mkdocstrings or theme may warn
# about things these accept, and the docs build treats warnings as errors.
DOCS_REQUIREMENTS = (
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.2",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "griffelib==2.4.1",
    "pymdown-extensions==13.1.2",
    "ruff>=0.17,<0.18",  # mkdocstrings formats signatures with it
)
RUFF = "ruff>=0.17,<0.18"  # a newer ruff may format differently


def _install_everything(session: nox.Session) -> None:
    # One install run, so that the drivers' "aiocloudvm" requirement resolves to this tree.
    editables = [".[test]", *(f"{driver}[test]" for driver in DRIVERS)]
    session.install(*(arg for path in editables for arg in ("-e", path)))


@contextlib.contextmanager
def _services_kept_down() -> Iterator[None]:
    """While inside, Debian's maintainer scripts may not start or restart any
    service (a policy-rc.d that exits 101); afterwards the system's own
    policy-rc.d, if it had one, is back as it was."""
    saved = POLICY_RC_D.read_bytes() if POLICY_RC_D.exists() else None
    mode = POLICY_RC_D.stat().st_mode if saved is not None else None
    POLICY_RC_D.write_text(_POLICY)
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        if saved is None:
            POLICY_RC_D.unlink(missing_ok=True)
        else:
            POLICY_RC_D.write_bytes(saved)
            assert mode is not None
            POLICY_RC_D.chmod(stat.S_IMODE(mode))


def _ensure_sshd(session: nox.Session) -> bool:
    """True when OpenSSH's sshd can run here (installing it if we may).

    The tests start their own sshd on a free port; the package's system
    service (ssh.service, port 22) is neither started nor left enabled.
    """
    if os.path.exists(SSHD):
        return True
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        with _services_kept_down():
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
        if shutil.which("systemctl"):
            # The package enables ssh.service for the next boot: undo that.
            result = subprocess.run(
                ["systemctl", "disable", "ssh"], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                session.warn(f"systemctl disable ssh failed: {result.stderr.strip()}")
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
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the core, tests, examples, the documentation's code
    and every driver with its tests."""
    _install_everything(session)
    session.install("mypy>=1.10", "nox", *DOCS_REQUIREMENTS)  # the noxfile and docs hooks too
    session.run("mypy")
    session.run("mypy", "--strict", "docs/_hooks")
    for driver in DRIVERS:
        where = driver.relative_to(ROOT)
        session.run("mypy", "--strict", str(where / f"cloudvm_{driver.name}"), str(where / "tests"))


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs-material + mkdocstrings) into
    build/site/, warnings as errors, after running the code it shows.
    ``nox -s docs -- serve`` serves it while editing instead."""
    _install_everything(session)  # the config tables are read from the drivers' models
    session.install(*DOCS_REQUIREMENTS)
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env=env)
        return
    snippets = ROOT / "docs" / "snippets"
    for program in sorted(snippets.glob("[!_]*.py")):
        if not program.name.startswith("test_"):
            session.run("python", str(program.relative_to(ROOT)))
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", str(snippets))
    session.run("mkdocs", "build", "--strict", *session.posargs, env=env)


def _fresh_venv(session: nox.Session, where: Path) -> Path:
    """A new, empty virtualenv at ``where``, made by uv; its python."""
    shutil.rmtree(where, ignore_errors=True)
    python = str(Path(session.virtualenv.bin) / "python")
    session.run("uv", "venv", "-q", "--python", python, str(where))
    return where / "bin" / "python"


def _install_into(session: nox.Session, python: Path, *wheels: Path) -> None:
    # uv, whatever the session's backend: pip would take a minute per venv.
    session.run("uv", "pip", "install", "-q", "--python", str(python), *map(str, wheels))


def _try_wheels(session: nox.Session, where: Path, wheels: list[Path], drivers: list[str]) -> None:
    """Install ``wheels`` alone in a fresh venv and check, from outside the
    source tree, that the code is the installed one, each driver is listed by
    ``cloudvm drivers`` and loads (its SDK imports), and py.typed shipped."""
    python = _fresh_venv(session, where)
    _install_into(session, python, *wheels)
    bin_dir = python.parent
    listed = session.run(str(bin_dir / "cloudvm"), "drivers", external=True, silent=True)
    assert isinstance(listed, str)
    missing = sorted(set(drivers) - set(listed.split()))
    if missing:
        session.error(f"`cloudvm drivers` in {where.name} does not list {missing}: {listed!r}")
    separate = [name for name in drivers if (ROOT / "drivers" / name).is_dir()]
    packages = ["cloudvm", *(f"cloudvm_{name}" for name in separate)]
    check = (
        "import importlib, importlib.resources, sys, cloudvm\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(sys.prefix), (name, module.__file__)\n"
        "    assert (importlib.resources.files(name) / 'py.typed').is_file(), name\n"
        f"for driver in {drivers!r}:\n"
        "    cloudvm.load_driver(driver)\n"
        "assert cloudvm.__version__ != '0+unknown', cloudvm.__version__\n"
    )
    session.run(str(python), "-I", "-c", check, *packages, external=True, silent=True)


@nox.session
def build(session: nox.Session) -> None:
    """Wheels and sdists of the core and every driver into dist/ (each wheel
    built from its sdist, in an isolated environment), checked with twine
    --strict; then each wheel in a fresh virtualenv: the core alone runs
    ``cloudvm drivers`` and the quickstart, and each driver with the core
    loads and is listed. uv makes the environments, so it takes a minute or
    two rather than five."""
    session.install("build[uv]>=1.2", "twine>=6.1", "uv")
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    for old in dist.glob("aiocloudvm*"):
        old.unlink()
    for project in [ROOT, *DRIVERS]:
        session.run("python", "-m", "build", "-q", "--installer=uv", "-o", str(dist), str(project))
    artifacts = sorted(dist.glob("aiocloudvm*"))
    session.run("twine", "check", "--strict", *map(str, artifacts))

    def wheel(distribution: str) -> Path:
        (found,) = dist.glob(f"{distribution}-*.whl")
        return found

    core = wheel("aiocloudvm")
    trials = Path(session.create_tmp()).resolve()
    _try_wheels(session, trials / "core", [core], ["loopback", "fake"])
    with session.chdir(trials):  # the installed package, not the source tree's
        python = trials / "core" / "bin" / "python"
        session.run(str(python), "-I", str(ROOT / "examples" / "quickstart.py"), external=True)
    for driver in DRIVERS:
        wheels = [core, wheel(f"aiocloudvm_{driver.name}")]
        _try_wheels(session, trials / driver.name, wheels, [driver.name, "loopback"])


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
    # Every driver with its test extras: the listing cases run each driver
    # against the local API its tests use (moto, the GCE and ARM fakes).
    _install_everything(session)
    for package in _BENCH_OPTIONAL:
        try:
            session.install(package)
        except nox.command.CommandFailed:
            session.warn(f"{package} could not be installed: the cases that need it will skip")
    _ensure_sshd(session)
    session.run("python", "benchmarks/run.py", *session.posargs)
