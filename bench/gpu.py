"""GPU benchmark: every model family's full-size architecture (random weights) in fp16.

    python -m bench.gpu             # where CUDA exists; under 8 minutes on one H200-class GPU
    python -m bench.gpu --smoke     # anywhere: the same steps on the CPU with the tiny models

For each kind and batch size (1, 4, 16): images/s of the pipelines called
directly in this process vs the same work through the service (SDK -> Redis ->
one `visionq worker --device cuda:0` -> local storage -> record), and the GPU
memory each worker holds. Caption and segment batch through the worker's
micro-batching (VISIONQ_MAX_BATCH_<KIND> = the batch size); generate batches
as num_images in one job. The families that are no kind's default (ViT +
GPT-2, the SmolVLM instruction VLM, OWLv2 + SAM) are measured directly, batch N
against batch 1. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from bench.harness import BenchError, Stack, WorkerSpec, bench_image, burst
from bench.jobs import CAPTION, GENERATE, SEGMENT, JobSpec
from bench.report import Row, ScenarioResult, Table, fmt, main_table, median
from producer.client import Client
from producer.job import Job
from tasks.kinds import JobKind
from tasks.models import model_entry
from tasks.settings import Settings
from worker.pipelines.base import no_progress, run_one

NAME = "gpu"
DEFAULT_JSON = Path(__file__).resolve().parent / "gpu-results.json"
BUDGET_S = 7 * 60  # later measurements are skipped, and say so, past this: the run stays under 8 minutes
CASES = (
    replace(CAPTION, case="caption (BLIP-base, 384 px)"),
    replace(SEGMENT, case="segment 2 labels (CLIPSeg rd64, 352 px)"),
    JobSpec("generate 512px 4 steps (SD-Turbo size)", JobKind.GENERATE,
            {"prompt": "a watercolor fox", "width": 512, "height": 512, "steps": 4, "seed": 7}),
)
SMOKE_CASES = (CAPTION, SEGMENT, GENERATE)
# The families that are no kind's default, measured directly (a worker serves the defaults), by models-dir folder.
OTHER_FAMILIES = (
    (replace(CAPTION, case="caption (ViT-B/16 + GPT-2, 224 px)"), model_entry("caption/vit-gpt2").folder),
    (replace(CAPTION, case="caption (SmolVLM-256M, 512 px tiles)"), model_entry("caption/vlm").folder),
    (replace(SEGMENT, case="segment 2 labels (OWLv2-B/16 960 px + SAM-B 1024 px)"),
     model_entry("segment/owlv2-sam").folder),
)
SMOKE_OTHER_FAMILIES = (
    (replace(CAPTION, case="caption (tiny ViT + GPT-2)"), model_entry("caption/vit-gpt2").folder),
    (replace(CAPTION, case="caption (tiny SmolVLM-style VLM)"), model_entry("caption/vlm").folder),
    (replace(SEGMENT, case="segment 2 labels (tiny OWLv2 + SAM)"), model_entry("segment/owlv2-sam").folder),
)


@dataclass(frozen=True)
class GpuPlan:
    device: str
    batch_sizes: tuple[int, ...]
    direct_s: float  # timed seconds per direct measurement (at least 3 calls)
    batches_per_burst: int  # service bursts: this many full batches of jobs
    repeats: int


PLAN = GpuPlan("cuda:0", (1, 4, 16), direct_s=3.0, batches_per_burst=6, repeats=2)
SMOKE_PLAN = GpuPlan("cpu", (2,), direct_s=0.0, batches_per_burst=1, repeats=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[1])
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU with the tiny models")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write results (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu.py measures GPUs, and torch sees no CUDA device here "
              "(torch.cuda.is_available() is False): nothing to do. Run `python -m bench` for the CPU benchmarks.")
        return 0
    plan = SMOKE_PLAN if args.smoke else PLAN
    header = _header(shlex.join(["python", "-m", "bench.gpu", *argv]), plan)
    print("\n".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="visionq-bench-gpu-"))
    try:
        result = _run(workdir, plan, args.smoke, started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall_s = time.monotonic() - started
    print()
    print(main_table(result.rows).render())
    for table in result.tables:
        print()
        print(table.render())
    print("\nNotes")
    for note in result.notes:
        print(f"- {note}")
    print(f"\nwall time: {wall_s:.1f} s; results written to {args.json}")
    args.json.write_text(json.dumps({**header, "wall_s": round(wall_s, 1), NAME: result.to_dict()}, indent=2) + "\n")
    return 0


def _run(workdir: Path, plan: GpuPlan, smoke: bool, started: float) -> ScenarioResult:
    cases = SMOKE_CASES if smoke else CASES
    notes: list[str] = []
    if smoke:
        from worker.tiny import build_tiny_models

        models = workdir / "models"
        build_tiny_models(models)
        notes.append("SMOKE: tiny models on the CPU; the numbers only show that every step runs.")
    else:
        from bench.fullsize import MODEL_CARD_PARAMETERS, PUBLISHED_PARAMETERS, build_full_size_models, parameter_counts

        _progress("building full-size random-weight models (fp16)")
        models = workdir / "models"
        build_full_size_models(models, device="cuda")
        counts = parameter_counts()
        published = {**PUBLISHED_PARAMETERS, **MODEL_CARD_PARAMETERS}
        notes.append("architectures (parameters built / published): " + ", ".join(
            f"{name} {counts[name] / 1e6:.1f}M / {published[name] / 1e6:.1f}M" for name in counts))
    image = bench_image()
    _progress("direct: pipelines in this process")
    direct = _measure_direct(models, plan, cases, image)
    _progress("direct: the other families")
    others = _measure_other_families(models, plan, SMOKE_OTHER_FAMILIES if smoke else OTHER_FAMILIES, image)
    other_rows = _direct_rows(others, plan)
    rows: list[Row] = []
    memory = Table("GPU memory (MiB)", ["measured", "batch", "allocated", "reserved", "process (nvidia-smi)"])
    data: dict[str, Any] = {"direct": direct, "other_families": others, "service": {}}
    for case, by_batch in [*((spec.case, direct[spec.case]) for spec in cases), *others.items()]:
        for batch, measured in by_batch.items():
            memory.rows.append([f"direct {case}", str(batch), fmt(measured["peak_allocated_mib"]), "-", "-"])
    try:
        stack = Stack(workdir / "stack")
    except RuntimeError as exc:  # no redis-server on this machine
        notes.append(f"service not measured: {exc}")
        return ScenarioResult(NAME, _direct_rows(direct, plan) + other_rows, notes, [memory], data)
    try:
        uri = stack.put_input(image)
        for batch in plan.batch_sizes:
            if time.monotonic() - started > BUDGET_S:
                notes.append(f"batch {batch}: service not measured, the run is past its {BUDGET_S} s budget")
                continue
            _progress(f"service: batch {batch}")
            service = _measure_service(stack, models, plan, cases, batch, uri)
            data["service"][str(batch)] = service
            used = service["memory_mib"]
            memory.rows.append(["service worker (all kinds loaded)", str(batch),
                                *(fmt(used.get(k)) for k in ("gpu_allocated", "gpu_reserved", "process"))])
            if direct["loaded_mib"] and used.get("gpu_reserved"):
                rows.append(Row(NAME, f"one worker, all kinds, batch {batch}", "GPU MiB reserved (heartbeat)",
                                used["gpu_reserved"], "direct: MiB allocated once loaded (weights)",
                                direct["loaded_mib"], "after the bursts"))
            if direct["loaded_mib"] and used.get("process"):
                rows.append(Row(NAME, f"one worker, all kinds, batch {batch}", "GPU MiB process (nvidia-smi)",
                                used["process"], "direct: MiB allocated once loaded (weights)",
                                direct["loaded_mib"], "after the bursts"))
            for spec in cases:
                measured = direct[spec.case][batch]
                runs = f"{plan.repeats} bursts, p50 batch {service[spec.case]['batch_size_p50']:g}"
                rows += [
                    Row(NAME, f"{spec.case}, batch {batch}", "images/s service", service[spec.case]["images_per_s"],
                        "direct: model only", measured["model_images_per_s"], runs),
                    Row(NAME, f"{spec.case}, batch {batch}", "images/s service", service[spec.case]["images_per_s"],
                        "direct: model+encode", measured["full_images_per_s"], runs),
                ]
        batch = plan.batch_sizes[-1]
        if str(batch) in data["service"] and time.monotonic() - started <= BUDGET_S:
            _progress(f"service: batch {batch}, models in a process of their own")
            split = _measure_service(stack, models, plan, cases, batch, uri, model_process=True)
            data["service_model_process"] = {str(batch): split}
            for spec in cases:
                rows.append(Row(NAME, f"{spec.case}, batch {batch}", "images/s service, model process",
                                split[spec.case]["images_per_s"], "images/s service, in-process (shipped)",
                                data["service"][str(batch)][spec.case]["images_per_s"], f"{plan.repeats} bursts"))
        else:
            notes.append("models in a process of their own (VISIONQ_MODEL_PROCESS): not measured, past the budget")
    finally:
        stack.close()
    notes += [
        "model process: the same worker with VISIONQ_MODEL_PROCESS=true (the weights in a process of "
        "their own, worker/model_process.py), at the largest batch size, after the others.",
        "direct: the worker's pipeline objects in this process (fp16 on CUDA): run_batch() for caption and "
        "segment, num_images for generate, on one decoded 512x512 JPEG; images/s over at least "
        f"{plan.direct_s:g} s after two untimed calls. model+encode adds the PNG encoding of every output.",
        f"service: one worker serving all kinds, restarted per batch size with VISIONQ_MAX_BATCH_CAPTION and "
        f"_SEGMENT = the batch size; bursts of {plan.batches_per_burst} batches of jobs (generate: "
        f"{plan.batches_per_burst} jobs of num_images = batch), median of {plan.repeats}; images/s = images / "
        "(first submit -> last Job.wait returned). 'p50 batch' is the batch size the worker's records show.",
        "random weights: captions run to max_new_tokens (30) unless a random token ends them early; "
        "everything else does the same work as the real weights. The SmolVLM processor tiles a 512 px image "
        "into 4x4 crops plus the whole (17 x 64 image tokens), as the real one does.",
    ]
    return ScenarioResult(NAME, (rows or _direct_rows(direct, plan)) + other_rows, notes, [memory], data)


def _measure_direct(models: Path, plan: GpuPlan, cases: tuple[JobSpec, ...], image: bytes) -> dict[str, Any]:
    import torch

    from worker.images import decode_image
    from worker.loader import load_pipelines

    settings = Settings().with_models_dir(models)
    cuda = plan.device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(1)  # as the workers (VISIONQ_TORCH_THREADS=1); 2 threads stall on a busy box
    kinds = sorted({spec.kind for spec in cases}, key=lambda k: k.value)
    pipelines = load_pipelines(settings, kinds, plan.device)
    loaded_mib = torch.cuda.memory_allocated() / 2**20 if cuda else None
    decoded = decode_image(image, settings.limits)
    results: dict[str, Any] = {"loaded_mib": loaded_mib}
    for spec in cases:
        results[spec.case] = _measure_pipeline(pipelines[spec.kind], spec, plan, decoded, settings)
    del pipelines
    if cuda:
        torch.cuda.empty_cache()
    return results


def _measure_other_families(models: Path, plan: GpuPlan, cases: tuple[tuple[JobSpec, str], ...],
                            image: bytes) -> dict[str, Any]:
    """The catalogue's other models (not a kind's default), each loaded alone, directly."""
    import torch

    from worker.images import decode_image
    from worker.loader import load_pipeline
    from worker.loading import pick_dtype
    from worker.pipelines.base import ModelSpec

    settings = Settings()
    decoded = decode_image(image, settings.limits)
    results: dict[str, Any] = {}
    for spec, folder in cases:
        pipeline = load_pipeline(spec.kind, ModelSpec(str(models / folder)), plan.device, pick_dtype(plan.device))
        pipeline.warm_up()
        results[spec.case] = _measure_pipeline(pipeline, spec, plan, decoded, settings)
        del pipeline
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def _measure_pipeline(pipeline: Any, spec: JobSpec, plan: GpuPlan, image: Any, settings: Settings) -> dict[int, Any]:
    import torch

    from worker.png import encode_png

    cuda = plan.device.startswith("cuda")
    results: dict[int, Any] = {}
    for batch in plan.batch_sizes:
        call = _direct_call(pipeline, spec, batch, image, settings)
        call()
        call()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        calls, model_s, encode_s = 0, 0.0, 0.0
        while calls < 3 or model_s < plan.direct_s:
            started = time.perf_counter()
            outputs = call()
            ran = time.perf_counter()  # outputs are PIL images on the host: the GPU is done
            for output in outputs:
                encode_png(output, settings.png_compress_level)
            model_s += ran - started
            encode_s += time.perf_counter() - ran
            calls += 1
        results[batch] = {
            "calls": calls, "model_images_per_s": batch * calls / model_s,
            "full_images_per_s": batch * calls / (model_s + encode_s),
            "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        }
    return results


def _direct_call(pipeline: Any, spec: JobSpec, batch: int, image: Any, settings: Settings) -> Callable[[], list[Any]]:
    """One model call doing `batch` images' work; returns the images the worker would encode."""
    if spec.kind is JobKind.GENERATE:
        request = replace(spec, params={**spec.params, "num_images": batch}).request("", settings.limits)
        return lambda: list(run_one(pipeline, request, None, no_progress).images.values())
    request = spec.request("file:///bench.jpg", settings.limits)
    return lambda: [i for r in pipeline.run_batch([request] * batch, [image] * batch, no_progress)
                    for i in r.images.values()]


