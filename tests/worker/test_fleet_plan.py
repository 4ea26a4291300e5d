"""Pure parts of the fleet: which processes the supervisor starts, and device pinning."""
from __future__ import annotations

import pytest

from worker.device import pin_device
from worker.fleet import parse_gpus, plan_slots


def test_one_pinned_slot_per_gpu() -> None:
    slots = plan_slots([0, 2], 1, "auto", ["--kinds", "generate"])
    assert [s.device for s in slots] == ["cuda:0", "cuda:2"]
    assert slots[0].name.startswith("visionq-gpu0@") and slots[1].name.startswith("visionq-gpu2@")
    assert slots[1].args[:3] == ["worker", "--device", "cuda:2"] and slots[1].args[-2:] == ["--kinds", "generate"]


def test_cpu_replicas() -> None:
    slots = plan_slots(None, 3, "cpu", [])
    assert [s.device for s in slots] == ["cpu"] * 3
    assert len({s.name for s in slots}) == 3


def test_parse_gpus() -> None:
    assert parse_gpus("0,2") == [0, 2]
    assert parse_gpus("all", count_gpus=lambda: 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no CUDA GPU"):
        parse_gpus("all", count_gpus=lambda: 0)
    with pytest.raises(ValueError, match="distinct"):
        parse_gpus("1,1")
    with pytest.raises(ValueError, match="expected all"):
        parse_gpus("first")


def test_pinning_happens_in_the_environment_before_torch() -> None:
    env: dict[str, str] = {}
    assert pin_device("cuda:3", env) == "cuda:0"
    assert env["CUDA_VISIBLE_DEVICES"] == "3"  # the child sees only its own GPU
    assert pin_device("cpu", env) == "cpu"
    with pytest.raises(ValueError):
        pin_device("cuda:x", {})
    with pytest.raises(ValueError):
        pin_device("tpu", {})


def test_a_name_without_host_gets_this_hosts_so_celery_addresses_it_by_the_same_name() -> None:
    import socket

    from worker.process import worker_node_name

    assert worker_node_name("w1") == f"w1@{socket.gethostname()}"  # Celery alone would make it celery@w1
    assert worker_node_name("gpu0@node-7") == "gpu0@node-7"
