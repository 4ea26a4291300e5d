"""The benchmark suite runs and reports every figure with a baseline; no timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Row, Table, fmt, percentile

REPO = Path(__file__).resolve().parents[1]


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_row_ratio_is_value_over_baseline() -> None:
    row = Row("s", "case", "jobs/s", 30.0, "direct", 40.0, "3 x 20 jobs")
    assert row.ratio == pytest.approx(0.75)
    assert row.to_dict()["ratio"] == 0.75
    assert Row("s", "c", "f", 1.0, "b", 0.0, "r").ratio is None


def test_table_aligns_numbers_right() -> None:
    table = Table("t", ["name", "value"], [["a", fmt(1234.5)], ["bb", fmt(0.5)]])
    lines = table.render().splitlines()
    assert lines[3].endswith("1,234") and lines[4].endswith("0.500")
    assert len({len(line) for line in lines[1:]}) == 1


@pytest.mark.integration
@pytest.mark.bench
@pytest.mark.timeout(210)
def test_smoke_run_writes_figures_with_baselines(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "submit", "latency", "model_process", "--smoke", "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "command: python -m bench submit latency model_process --smoke" in result.stdout
    report = json.loads(out.read_text())
    assert {"command", "machine", "python", "versions", "wall_s", "plan", "scenarios"} <= report.keys()
    assert set(report["scenarios"]) == {"submit", "latency", "model_process"}
    for name, scenario in report["scenarios"].items():
        assert scenario["rows"] and scenario["notes"], name
        for row in scenario["rows"]:
            assert {"case", "figure", "value", "baseline", "baseline_value", "ratio", "runs"} <= row.keys()
            assert row["value"] > 0 and row["baseline_value"] > 0 and row["ratio"] > 0, row
    figures = {row["figure"] for row in report["scenarios"]["submit"]["rows"]}
    assert "submits/s, SDK, new bytes -> S3 upload" in figures
    latency = report["scenarios"]["latency"]["data"]["distributions"]
    assert {"idle: queue_ms", "80% load: enqueue -> wait returned ms"} <= latency.keys()
    split = report["scenarios"]["model_process"]  # the shipped worker against VISIONQ_MODEL_PROCESS
    assert [row["baseline"] for row in split["rows"]] == [
        "in the worker's process (shipped)", "batching off (max_batch 1)", "8 calls of 1"]
    assert set(split["data"]) == {"caption"}


@pytest.mark.timeout(120)
def test_inputs_scenario_times_both_decodes_at_each_processors_side() -> None:
    from bench import inputs
    from bench.harness import PLANS

    result = inputs.run(None, PLANS["smoke"])  # no stack: decode and preprocess only
    assert [row.figure for row in result.rows] == ["CPU ms/job, decode + preprocess at the model's side"] * 2 + [
        "CPU ms/job, decode whole + preprocess a copy at the model's side"] * 2
    assert all(row.value > 0 and row.baseline == "whole picture" and row.baseline_value > 0 for row in result.rows)
    assert [case["model_side"] for case in result.data.values()] == [384, 224, 352, 512]


def test_model_only_ceiling_times_each_way_over_several_rounds() -> None:
    """A round of a tiny model's batch lasts milliseconds: the ceiling times as many rounds as
    fill `min_s`, the same number each way, and counts every job of them."""
    import time

    from bench.batching import model_only_gain
    from bench.harness import bench_image

    calls: list[int] = []

    class OneMillisecondACall:  # a model whose call costs the same whatever the batch
        def run_batch(self, requests: list, images: list, progress: object) -> list:
            calls.append(len(requests))
            time.sleep(0.001)
            return [None] * len(requests)

    batched, single = model_only_gain(OneMillisecondACall(), "request", bench_image(32), batch=8, repeats=3, min_s=0.2)
    batches, singles = calls.count(8), calls.count(1)
    rounds = (batches - 1) // 3  # less the warm-up
    assert rounds >= 2 and batches == 1 + 3 * rounds and singles == 8 * batches
    assert batched > 2 * single > 0  # eight jobs a call against one


@pytest.mark.bench
def test_convoy_scenario_runs_the_model_alone_beside_threads_and_beside_a_process(tmp_path: Path) -> None:
    out = tmp_path / "convoy.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "convoy", "--smoke", "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scenario = json.loads(out.read_text())["scenarios"]["convoy"]
    assert [row["figure"] for row in scenario["rows"]] == [
        "jobs/s, 8 Python threads beside it, same process", "jobs/s, the same 8 threads in another process",
        "model thread CPU ms/job, threads in the same process",
    ] * 2
    assert all(row["value"] > 0 and row["baseline"] == "alone" and row["ratio"] > 0 for row in scenario["rows"])
    assert set(scenario["data"]) == {"caption (tiny BLIP)", "segment 2 labels (tiny CLIPSeg)"}


def test_convoy_churn_threads_stop_when_told() -> None:
    import threading
    import time

    from bench.convoy import churn

    stop = threading.Event()
    runner = threading.Thread(target=churn, args=(stop, 3))
    runner.start()
    time.sleep(0.05)
    assert runner.is_alive()  # the threads keep going until told
    stop.set()
    runner.join(5)
    assert not runner.is_alive()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_the_stacks_local_storage_is_made_where_asked_and_removed_with_it(tmp_path: Path) -> None:
    from bench.harness import bench_image, open_stack

    stack, close = open_stack("file", tmp_path)
    try:
        uri = stack.put_input(bench_image(64))
        assert stack.env("p")["VISIONQ_STORAGE_URL"].startswith(tmp_path.as_uri() + "/visionq-bench-storage-")
        assert uri.startswith(tmp_path.as_uri()) and len(list(tmp_path.rglob("*.jpg"))) == 1
    finally:
        close()
    assert list(tmp_path.iterdir()) == []


def test_a_storage_dir_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "events", "--smoke", "--storage-dir", str(tmp_path / "nowhere")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "--storage-dir" in result.stderr and "no such folder" in result.stderr


def test_full_size_configs_build_the_published_architectures() -> None:
    """The GPU benchmark's inline configs: the default models' parameter counts, to 0.1 %."""
    from bench.fullsize import MODEL_CARD_PARAMETERS, PUBLISHED_PARAMETERS, parameter_counts

    counts = parameter_counts("meta")
    assert counts.keys() == PUBLISHED_PARAMETERS.keys() | MODEL_CARD_PARAMETERS.keys()
    for name, count in counts.items():
        if name in PUBLISHED_PARAMETERS:
            assert count == pytest.approx(PUBLISHED_PARAMETERS[name], rel=1e-3), name
        else:  # the model page rounds to a million
            assert count == pytest.approx(MODEL_CARD_PARAMETERS[name], rel=5e-3), name


@pytest.mark.integration
@pytest.mark.bench
@pytest.mark.timeout(190)
def test_gpu_script_runs_its_steps_on_the_cpu(tmp_path: Path) -> None:
    """No CI machine has a GPU: --smoke runs the same steps there on the tiny models."""
    from bench.gpu import SMOKE_CASES, SMOKE_PLAN

    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--smoke", "--json", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["gpu"]["rows"]
    assert {row["case"].split(",")[0] for row in rows} >= {"caption (tiny BLIP)", "segment 2 labels (tiny CLIPSeg)"}
    assert all(row["value"] > 0 and row["ratio"] > 0 for row in rows)
    # The largest batch again, with the models in a process of their own.
    assert [row["case"] for row in rows if row["figure"] == "images/s service, model process"] == [
        f"{spec.case}, batch {SMOKE_PLAN.batch_sizes[-1]}" for spec in SMOKE_CASES
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
