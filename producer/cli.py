"""`visionq`: submit jobs, follow them, and run the other parts (one parser for every command).

`worker` and `models` run the GPU side and `webhooks` the delivery worker: their
handlers import worker/ code only when they run, so `visionq submit` and the other
producer commands never import torch. Exit codes: 0 ok, 1 the job ended failed or
canceled (or a worker's model cannot load), 2 bad input or usage, 3 no such job
(or delivery), 4 timed out waiting, 5 Redis or storage unreachable, 130 interrupted.
Reference: docs/cli.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import redis

from tasks.errors import ErrorCode, JobNotFound, VisionqError
from tasks.kinds import ALL_KINDS
from tasks.models import CATALOGUE


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["celery"]:
        # Everything after `celery` is Celery's own command line, options included.
        args = argparse.Namespace(handler=_celery, celery_args=argv[1:])
    else:
        try:
            args = build_parser().parse_args(argv)
            if getattr(args, "timeout", None) is not None and not args.wait:
                args.wait_parser.error("--timeout is how long --wait waits: add --wait")
            if getattr(args, "webhook_events", None) and not args.webhook:
                args.wait_parser.error("--webhook-events chooses the events of --webhook URL: add --webhook")
        except UsageError as exc:
            if "--json" in argv:  # stdout carries JSON however the command ends, a usage error too
                print(json.dumps({"error": {"code": ErrorCode.INVALID_INPUT.value, "message": exc.message}}))
            raise
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, where it is handled, not at exit
        return code
    except JobNotFound as exc:
        return _failed(args, 3, exc.code.value, str(exc))
    except VisionqError as exc:
        return _failed(args, 2, exc.code.value, exc.message)
    except ValueError as exc:
        return _failed(args, 2, ErrorCode.INVALID_INPUT.value, str(exc))
    except TimeoutError as exc:
        print(f"\nvisionq: {exc}", file=sys.stderr)  # with --json, the job as it stands is on stdout
        return 4
    except BrokenPipeError:  # `visionq workers --json | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # as a program that SIGPIPE ends
    except redis.AuthenticationError as exc:
        return _failed(args, 5, ErrorCode.UNAVAILABLE.value,
                       f"Redis refused the password of VISIONQ_REDIS_URL (redis://:PASSWORD@HOST:PORT/DB): {exc}")
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # a TimeoutError is no ConnectionError
        from tasks.settings import Settings, redacted_url

        address = redacted_url(os.environ.get("VISIONQ_REDIS_URL") or Settings.model_fields["redis_url"].default)
        return _failed(args, 5, ErrorCode.UNAVAILABLE.value, f"cannot reach Redis at {address} (VISIONQ_REDIS_URL): {exc}")
    except redis.RedisError as exc:  # e.g. InvalidResponse: something else listens at the address
        return _failed(args, 5, ErrorCode.UNAVAILABLE.value,
                       f"Redis at VISIONQ_REDIS_URL failed or is not Redis ({type(exc).__name__}): {exc}")
    except ConnectionError as exc:  # the gateway (VISIONQ_API_URL)
        return _failed(args, 5, ErrorCode.UNAVAILABLE.value, str(exc))
    except KeyboardInterrupt:
        return 130


def _failed(args: argparse.Namespace, exit_code: int, code: str, message: str) -> int:
    """The error on stderr; with --json also on stdout, in the gateway's error body, so that a
    script reading stdout (`| jq`) gets JSON whichever way the command ended."""
    print(f"visionq: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"code": code, "message": message}}))  # one line, also among JSON lines
    return exit_code


class _DefaultsShown(argparse.HelpFormatter):
    """`--help` shows each option's default (docs/cli.md says so), unless its help already does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if text and action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


