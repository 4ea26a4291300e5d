"""`visionq worker --gpus … | --replicas N`: one pinned worker process per GPU (or replica).

The supervisor never imports torch: each child is a fresh `python -P -m worker worker`
process (`-P`: nothing is imported from the working folder, where a user's own
`tasks.py` would shadow ours) whose device is pinned (CUDA_VISIBLE_DEVICES) before its own torch import,
so CUDA is never initialised in a process that forks. A child that dies is
restarted with exponential backoff, unless it exited 0 (it was asked to stop: SIGTERM to it,
`celery control shutdown`); the supervisor ends when every child has. A mistake no restart
mends ends the fleet instead, with the child's exit status, so that its own supervisor (systemd,
Kubernetes) shows a failure rather than a fleet restarting forever: a child's usage or settings
error (exit 2), or a model that failed to load (exit 1) in GIVE_UP_AFTER runs in a row that
each lived less than HEALTHY_AFTER_S (a hub that was briefly away gets those tries).
SIGTERM/SIGINT are forwarded so every child drains (finishes the job in hand) before the
supervisor exits.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from worker.commands import EXIT_MODEL_NOT_LOADED, EXIT_USAGE

log = logging.getLogger("visionq.fleet")

MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 60.0  # a child that lived this long resets its backoff
GIVE_UP_AFTER = 3  # runs in a row that ended EXIT_MODEL_NOT_LOADED early


@dataclass
class Slot:
    """One worker process to keep alive: its device and command line."""

    name: str
    device: str
    args: list[str]
    restarts: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = 1.0
    restart_at: float | None = field(default=None)
    stopped: bool = False  # exited 0: asked to stop, so not restarted
    early_load_failures: int = 0  # runs in a row that ended EXIT_MODEL_NOT_LOADED before HEALTHY_AFTER_S


def parse_gpus(text: str, count_gpus: object = None) -> list[int]:
    """"all" or "0,2" -> GPU indexes."""
    if text == "all":
        found = (count_gpus or visible_gpu_count)()
        if found == 0:
            raise ValueError("--gpus all: no CUDA GPU is visible on this machine")
        return list(range(found))
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus {text!r}: expected all or comma-separated GPU indexes") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus {text!r}: expected distinct GPU indexes")
    return gpus


def visible_gpu_count() -> int:
    # In a child process: counting GPUs must not initialise CUDA in the supervisor.
    result = subprocess.run(
        [sys.executable, "-P", "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True, text=True, check=False,
    )
    return int(result.stdout.strip() or 0)


def child_argv(args: list[str]) -> list[str]:
    """`visionq ARGS` as a child of this interpreter (`python -m worker` is the CLI's alias)."""
    return [sys.executable, "-P", "-m", "worker", *args]


def plan_slots(
    gpus: list[int] | None, replicas: int, device: str, passthrough: list[str], metrics_port: int | None = None,
) -> list[Slot]:
    """One slot per GPU x replica, or `replicas` slots on `device` without GPUs.

    With `metrics_port`, slot i serves /metrics on metrics_port + i (in plan order); ValueError
    when the last of them would be past 65535."""
    count = (len(gpus) if gpus else 1) * replicas
    if metrics_port is not None and metrics_port + count - 1 > 65535:
        raise ValueError(f"--metrics-port {metrics_port}: {count} workers need ports {metrics_port} to "
                         f"{metrics_port + count - 1}, past 65535")
    host = socket.gethostname()
    slots = []
    targets = [(f"gpu{g}", f"cuda:{g}") for g in gpus] if gpus else [(device.replace(":", ""), device)]
    for label, slot_device in targets:
        for replica in range(replicas):
            suffix = f"-{replica}" if replicas > 1 else ""
            name = f"visionq-{label}{suffix}@{host}"
            args = ["worker", "--device", slot_device, "--name", name, *passthrough]
            if metrics_port is not None:
                args += ["--metrics-port", str(metrics_port + len(slots))]
            slots.append(Slot(name=name, device=slot_device, args=args))
    return slots


class Supervisor:
    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.stopping = False
        self.failure: int | None = None  # a child's exit status no restart mends: the fleet's own

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in self.slots:
            self._start(slot)
        while not self.stopping:
            self._watch()
            if self.failure is not None:
                break
            if all(slot.stopped for slot in self.slots):
                log.info("every worker stopped as asked; exiting")
                break
            time.sleep(0.5)
        self._drain()
        return self.failure or 0

    def _start(self, slot: Slot) -> None:
        env = {**os.environ, "VISIONQ_WORKER_RESTARTS": str(slot.restarts)}
        slot.process = subprocess.Popen(child_argv(slot.args), env=env)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("started %s (pid %d, device %s)", slot.name, slot.process.pid, slot.device)

    def _watch(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    slot.restarts += 1
                    self._start(slot)
                continue
            assert slot.process is not None
            code = slot.process.poll()
            if code is None:
                continue
            if code == 0:  # asked to stop (SIGTERM to it, `celery control shutdown`): it stays stopped
                if not slot.stopped:
                    log.info("%s stopped as asked (exit 0); not restarting it", slot.name)
                slot.stopped = True
                continue
            lived_s = now - slot.started_at
            if lived_s > HEALTHY_AFTER_S:
                slot.backoff_s = 1.0
            slot.early_load_failures = slot.early_load_failures + 1 \
                if code == EXIT_MODEL_NOT_LOADED and lived_s <= HEALTHY_AFTER_S else 0
            if code == EXIT_USAGE or slot.early_load_failures >= GIVE_UP_AFTER:
                why = ("a usage or settings error" if code == EXIT_USAGE
                       else f"its models failed to load {slot.early_load_failures} times in a row")
                log.error("%s exited with %s (%s: a restart would not mend it; see its log above); "
                          "stopping every worker, exit %s", slot.name, code, why, code)
                self.failure = code
                return
            log.warning("%s exited with %s; restarting in %.0f s", slot.name, code, slot.backoff_s)
            slot.restart_at = now + slot.backoff_s
            slot.backoff_s = min(slot.backoff_s * 2, MAX_BACKOFF_S)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _drain(self) -> None:
        running = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: finish, then exit
        for process in running:
            process.wait()
