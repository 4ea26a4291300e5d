"""The producer side must stay light: no torch, transformers or diffusers."""
from __future__ import annotations

import subprocess
import sys

import producer
import tasks


def test_producer_and_tasks_do_not_import_torch() -> None:
    code = (
        "import sys, producer, producer.client, producer.cli, producer.demo, producer.launch, tasks.app, "
        "tasks.store, tasks.storage, tasks.schemas, tasks.ssrf, tasks.settings, tasks.heartbeats, tasks.queues, "
        "tasks.preflight\n"
        "producer.cli.build_parser().parse_args(['submit', 'caption', 'x.png', '--wait'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'worker') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_webhook_delivery_worker_is_light() -> None:
    code = (
        "import sys, worker.webhooks, worker.commands, producer.webhooks\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_receivers_verify_through_the_producer_package() -> None:
    from producer.webhooks import WebhookVerificationError, verify
    from tasks.webhooks import generate_secret, signature_headers

    secret = generate_secret()
    verify(secret, signature_headers(secret, "msg_1", b"{}"), b"{}")
    try:
        verify(secret, signature_headers(secret, "msg_1", b"{}"), b"{ }")
    except WebhookVerificationError:
        return
    raise AssertionError("a tampered body was accepted")


def test_public_surface_is_pinned() -> None:
    assert sorted(producer.__all__) == [
        "Client", "Conflict", "InvalidInput", "Job", "JobNotFound", "StorageError", "Unavailable", "VisionqError",
    ]
    assert sorted(tasks.__all__) == [
        "ErrorCode", "InvalidInput", "JobKind", "JobNotFound", "JobStatus", "Settings", "VisionqError",
    ]
