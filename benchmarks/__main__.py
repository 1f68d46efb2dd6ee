"""python -m benchmarks [--quick] [--only NAME ...]: ratios of als's operations to bare baselines."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from ._harness import Result, measure, pin_to_one_cpu
from .cases import GROUPS

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (under a minute)")
    parser.add_argument("--only", nargs="+", choices=sorted(GROUPS), help="run only these sets")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument(
        "--json", type=Path, help="where to write raw figures (default: results/ on full runs)"
    )
    args = parser.parse_args(argv)

    cpu = None if args.no_pin else pin_to_one_cpu()
    repetitions, divisor = (7, 10) if args.quick else (21, 1)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, pinned to CPU {cpu}; "
        f"{repetitions} interleaved repetitions per group{' (quick)' if args.quick else ''}\n"
    )
    print(f"{'operation':<44} {'variant':<26} {'per op':>10} {'ratio':>7} {'IQR':>13} {'target':>7}")

    results: list[Result] = []
    groups = [group for name in (args.only or GROUPS) for group in GROUPS[name]()]
    for group in groups:
        number = max(1, group.number // divisor)
        for result in measure(group, repetitions, number):
            results.append(result)
            target = "" if result.target is None else f"<={result.target:.2f}"
            verdict = "" if result.met is None else ("  ok" if result.met else "  MISSED")
            per_op = sorted(result.per_op_ns)[len(result.per_op_ns) // 2] / 1000
            print(
                f"{group.name:<44} {result.variant:<26} {per_op:>8.2f}us {result.ratio:>6.3f}x"
                f" {result.quartiles[0]:>6.3f}-{result.quartiles[1]:<6.3f} {target:>7}{verdict}"
            )

    missed = [r for r in results if r.met is False]
    checked = [r for r in results if r.met is not None]
    print(
        f"\n{len(checked) - len(missed)} of {len(checked)} targets met"
        + (f"; missed: {', '.join(f'{r.group} ({r.variant})' for r in missed)}" if missed else "")
    )

    path = args.json
    if path is None and not args.quick:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS / f"{stamp}-py{sys.version_info.major}{sys.version_info.minor}.json"
    if path is not None:
        payload = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "pinned_cpu": cpu,
            "repetitions": repetitions,
            "results": [
                {
                    "group": r.group,
                    "variant": r.variant,
                    "baseline": r.baseline,
                    "target": r.target,
                    "median_ratio": r.ratio,
                    "ratios": r.ratios,
                    "per_op_ns": r.per_op_ns,
                }
                for r in results
            ],
        }
        path.write_text(json.dumps(payload, indent=1))
        print(f"raw figures: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
