"""`visionq worker`, `visionq webhooks` and `visionq models tiny` (the worker side of the CLI).

Reached through `visionq` (producer/cli.py hands these commands to
`python -m worker`), so the producer never imports torch.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tasks.kinds import ALL_KINDS, parse_kinds
from tasks.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="visionq")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="serve jobs with preloaded models")
    worker.add_argument("--models", metavar="DIR", help="a folder laid out like `visionq models tiny DIR`")
    worker.add_argument("--kinds", default=",".join(k.value for k in ALL_KINDS),
                        help="comma-separated job kinds to serve (default: all)")
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: VISIONQ_DEVICE or auto)")
    worker.add_argument("--gpus", help="all or 0,2: one pinned worker process per GPU, supervised")
    worker.add_argument("--replicas", type=int, default=None,
                        help="worker processes per device (with --gpus: per GPU), supervised")
    worker.add_argument("--name", help="worker name (default: visionq-<device>-<pid>@<host>)")
    worker.add_argument("--loglevel", default="INFO")

    webhooks = commands.add_parser("webhooks", help="run the webhook delivery worker (no torch)")
    webhooks.add_argument("--concurrency", type=int, default=32, help="deliveries in flight (threads)")
    webhooks.add_argument("--loglevel", default="INFO")

    models = commands.add_parser("models", help="model utilities")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    tiny = model_commands.add_parser("tiny", help="build tiny random-weight models of every kind (offline)")
    tiny.add_argument("dir", type=Path)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "models":
        return _build_tiny(args.dir)
    if args.command == "webhooks":
        from worker.webhooks import run_webhook_worker

        run_webhook_worker(Settings.from_env(), args.concurrency, args.loglevel)
        return 0
    return _serve(args)


def _build_tiny(dest: Path) -> int:
    from worker.tiny import build_tiny_models

    paths = build_tiny_models(dest)
    for role, path in paths.items():
        print(f"{role:18} {path}")
    print(f"tiny random-weight models written to {dest} (outputs are meaningless; the code paths are real)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.gpus or args.replicas:
        return _supervise(args)
    from worker.device import pin_device

    try:
        kinds = parse_kinds(args.kinds)
        settings = Settings.from_env(device=args.device)
        if args.models:
            if not Path(args.models).is_dir():
                raise ValueError(f"--models {args.models}: no such folder")
            settings = settings.with_models_dir(args.models)
        device = pin_device(settings.device)  # before anything imports torch
    except ValueError as exc:
        print(f"visionq worker: {exc}", file=sys.stderr)
        return 2
    from tasks.errors import VisionqError
    from worker.process import default_worker_name, run_worker

    try:
        run_worker(settings, kinds, device, args.name or default_worker_name(device), args.loglevel)
    except VisionqError as exc:  # a model that cannot load: fatal, with the reason and a way out
        print(f"visionq worker: {exc.message}\n(offline? build tiny models with `visionq models tiny DIR` "
              "and pass --models DIR)", file=sys.stderr)
        return 1
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from worker.fleet import Supervisor, parse_gpus, plan_slots

    try:
        if args.replicas is not None and args.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        gpus = parse_gpus(args.gpus) if args.gpus else None
        device = args.device or Settings.from_env().device
        if gpus is None and device == "auto":
            device = "cpu"  # replicas without --gpus: say cuda:N to put them on one GPU
        passthrough = ["--kinds", args.kinds, "--loglevel", args.loglevel]
        if args.models:
            passthrough += ["--models", args.models]
        slots = plan_slots(gpus, args.replicas or 1, device, passthrough)
    except ValueError as exc:
        print(f"visionq worker: {exc}", file=sys.stderr)
        return 2
    return Supervisor(slots).run()


if __name__ == "__main__":
    sys.exit(main())
