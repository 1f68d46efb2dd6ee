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
from .memory import MemoryResult, pending_task_memory
from .web import against_peer, cpu_per_op_ns

RESULTS = Path(__file__).resolve().parent / "results"
SETS = [*GROUPS, "memory"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (under a minute)")
    parser.add_argument("--only", nargs="+", choices=SETS, help="run only these sets")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument(
        "--json", type=Path, help="where to write raw figures (default: results/ on full runs)"
    )
    parser.add_argument(
        "--chart", type=Path, help="where to write a PNG chart (default: beside the JSON; needs matplotlib)"
    )
    args = parser.parse_args(argv)
    sets = args.only or SETS

    cpu = None if args.no_pin else pin_to_one_cpu()
    repetitions, divisor = (7, 10) if args.quick else (21, 1)
    title = (
        f"Python {platform.python_version()} on {platform.machine()}, pinned to CPU {cpu}; "
        f"{repetitions} interleaved repetitions per group{' (quick)' if args.quick else ''}"
    )
    print(title + "\n")

    results: list[Result] = []
    groups = [group for name in sets if name in GROUPS for group in GROUPS[name]()]
    if groups:
        print(f"{'operation':<44} {'variant':<26} {'per op':>10} {'ratio':>7} {'IQR':>13} {'target':>7}")
    for group in groups:
        number = max(1, group.number // divisor)
        for result in measure(group, repetitions, number):
            results.append(result)
            target = "" if result.target is None else f"<={result.target:.2f}"
            print(
                f"{group.name:<44} {result.variant:<26} {result.per_op_median / 1000:>8.2f}us"
                f" {result.ratio:>6.3f}x {result.quartiles[0]:>6.3f}-{result.quartiles[1]:<6.3f}"
                f" {target:>7}{_verdict(result.met)}"
            )

    halves = _against_opentelemetry(results) + against_peer(results)

    memory = _memory() if "memory" in sets else []

    judged = [
        *((f"{r.group} ({r.variant})", r.met) for r in results),
        *halves,
        *((f"memory ({m.variant})", m.met) for m in memory),
    ]
    checked = [name for name, met in judged if met is not None]
    missed = [name for name, met in judged if met is False]
    print(
        f"\nSUMMARY: {len(checked) - len(missed)} of {len(checked)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + f" (Python {platform.python_version()}{', quick' if args.quick else ''})"
    )

    json_path = args.json
    if json_path is None and not args.quick:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        json_path = RESULTS / f"{stamp}-py{sys.version_info.major}{sys.version_info.minor}.json"
    if json_path is not None:
        json_path.write_text(json.dumps(_payload(results, memory, cpu, repetitions), indent=1))
        print(f"raw figures: {json_path}")

    chart_path = args.chart or (json_path.with_suffix(".png") if json_path is not None else None)
    if chart_path is not None:
        try:
            from .chart import write_chart  # noqa: PLC0415
        except ImportError:
            print("no chart: matplotlib is not installed (pip install -e .[bench])")
        else:
            write_chart(results, memory, chart_path, title)
            print(f"chart: {chart_path}")
    return 0


def _against_opentelemetry(results: list[Result]) -> list[tuple[str, bool]]:
    """The patch's second target: at most half of OpenTelemetry's overhead on the same hop."""
    halves: list[tuple[str, bool]] = []
    by_group: dict[str, dict[str, Result]] = {}
    for result in results:
        by_group.setdefault(result.group, {})[result.variant] = result
    for group_name, variants in by_group.items():
        ours, theirs = variants.get("als.patch()"), variants.get("OpenTelemetry")
        if ours is None or theirs is None:
            continue
        met = ours.ratio - 1 <= (theirs.ratio - 1) / 2
        if not halves:
            print("\nals.patch() against OpenTelemetry's threading instrumentation (overhead over unpatched)")
        halves.append((f"{group_name} (half of OpenTelemetry's overhead)", met))
        print(
            f"{group_name:<44} {(ours.ratio - 1) * 100:>+6.1f}% vs {(theirs.ratio - 1) * 100:>+6.1f}%"
            f"  {'<= half' if met else '> half'}{_verdict(met)}"
        )
    return halves


def _memory() -> list[MemoryResult]:
    memory = pending_task_memory()
    print(f"\n{'memory held per pending task':<44} {'bytes':>10} {'over bare':>10} {'target':>8}")
    for m in memory:
        target = "" if m.target is None else f"<=+{m.target:.0f}"
        print(
            f"{m.variant:<44} {m.bytes_per_task:>10,.0f} {m.over_bare:>+10.0f} {target:>8}{_verdict(m.met)}"
        )
    return memory


def _verdict(met: bool | None) -> str:
    return "" if met is None else ("  ok" if met else "  MISSED")


def _payload(results: list[Result], memory: list[MemoryResult], cpu: int | None, repetitions: int) -> object:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "pinned_cpu": cpu,
        "repetitions": repetitions,
        "results": [
            {
                "group": r.group,
                "kind": r.kind,
                "variant": r.variant,
                "baseline": r.baseline,
                "target": r.target,
                "median_ratio": r.ratio,
                "ratios": r.ratios,
                "per_op_ns": r.per_op_ns,
                # per repetition, minus the baseline's time (per_op_ns / ratios)
                "extra_per_op_ns": [t * (1 - 1 / q) for t, q in zip(r.per_op_ns, r.ratios, strict=True)],
            }
            for r in results
        ],
        # the web groups' serving processes (the bare app's too): CPU time per request, per repetition
        "cpu_per_op_ns": cpu_per_op_ns(),
        "memory": [
            {
                "variant": m.variant,
                "bytes_per_task": m.passes,
                "over_bare": m.over_bare,
                "target_over_bare": m.target,
            }
            for m in memory
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
