"""What `visionq worker`, `visionq webhooks` and `visionq models tiny` do (the worker side of the CLI).

The one parser lives in producer/cli.py; its handlers import this module only
when one of these commands runs, so `visionq submit` and friends never import torch.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks.kinds import ALL_KINDS, parse_kinds
from tasks.preflight import Unreachable, check_services
from tasks.settings import Settings

# The CLI's exit codes a worker ends with (docs/cli.md); the fleet supervisor reads them too.
EXIT_MODEL_NOT_LOADED = 1
EXIT_USAGE = 2  # a bad flag or setting
EXIT_UNREACHABLE = 5  # Redis (or storage) unreachable


def serve(args: argparse.Namespace) -> int:
    """`visionq worker`: one worker process, or a supervised fleet with --gpus / --replicas."""
    if args.gpus or args.replicas:
        return _supervise(args)
    from worker.device import check_device, pin_device

    try:
        settings = Settings.from_env(device=args.device)
        if args.models:
            if not Path(args.models).is_dir():
                raise ValueError(f"--models {args.models}: no such folder")
            settings = settings.with_models_dir(args.models)
        elif (folder := os.environ.get("VISIONQ_MODELS_DIR")) and not Path(folder).is_dir():
            raise ValueError(f"VISIONQ_MODELS_DIR {folder}: no such folder")
        models = served_models(args, settings)
        device = pin_device(settings.device)  # before anything imports torch
        check_device(device)
    except ValueError as exc:
        print(f"visionq worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _log_to_stderr(settings)
    if (code := _check_services(settings)) != 0:
        return code
    from tasks.errors import VisionqError
    from worker.model_memory import ModelsDoNotFit
    from worker.process import default_worker_name, run_worker, worker_node_name

    try:
        metrics_address = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
        name = worker_node_name(args.name) if args.name else default_worker_name(device)
        run_worker(settings, models, device, name, args.loglevel, metrics_address)
    except ModelsDoNotFit as exc:  # refused before loading: the message names each model and the budget
        print(f"visionq worker: {exc.message}", file=sys.stderr)
        return EXIT_MODEL_NOT_LOADED
    except VisionqError as exc:  # a model that cannot load: fatal, with the reason and a way out
        print(f"visionq worker: {exc.message}\n(offline? build tiny models with `visionq models tiny DIR` "
              "and pass --models DIR)", file=sys.stderr)
        return EXIT_MODEL_NOT_LOADED
    return 0


def served_models(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The models this worker loads: --serve's names, else the defaults of --kinds (default: every kind)."""
    from worker.loader import default_names, parse_served  # torch-free: nothing is loaded yet

    if args.serve is not None:
        if args.kinds is not None:
            raise ValueError("--serve and --kinds: give one (--serve names the models, and so the kinds)")
        return parse_served(args.serve, settings)
    # `--kinds ''` (an unset variable: `--kinds "$KINDS"`) is refused, not read as every kind.
    return default_names(parse_kinds(args.kinds if args.kinds is not None else ",".join(k.value for k in ALL_KINDS)))


def deliver_webhooks(concurrency: int, loglevel: str) -> int:
    """`visionq webhooks`: the delivery worker (no torch)."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"visionq webhooks: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _log_to_stderr(settings)
    if (code := _check_services(settings)) != 0:
        return code
    from worker.webhooks import run_webhook_worker

    run_webhook_worker(settings, concurrency, loglevel)
    return 0


def build_tiny(dest: Path) -> int:
    """`visionq models tiny DIR`."""
    from worker.tiny import build_tiny_models

    paths = build_tiny_models(dest)
    for role, path in paths.items():
        print(f"{role:18} {path}")
    print(f"tiny random-weight models written to {dest} (outputs are meaningless; the code paths are real)")
    return 0


def _check_services(settings: Settings) -> int:
    try:
        check_services(settings)
    except Unreachable as exc:
        print(f"visionq: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return 0


def _log_to_stderr(settings: Settings) -> None:
    """Text or JSON lines (VISIONQ_LOG_FORMAT), secrets masked (tasks/logs.py)."""
    from tasks.logs import configure_logging

    configure_logging(settings, os.environ)


def _supervise(args: argparse.Namespace) -> int:
    from worker.fleet import Supervisor, parse_gpus, plan_slots

    try:
        if args.replicas is not None and args.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        gpus = parse_gpus(args.gpus) if args.gpus else None
        settings = Settings.from_env()
        device = args.device or settings.device
        if gpus is None and device == "auto":
            device = "cpu"  # replicas without --gpus: say cuda:N to put them on one GPU
        passthrough = ["--loglevel", args.loglevel, "--metrics-host", args.metrics_host]
        passthrough += ["--serve", args.serve] if args.serve is not None else []
        passthrough += ["--kinds", args.kinds] if args.kinds is not None else []
        if args.models:
            passthrough += ["--models", args.models]
        slots = plan_slots(gpus, args.replicas or 1, device, passthrough, metrics_port=args.metrics_port)
    except ValueError as exc:
        print(f"visionq worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _log_to_stderr(settings)
    # Once here, rather than as every child failing and being restarted with backoff.
    if (code := _check_services(settings)) != 0:
        return code
    return Supervisor(slots).run()