class UsageError(SystemExit):
    """A command line argparse refused (exit 2, its usage on stderr), with argparse's message."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: add_subparsers makes its parsers of this same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise UsageError(message)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        # A command's unknown flag is reported with that command's usage: argparse would hand it
        # up to the top parser, whose usage (`visionq [-h] COMMAND ...`) says nothing about it.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None and " " in self.prog:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


# `--model`'s examples in each kind's help: the names its catalogue has (tasks/models.py).
MODEL_EXAMPLES = {kind.value: "e.g. " + ", ".join(entry.name for entry in CATALOGUE if entry.kind == kind.value)
                  for kind in ALL_KINDS}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="visionq", description="Asynchronous vision-AI jobs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="serve jobs with preloaded models (needs the [worker] extra)")
    worker.add_argument("--models", metavar="DIR", help="a folder laid out like `visionq models tiny DIR`")
    worker.add_argument("--kinds", help="comma-separated job kinds to serve, each with its default model "
                                          f"(default: all: {','.join(k.value for k in ALL_KINDS)})")
    worker.add_argument("--serve", metavar="MODELS",
                        help="comma-separated models to load and serve, e.g. caption/blip,caption/vit-gpt2 "
                             "(instead of --kinds; docs/models.md)")
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: VISIONQ_DEVICE or auto)")
    worker.add_argument("--gpus", help="all or 0,2: one pinned worker process per GPU, supervised")
    worker.add_argument("--replicas", type=_at_least(1), default=None,
                        help="worker processes per device (with --gpus: per GPU), supervised (default 1)")
    worker.add_argument("--name", help="worker name (default: visionq-<device>-<pid>@<host>)")
    worker.add_argument("--loglevel", type=_log_level, default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    worker.add_argument("--metrics-port", type=_port(lowest=1), metavar="PORT",
                        help="serve Prometheus /metrics on PORT (a fleet's children: PORT + index); default off")
    worker.add_argument("--metrics-host", default="0.0.0.0", metavar="ADDRESS",
                        help="address /metrics listens on (default 0.0.0.0, for Prometheus in the cluster)")
    worker.set_defaults(handler=_worker)

    models = commands.add_parser("models", help="`visionq models tiny DIR`: build tiny offline models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    tiny = model_commands.add_parser("tiny", help="build tiny random-weight models of every kind (offline)")
    tiny.add_argument("dir", type=Path)
    tiny.set_defaults(handler=_models_tiny)

    submit = commands.add_parser("submit", help="submit a job")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")
    caption = kinds.add_parser("caption", help="caption an image")
    caption.add_argument("image", help="local path, s3://bucket/key or http(s):// URL")
    caption.add_argument("--prompt", help="conditional captioning: the caption continues this text")
    caption.add_argument("--max-new-tokens", type=int, default=30, help="the longest caption, in tokens")
    caption.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy)")
    segment = kinds.add_parser("segment", help="segment an image")
    segment.add_argument("image", help="local path, s3://bucket/key or http(s):// URL")
    segment.add_argument("--label", action="append", dest="labels", metavar="LABEL",
                         help="a text prompt to mask (repeat); none: semantic classes")
    segment.add_argument("--threshold", type=float, default=0.4, help="mask threshold on the model's scores, 0..1")
    generate = kinds.add_parser("generate", help="generate images from a prompt")
    generate.add_argument("prompt", help="what the image should show")
    generate.add_argument("--negative-prompt", help="what the image should not show")
    generate.add_argument("--width", type=int, default=512, help="pixels, a multiple of 8")
    generate.add_argument("--height", type=int, default=512, help="pixels, a multiple of 8")
    generate.add_argument("--steps", type=int, default=4, help="denoising steps")
    generate.add_argument("--guidance-scale", type=float, default=0.0, help="classifier-free guidance (0: off, as sd-turbo wants)")
    generate.add_argument("--seed", type=int, help="for a reproducible image (default: random, recorded in the output)")
    generate.add_argument("--num-images", type=int, default=1, help="images from one prompt")
    for kind, kind_parser in (("caption", caption), ("segment", segment), ("generate", generate)):
        kind_parser.add_argument("--model", metavar="NAME",
                                 help=f"the model to run, by name within the kind ({MODEL_EXAMPLES[kind]}); "
                                      "default: the kind's default")
        kind_parser.add_argument("--idempotency-key", help="the same key within the job TTL returns the same job")
        kind_parser.add_argument("--priority", choices=["high", "normal", "low"], default="normal", help="queue priority")
        kind_parser.add_argument("--queue-timeout", type=float, metavar="SECONDS",
                                 help="fail `expired` if no worker starts it within SECONDS "
                                      "(default VISIONQ_QUEUE_TIMEOUT_<KIND>_S)")
        kind_parser.add_argument("--webhook", metavar="URL",
                                 help="called back with signed events (VISIONQ_WEBHOOK_SECRET signs them)")
        kind_parser.add_argument("--webhook-events", metavar="TYPES", type=_comma_list,
                                 help="with --webhook: the events to send, comma-separated "
                                      "(default: the final ones: job.succeeded,job.failed,job.canceled)")
        _add_wait_options(kind_parser)
        kind_parser.set_defaults(handler=_submit)

    submit_many = commands.add_parser(
        "submit-many", help="submit one job per line of a JSON-lines file (bodies as the gateway takes them)")
    submit_many.add_argument("file", metavar="FILE.jsonl", help='one job a line: {"kind": ..., "input": {...}, ...}; - reads stdin')
    submit_many.add_argument("--json", action="store_true",
                             help='one JSON line per request: {"line": N, "id": ...} or {"line": N, "error": {...}}')
    submit_many.set_defaults(handler=_submit_many)

    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    _add_wait_options(status)
    status.set_defaults(handler=_status)

    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true", help="print the job record as JSON")
    cancel.set_defaults(handler=_cancel)

    webhooks = commands.add_parser("webhooks", help="run the delivery worker; `dead` and `replay` manage dead letters")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND")
    webhooks.add_argument("--concurrency", type=_at_least(1), default=32, help="deliveries in flight (the delivery worker)")
    webhooks.add_argument("--loglevel", type=_log_level, default="INFO", help="the delivery worker's log level")
    webhooks.set_defaults(handler=_webhooks_deliver)
    dead = webhook_commands.add_parser("dead", help="list deliveries that exhausted their retries")
    dead.add_argument("--json", action="store_true", help="print the dead deliveries as JSON")
    dead.set_defaults(handler=_webhooks_dead)
    replay = webhook_commands.add_parser("replay", help="send a dead delivery again")
    replay.add_argument("delivery_id")
    replay.set_defaults(handler=_webhooks_replay)

    purge = commands.add_parser("purge", help="cancel every queued job of a kind (and drop its messages)")
    purge.add_argument("kind", choices=[k.value for k in ALL_KINDS])
    purge.add_argument("--json", action="store_true", help='print {"kind", "canceled", "dropped_messages"}')
    purge.set_defaults(handler=_purge)

    celery = commands.add_parser(
        "celery", add_help=False,
        help="Celery's own CLI with visionq's app: inspect, control revoke, status, events, flower",
    )
    celery.set_defaults(handler=_celery)  # main() hands it every argument after `celery`

    queues = commands.add_parser("queues", help="queued jobs per kind and priority (autoscaler signal)")
    queues.add_argument("--json", action="store_true", help="print the depths as JSON")
    queues.set_defaults(handler=_queues)

    workers = commands.add_parser("workers", help="list live workers")
    workers.add_argument("--json", action="store_true", help="print the workers' heartbeats as JSON")
    workers.set_defaults(handler=_workers)

    gateway = commands.add_parser("gateway", help="run the HTTP gateway and its dashboard (the [gateway] extra)")
    gateway.add_argument("--host", default="127.0.0.1", help="address to listen on")
    gateway.add_argument("--port", type=_port(lowest=0), default=8080, help="port to listen on; 0: any free port, logged")
    gateway.add_argument("--no-auth", action="store_true", help="no API keys: refused unless the host is loopback")
    gateway.set_defaults(handler=_gateway)

    keys = commands.add_parser("keys", help="the gateway's API keys: create, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    create = key_commands.add_parser("create", help="a new key for TENANT, printed once, with the tenant's webhook secret")
    create.add_argument("tenant")
    create.add_argument("--max-queued", type=int, metavar="N",
                        help="the tenant's unfinished jobs this key may leave (default: no limit)")
    create.add_argument("--rate", type=float, metavar="PER_S", help="jobs per second this key may submit (default: no limit)")
    create.add_argument("--json", action="store_true", help="print the key, its id and the tenant's webhook secret as JSON")
    create.set_defaults(handler=_keys("keys_create"))
    listed = key_commands.add_parser("list", help="every key: id, tenant, limits (never the key itself)")
    listed.add_argument("--json", action="store_true", help="print the keys' ids, tenants and limits as JSON")
    listed.set_defaults(handler=_keys("keys_list"))
    revoke = key_commands.add_parser("revoke", help="revoke a key, at once on every gateway")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_keys("keys_revoke"))

    demo = commands.add_parser("demo", help="run one job of each kind end to end on embedded defaults")
    demo.add_argument("--tiny", action="store_true", help="use tiny offline models even when a hub is reachable")
    demo.add_argument("--keep", action="store_true",
                      help="leave the demo's private Redis running afterwards (its files stay either way)")
    demo.set_defaults(handler=_demo)
    return parser


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="wait until the job is final, showing progress")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="with --wait: seconds to wait (default: forever)")
    parser.set_defaults(wait_parser=parser)  # whose usage a --timeout without --wait is told with
    parser.add_argument("--json", action="store_true", help="print the job record as JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds, 0 or more: {text!r}")
    return value


def _at_least(lowest: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lowest - 1
        if value < lowest:
            raise argparse.ArgumentTypeError(f"not a whole number, {lowest} or more: {text!r}")
        return value
    return count


def _port(lowest: int) -> Callable[[str], int]:
    def port(text: str) -> int:
        value = int(text) if text.isdigit() else -1
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"not a port, {lowest} to 65535: {text!r}")
        return value
    return port


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    """Checked here, not by Celery once the models are loaded (minutes later, with a traceback)."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def _client() -> Any:
    """Through the gateway when VISIONQ_API_URL is set, else straight to Redis."""
    from producer.client import Client

    return Client()