def _measure_service(
    stack: Stack, models: Path, plan: GpuPlan, cases: tuple[JobSpec, ...], batch: int, uri: str,
    model_process: bool = False,
) -> dict[str, Any]:
    spec = WorkerSpec(
        f"worker batch {batch}" + (" model process" if model_process else ""), "worker",
        ("worker", "--device", plan.device, "--models", str(models)),
        (("VISIONQ_MAX_BATCH_CAPTION", str(batch)), ("VISIONQ_MAX_BATCH_SEGMENT", str(batch)),
         ("VISIONQ_MODEL_PROCESS", "true" if model_process else "false")),
    )
    worker, = stack.start([spec], timeout_s=300)
    client = stack.client(worker.prefix)
    results: dict[str, Any] = {}
    try:
        for case in cases:
            if case.kind is JobKind.GENERATE:
                job = replace(case, params={**case.params, "num_images": batch})
                jobs, images_per_job = plan.batches_per_burst, batch
            else:
                job, jobs, images_per_job = case, plan.batches_per_burst * batch, 1

            def submit(c: Client, job: JobSpec = job) -> Job:
                return job.submit(c, uri)

            burst(client, submit, 1)  # untimed
            bursts = [burst(client, submit, jobs) for _ in range(plan.repeats)]
            results[case.case] = {
                "images_per_s": median([b.jobs_per_s * images_per_job for b in bursts]),
                "batch_size_p50": median([x for b in bursts for x in b.metric("batch_size")]) * images_per_job,
                "jobs_per_burst": jobs,
            }
        results["memory_mib"] = _worker_memory(stack, worker)
    finally:
        stack.stop([worker])
        stack.drop_prefix(worker.prefix)
    return results


