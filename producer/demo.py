"""`visionq demo`: one job of each kind, end to end, on embedded defaults.

Brings up what is missing: a private redis-server (unless VISIONQ_REDIS_URL is
set), local storage (unless VISIONQ_STORAGE_URL is set), tiny offline models
when no model hub is reachable, and one worker process.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from producer.launch import PACKAGES_ROOT, WorkerProcess, child_env, visionq_argv
from producer.redis_server import RedisServer
from tasks.settings import Settings

DEMO_DIR = Path.home() / ".visionq" / "demo"
HUB_HOST = "huggingface.co"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def sample_image(path: Path) -> Path:
    """A small synthetic scene: sky, sun, a hill and a house."""
    image = Image.new("RGB", (320, 240))
    draw = ImageDraw.Draw(image)
    for y in range(240):
        draw.line([(0, y), (320, y)], fill=(90, 150 + y // 4, 235))
    draw.ellipse([230, 25, 290, 85], fill=(255, 215, 60))
    draw.polygon([(0, 240), (0, 170), (160, 140), (320, 175), (320, 240)], fill=(70, 150, 60))
    draw.rectangle([60, 120, 130, 180], fill=(180, 60, 50))
    draw.polygon([(50, 122), (95, 85), (140, 122)], fill=(110, 40, 35))
    image.save(path)
    return path


def run_demo(*, force_tiny: bool = False, keep: bool = False) -> int:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    redis_server = None
    if not env.get("VISIONQ_REDIS_URL"):
        redis_server = RedisServer(directory=DEMO_DIR / "redis").start()
        env["VISIONQ_REDIS_URL"] = redis_server.url
        print(f"redis:   started a private redis-server at {redis_server.url}")
    else:
        print(f"redis:   {env['VISIONQ_REDIS_URL']} (from VISIONQ_REDIS_URL)")
    try:
        return _run_with_redis(env, force_tiny)
    finally:
        if redis_server is not None and not keep:
            redis_server.stop()


def _run_with_redis(env: dict[str, str], force_tiny: bool) -> int:
    env.setdefault("VISIONQ_STORAGE_URL", (DEMO_DIR / "storage").as_uri())
    print(f"storage: {env['VISIONQ_STORAGE_URL']}")
    tiny = force_tiny or not hub_reachable()
    worker_args = ["--device", env.get("VISIONQ_DEVICE", "auto")]
    if tiny:
        models_dir = _tiny_models(env)
        worker_args += ["--models", str(models_dir)]
        env["HF_HUB_OFFLINE"] = "1"
        reason = "as asked (--tiny)" if force_tiny else f"no model hub reachable ({HUB_HOST})"
        print(f"models:  TINY random-weight models in {models_dir}, {reason}: outputs are noise, "
              "every code path is real")
    else:
        print("models:  the default Hugging Face models (downloaded on first use; a few GB)")
    env.setdefault("VISIONQ_TORCH_THREADS", "1" if tiny else "")
    log_path = DEMO_DIR / "worker.log"
    settings = Settings.from_env(env)
    worker = WorkerProcess(
        visionq_argv("worker", *worker_args), env=env, log_path=log_path,
        redis_url=settings.redis_url, prefix=settings.redis_prefix, sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
    ).start()
    print(f"worker:  pid {worker.pid}, log {log_path}")
    try:
        os.environ.update({k: env[k] for k in ("VISIONQ_REDIS_URL", "VISIONQ_STORAGE_URL")})
        return _submit_all(worker, tiny)
    finally:
        worker.stop()  # warm shutdown: finishes the job in hand


def _tiny_models(env: dict[str, str]) -> Path:
    models_dir = DEMO_DIR / "models"
    if not (models_dir / "VISIONQ_TINY.txt").exists():
        subprocess.run(visionq_argv("models", "tiny", str(models_dir)),
                       env=child_env(env), check=True, stdout=subprocess.DEVNULL)
    return models_dir


def _submit_all(worker: WorkerProcess, tiny: bool) -> int:
    from producer.client import Client
    from producer.render import ProgressLine, describe

    client = Client()
    print("waiting for the worker to load and warm up its models ...")
    worker.wait_ready(timeout_s=120 if tiny else 1800)
    image = sample_image(DEMO_DIR / "sample.png")
    side = 64 if tiny else 512
    jobs = [
        client.caption(image),
        client.segment(image, labels=["sun", "house"]),
        client.segment(image),
        client.generate("a watercolor fox", width=side, height=side, steps=4 if tiny else 1, seed=7),
    ]
    failed = 0
    for job in jobs:
        line = ProgressLine(sys.stdout)
        try:
            job.wait(timeout=120 if tiny else 1800, on_change=line.update)
        finally:
            line.close()
        print(describe(job.to_dict()))
        failed += job.status != "succeeded"
    print(f"\n{len(jobs) - failed} of {len(jobs)} jobs succeeded; files are under {client.settings.storage_url}")
    print(next_steps())
    return 1 if failed else 0


def next_steps() -> str:
    """How to run `visionq` from the user's own shell: the demo may run from an environment not on
    PATH, and from a clone that runs its own code through PYTHONPATH (scripts/_env.sh)."""
    bin_dir = Path(sys.executable).parent
    exports = f'export PATH="{bin_dir}:$PATH"'
    if str(PACKAGES_ROOT) in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        exports += f' PYTHONPATH="{PACKAGES_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"'  # the user's own kept after
    return ("\nnext: `visionq --help` (reference: docs/cli.md). Its environment's bin folder is "
            f"{bin_dir}; to put it on PATH in this shell:\n  {exports}")