def _redis_client(command: str) -> Any:
    """For the operators' commands that only exist on Redis (purge, dead webhooks)."""
    from producer.client import Client
    from tasks.settings import Settings

    _refuse_gateway_only(command)
    return Client(settings=Settings.from_env())


def _refuse_gateway_only(command: str) -> None:
    """A command that only works on Redis, run where only the gateway is configured, would quietly
    act on the default Redis (127.0.0.1:6379), not the fleet's: say so instead."""
    from tasks.settings import SettingsError

    if os.environ.get("VISIONQ_API_URL") and not os.environ.get("VISIONQ_REDIS_URL"):
        raise SettingsError(f"`visionq {command}` works on the fleet's Redis, not through the gateway "
                            "(VISIONQ_API_URL is set): set VISIONQ_REDIS_URL too")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _submit(args: argparse.Namespace) -> int:
    client = _client()
    common = {"idempotency_key": args.idempotency_key, "priority": args.priority,
              "queue_timeout_s": args.queue_timeout, "model": args.model,
              "webhook": args.webhook, "webhook_events": args.webhook_events}
    if args.kind == "caption":
        job = client.caption(args.image, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                             num_beams=args.num_beams, **common)
    elif args.kind == "segment":
        job = client.segment(args.image, labels=args.labels, threshold=args.threshold, **common)
    else:
        job = client.generate(
            args.prompt, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
            steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
            num_images=args.num_images, **common,
        )
    if not args.wait:
        with _sdk_notes_on_stderr():  # a job no live worker serves waits until one starts: said at once
            job.say_if_no_worker(waiting=False)
    if not args.wait and not args.json:
        print(job.id)
        return 0
    return _report(job, args)