def _worker_memory(stack: Stack, worker: Any) -> dict[str, float | None]:
    """What the worker's heartbeat reports (torch's allocator), and the process's total from nvidia-smi."""
    from tasks.heartbeats import list_workers

    beat = next((w for w in list_workers(stack.redis_client, worker.prefix) if w.get("pid") == worker.pid), {})
    memory: dict[str, float | None] = dict(beat.get("memory_mb", {}))
    memory["process"] = _nvidia_smi_mib(worker.pid)
    return memory


def _nvidia_smi_mib(pid: int) -> float | None:
    """The process's whole GPU footprint (CUDA context included); None where pids are not visible."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def _direct_rows(direct: dict[str, Any], plan: GpuPlan) -> list[Row]:
    """Without a service measurement: batch N against batch 1, direct."""
    rows = []
    for case, by_batch in direct.items():
        if case == "loaded_mib":
            continue
        first = by_batch[plan.batch_sizes[0]]
        for batch, measured in by_batch.items():
            rows.append(Row(NAME, f"{case}, batch {batch}", "images/s direct", measured["model_images_per_s"],
                            f"direct batch {plan.batch_sizes[0]}", first["model_images_per_s"],
                            f"{measured['calls']} calls"))
    return rows


def _header(command: str, plan: GpuPlan) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if plan.device.startswith("cuda") else "none (smoke run on the CPU)"
    driver = "-"
    if shutil.which("nvidia-smi"):
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip() or "-"
    return {
        "command": command,
        "gpu": gpu, "driver": driver,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "versions": f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
                    + ", ".join(f"{n} {_version(n)}" for n in ("transformers", "diffusers", "celery")),
    }


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _progress(message: str) -> None:
    print(f"[bench.gpu {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench.gpu: {exc}", file=sys.stderr)
        sys.exit(1)
