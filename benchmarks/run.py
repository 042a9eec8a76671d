"""Run cloudvm's benchmarks side by side with their baselines and peers.

    python benchmarks/run.py [--quick] [--out DIR] [--case NAME ...]

Each case warms up, then runs its variants interleaved (rotating order) for
several rounds in this one process, and reports the median with min-max.
The table is printed; ``DIR`` (default ``benchmarks/results``) receives one
JSON file per case, ``summary.json`` and ``growth.png`` (how each cost grows
with N, when matplotlib is installed). ``--quick`` runs every case with tiny N
and one round: a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import _azure_listing
import _cloud
import _fanout
import _gce_listing
import _latency
import _loopback
import _memory
import _pool
import _throttle
import anyio
from _report import machine, plot, table, write_json
from _stats import CaseResult

CASES: dict[str, Callable[..., Awaitable[CaseResult]]] = {
    "latency": _latency.run,
    "fanout": _fanout.run,
    "throttle": _throttle.run,
    "memory": _memory.run,
    "cloud": _cloud.run,
    "pool": _pool.run,
    "loopback": _loopback.run,
    "gce-listing": _gce_listing.run,
    "azure-listing": _azure_listing.run,
}
DEFAULT_OUT = Path(__file__).parent / "results"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, one round (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument(
        "--case", action="append", choices=sorted(CASES), help="run only these (repeatable)"
    )
    return parser.parse_args(argv)


async def _run_all(names: list[str], quick: bool) -> list[CaseResult]:
    results = []
    for name in names:
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            result = await CASES[name](quick=quick)
        except Exception as exc:  # one broken case must not hide the others' numbers
            traceback.print_exc()
            result = CaseResult(name, name, skipped=f"failed: {type(exc).__name__}: {exc}")
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    names = args.case or list(CASES)
    info = machine()
    print(
        f"machine: {info['cpu']} x{info['cores']}, {info['memory']}, "
        f"{info['platform']}, Python {info['python']}"
    )
    results = anyio.run(_run_all, names, args.quick)
    print()
    print(table(results))
    written = write_json(args.out, results, info)
    picture = plot(args.out, results)
    print()
    print("results:", ", ".join(str(path) for path in written))
    print("plot:", picture if picture is not None else "none (matplotlib not installed)")
    failed = [r.name for r in results if r.skipped and r.skipped.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