def _submit_many(args: argparse.Namespace) -> int:
    """One line out per request (blank lines are none): the job id, or `error <code>: line N:
    <message>` with N the file's line; exit 1 if any failed."""
    from tasks.errors import InvalidInput

    try:
        lines = (sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")).splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InvalidInput(f"{args.file}: {exc.strerror or exc}") from None
    requests: list[tuple[int, Any]] = []  # (line number, the request or why it is not one)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            requests.append((number, json.loads(line)))
        except ValueError as exc:
            requests.append((number, InvalidInput(f"not JSON: {exc}")))
    parsed = [r for _, r in requests if not isinstance(r, VisionqError)]
    submitted = iter(_client().submit_many(parsed))
    failed = 0
    for number, request in requests:
        outcome = request if isinstance(request, VisionqError) else next(submitted)
        if isinstance(outcome, VisionqError):
            failed += 1
            print(json.dumps({"line": number, "error": outcome.to_dict()}) if args.json
                  else f"error {outcome.code.value}: line {number}: {outcome.message}")
        else:
            print(json.dumps({"line": number, "id": outcome.id}) if args.json else outcome.id)
    return 1 if failed else 0


def _status(args: argparse.Namespace) -> int:
    return _report(_client().get(args.job_id), args)


def _cancel(args: argparse.Namespace) -> int:
    from tasks.status import FINAL_STATUSES

    client = _client()
    final = {status.value for status in FINAL_STATUSES}
    job = client.get(args.job_id)
    already = job.status in final
    if not already:
        job = client.cancel(args.job_id)
        # A cancel never ends a job succeeded or failed: one that did ended on its own, meanwhile.
        already = job.status in final - {"canceled"}
    if args.json:
        print(json.dumps(job.to_dict(), indent=2))
    elif already:
        print(f"{job.id} already {job.status}: nothing to cancel")
    else:
        note = " (stops at its next checkpoint)" if job.status == "running" else ""
        print(f"{job.id} {job.status}{note}")
    return 0


def _report(job: Any, args: argparse.Namespace) -> int:
    from producer.render import ProgressLine, describe

    if args.wait:
        line = ProgressLine(sys.stderr)
        try:
            with _sdk_notes_on_stderr():
                job.wait(timeout=args.timeout, on_change=line.update)
        except TimeoutError:
            if args.json:  # the job as it stands, still queued or running (exit 4)
                print(json.dumps(job.to_dict(), indent=2))
            raise
        finally:
            line.close()
    if args.json:
        print(json.dumps(job.to_dict(), indent=2))
    else:
        print(describe(job.to_dict()))
    return 1 if job.status in ("failed", "canceled") else 0


@contextmanager
def _sdk_notes_on_stderr() -> Iterator[None]:
    """The SDK's notes while waiting (e.g. no live worker for the kind), each on a line of its own."""
    handler = logging.StreamHandler(sys.stderr)
    # On a terminal the progress line has no newline yet: start the note below it.
    handler.setFormatter(logging.Formatter(("\n" if sys.stderr.isatty() else "") + "visionq: %(message)s"))
    logger = logging.getLogger("visionq")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _workers(args: argparse.Namespace) -> int:
    from tasks.heartbeats import list_workers

    client = _client()
    if client.gateway is not None:
        workers = client.gateway.workers()
    else:
        workers = list_workers(client.store.redis, client.settings.redis_prefix)
    if args.json:
        print(json.dumps(workers, indent=2))
        return 0
    if not workers:
        print("no live workers")
    for w in workers:
        memory = w.get("memory_mb", {})
        device = f"device={w['device']} " if w.get("device") else ""  # the delivery worker has none
        print(f"{w['name']:40} {w['state']:9} kinds={','.join(w.get('kinds', []))} "
              f"{device}jobs_done={w.get('jobs_done', 0)} restarts={w.get('restarts', 0)} "
              f"rss_mb={memory.get('rss')}"
              + (f" gpu_mb={memory['gpu_allocated']}" if memory.get("gpu_allocated") is not None else ""))
        for model, info in sorted(w.get("models", {}).items()):
            weights = info.get("weights_mb")
            shown = weights if weights is not None else f"in:{info['weights_in']}" if info.get("weights_in") else "?"
            print(f"  {model:24} weights_mb={shown} queue={info.get('queue')} "
                  f"id={info.get('model_id')}")
    return 0


def _queues(args: argparse.Namespace) -> int:
    from tasks.queues import queue_report

    client = _client()
    if client.gateway is not None:
        depths = client.gateway.queues()  # the same JSON
    else:
        depths = queue_report(client.store.redis, client.settings.redis_prefix)
    if args.json:
        print(json.dumps(depths, indent=2))
        return 0
    width = max([10, *(len(name) + 2 for d in depths.values() for name in d["models"])])  # model rows indent 2
    print(f"{'kind':{width}} {'high':>6} {'normal':>6} {'low':>6} {'total':>6} {'oldest_s':>9}")
    for kind, d in depths.items():
        print(f"{kind:{width}} {d['high']:6} {d['normal']:6} {d['low']:6} {d['total']:6} {d['oldest_age_s']:9.1f}")
        for name, m in d["models"].items():
            live = m.get("live_workers", 0)  # absent from an older gateway's answer
            if m["total"] or live:  # models nobody serves and nobody waits for stay quiet
                print(f"  {name:{width - 2}} {m['high']:6} {m['normal']:6} {m['low']:6} {m['total']:6}  "
                      f"{live} live worker{'' if live == 1 else 's'}")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from tasks.expiry import QueueEnds
    from tasks.kinds import JobKind

    client = _redis_client("purge")
    kind = JobKind(args.kind)
    ends = QueueEnds(client.store)
    progress = _PurgeProgress(kind.value)
    ended = ends.purge(kind, f"canceled while queued by `visionq purge {kind.value}`", on_progress=progress)
    progress.close()
    for record in ended:
        client.events.publish_final(record)  # job.canceled, as for `visionq cancel`
    dropped = ends.drop_dead_messages(kind)  # e.g. of jobs canceled one by one
    if args.json:
        print(json.dumps({"kind": kind.value, "canceled": len(ended), "dropped_messages": dropped}))
        return 0
    also = f"; dropped {dropped} message{'' if dropped == 1 else 's'} of jobs already ended" if dropped else ""
    print(f"canceled {len(ended)} queued {kind.value} job{'' if len(ended) == 1 else 's'}{also}")
    return 0


class _PurgeProgress:
    """How many jobs a long purge has canceled so far, on stderr, at most once a second (a purge
    of 100,000 takes ~15 s); nothing for one that ends within the first second."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.said = time.monotonic()
        self.shown = False

    def __call__(self, ended: int) -> None:
        now = time.monotonic()
        if now - self.said >= 1.0:
            self.said, self.shown = now, True
            print(f"canceled {ended} queued {self.kind} jobs so far...", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print("taking their messages out of the queue...", file=sys.stderr, flush=True)


def _celery(args: argparse.Namespace) -> int:
    from tasks.celery_app import run_celery_cli

    return run_celery_cli(args.celery_args)


def _webhooks_dead(args: argparse.Namespace) -> int:
    dead = [delivery.to_dict() for delivery in _redis_client("webhooks dead").deliveries.list_dead()]
    if args.json:
        print(json.dumps(dead, indent=2))
        return 0
    if not dead:
        print("no dead deliveries")
    from producer.render import describe_dead

    for d in dead:
        print(describe_dead(d))  # control characters from receivers stripped
    return 0


def _webhooks_replay(args: argparse.Namespace) -> int:
    from tasks.deliveries import enqueue_delivery

    client = _redis_client("webhooks replay")
    if client.deliveries.reopen(args.delivery_id) is None:
        raise JobNotFound(f"no delivery {args.delivery_id!r}")
    enqueue_delivery(client.celery, args.delivery_id)
    print(f"{args.delivery_id} queued again")
    return 0


def _worker(args: argparse.Namespace) -> int:
    if not _has_worker_extra():
        return 2
    from worker.commands import serve

    return serve(args)


def _models_tiny(args: argparse.Namespace) -> int:
    if not _has_worker_extra():
        return 2
    from worker.commands import build_tiny

    return build_tiny(args.dir)


# The [worker] extra's packages the worker imports by these names (pyproject.toml).
_WORKER_MODULES = ("torch", "torchvision", "transformers", "diffusers", "safetensors", "accelerate", "isal",
                   "prometheus_client")


def _has_worker_extra() -> bool:
    missing = [name for name in _WORKER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"visionq: this command needs the [worker] extra (missing: {', '.join(missing)}): "
              "pip install 'visionq[worker]'", file=sys.stderr)
        return False
    return True


def _webhooks_deliver(args: argparse.Namespace) -> int:
    from worker.commands import deliver_webhooks  # torch-free, like the delivery worker itself

    return deliver_webhooks(args.concurrency, args.loglevel)


def _gateway(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        print("visionq: the gateway needs the [gateway] extra: pip install 'visionq[gateway]'", file=sys.stderr)
        return 2
    from producer.gateway.commands import gateway

    return gateway(args)


def _keys(name: str) -> Any:
    """The handler of `visionq keys NAME` (producer/gateway/commands.py; no FastAPI needed)."""
    def handler(args: argparse.Namespace) -> int:
        from producer.gateway import commands

        _refuse_gateway_only(f"keys {args.keys_command}")
        return getattr(commands, name)(args)

    return handler


def _demo(args: argparse.Namespace) -> int:
    from producer.demo import run_demo

    return run_demo(force_tiny=args.tiny, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
