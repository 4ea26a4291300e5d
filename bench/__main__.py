"""python -m bench [SCENARIO ...] [--quick | --smoke] [--json PATH] [--storage file|s3] [--storage-dir DIR]

Runs the scenarios (all by default), prints one table of figures, each next to
its baseline and their ratio, then the breakdowns and notes, and writes every
number to a JSON file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.harness import PLANS, default_storage_parent, file_creation_cost_us, open_stack
from bench.report import ScenarioResult, main_table

SCENARIOS = (
    "hotpath", "overhead", "preloaded", "submit", "latency", "scaleout", "batching", "events", "gateway", "inputs",
    "convoy", "model_process",
)
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts: all scenarios in about 6 minutes on 2 cores")
    size.add_argument("--smoke", action="store_true", help="a few jobs each: checks the plumbing, numbers meaningless")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON})")
    parser.add_argument("--storage", choices=("file", "s3"), default="file",
                        help="workers' storage: a local folder, or moto's S3 server (default file)")
    parser.add_argument("--storage-dir", type=Path, metavar="DIR",
                        help="where the local storage folder is made (default: /dev/shm when it has 2 GiB free, "
                             "else the run's temporary folder)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if args.storage_dir is not None and not args.storage_dir.is_dir():
        parser.error(f"--storage-dir {args.storage_dir}: no such folder")
    names = args.scenarios or list(SCENARIOS)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]

    command = shlex.join(["python", "-m", "bench", *argv])
    storage_parent = args.storage_dir or default_storage_parent()
    header = _header(command, plan.mode, args.storage, storage_parent)
    print("\n".join(f"{k}: {v}" for k, v in header.items()), flush=True)

    started = time.perf_counter()
    results: list[ScenarioResult] = []
    stack, close = open_stack(args.storage, storage_parent)
    try:
        for name in names:
            scenario_started = time.perf_counter()
            _progress(f"{name}: running")
            results.append(importlib.import_module(f"bench.{name}").run(stack, plan))
            _progress(f"{name}: done in {time.perf_counter() - scenario_started:.1f} s")
    finally:
        close()
    wall_s = time.perf_counter() - started

    print()
    print(main_table([row for result in results for row in result.rows]).render())
    for result in results:
        for table in result.tables:
            print()
            print(table.render())
    print()
    print("Notes")
    for result in results:
        for note in result.notes:
            print(f"- [{result.name}] {note}")
    print(f"\nwall time: {wall_s:.1f} s; results written to {args.json}")

    report = {**header, "wall_s": round(wall_s, 1), "plan": vars(plan),
              "scenarios": {result.name: result.to_dict() for result in results}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    return 0


def _header(command: str, mode: str, storage: str, storage_parent: Path | None) -> dict[str, Any]:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return {
        "command": command,
        "mode": mode,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {cpus} CPUs ({usable} usable), no GPU used"
                   f", load average {os.getloadavg()[0]:.2f} at start",
        "python": platform.python_version(),
        "versions": ", ".join(f"{name} {_version(name)}" for name in
                              ("torch", "transformers", "diffusers", "celery", "redis", "pillow")),
        "redis_server": _redis_server_version(),
        "storage": _storage_line(storage, storage_parent),
    }


def _storage_line(storage: str, parent: Path | None) -> str:
    """Which storage, and for a local folder what creating a job's folder and a file costs
    there, next to the run's temporary folder (a worker creates both for every job)."""
    if storage != "file":
        return "moto S3 server (s3://)"
    temporary = Path(tempfile.gettempdir())
    line = f"local folder (file://) in {parent or temporary}"
    if parent is not None and parent != temporary:
        line += f"; a folder and a file in it cost {file_creation_cost_us(parent):.0f} us CPU to create there, " \
                f"{file_creation_cost_us(temporary):.0f} us in {temporary}"
    return line


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _redis_server_version() -> str:
    from producer.redis_server import find_redis_server

    try:
        out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "unknown"
    version = next((part for part in out.split() if part.startswith("v=")), "v=unknown")
    return version[2:]


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
