"""Turning a pipeline's result into stored files and the job's JSON output."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterator

from tasks.errors import InternalError, VisionqError
from tasks.record import FileRef, JobRecord
from tasks.storage import Storage, job_key
from worker.pipelines.base import FileSlot, PipelineResult
from worker.png import encode_png

log = logging.getLogger("visionq.worker")


def publish_outputs(
    storage: Storage, job_id: str, result: PipelineResult, compress_level: int
) -> tuple[dict[str, Any], dict[str, float]]:
    """Encode and upload every image of `result`; return the output with FileRefs.

    Returns (output, timings) where timings has encode_ms and upload_ms.
    """
    refs: dict[str, dict[str, Any]] = {}
    encode_s = upload_s = 0.0
    for name, image in result.images.items():
        started = time.perf_counter()
        data = encode_png(image, compress_level)
        encoded = time.perf_counter()
        refs[name] = storage.put(job_key(job_id, name), data, "image/png").to_dict()
        encode_s += encoded - started
        upload_s += time.perf_counter() - encoded
    output = _fill_slots(result.output, refs)
    return output, {"encode_ms": round(encode_s * 1000, 3), "upload_ms": round(upload_s * 1000, 3)}


def _fill_slots(value: Any, refs: dict[str, dict[str, Any]]) -> Any:
    if isinstance(value, FileSlot):
        if value.name not in refs:
            raise InternalError(f"pipeline output names file {value.name!r} but returned no image for it")
        return refs[value.name]
    if isinstance(value, dict):
        return {k: _fill_slots(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_slots(v, refs) for v in value]
    return value


def publish_record(storage: Storage, record: JobRecord) -> None:
    """result.json: the final record next to the outputs, readable without Redis."""
    body = json.dumps(record.to_json_fields(), separators=(",", ":")).encode()
    storage.put(job_key(record.id, "result.json"), body, "application/json")


def discard_outputs(storage: Storage, job_id: str, output: dict[str, Any] | None) -> None:
    """Delete the files `output` names in the job's folder: uploaded for a success the record did
    not take (a cancel that won at the final transition, a result.json that could not be written).
    One attempt each; a file left behind is logged, not retried (nothing points to it)."""
    for uri in _file_uris(output):
        name = uri.rsplit("/", 1)[-1]
        try:
            storage.delete(job_key(job_id, name))
        except VisionqError as exc:
            log.warning("job %s: output %s not deleted: %s", job_id, name, exc.message)


def _file_uris(value: Any) -> Iterator[str]:
    if FileRef.described_by(value):
        yield value["uri"]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _file_uris(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_uris(item)
