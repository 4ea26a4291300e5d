"""What the SDK uploads for a local image, and when: any PIL image, nothing before the checks,
the deployment's storage retry budget."""
from __future__ import annotations

import hashlib
import os

import pytest
from PIL import Image

from producer import Client, StorageError
from producer.redis_server import free_port
from tasks.errors import InvalidInput
from tasks.settings import Settings
from tasks.storage import input_key
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration

TIMEOUT = 60
GENERATE = {"kind": "generate", "input": {"prompt": "a kite", "width": 64, "height": 64, "steps": 1}}


def test_pil_images_of_any_mode_are_sent_and_an_empty_one_fails_alone(client: Client) -> None:
    cmyk = Image.new("CMYK", (48, 48), (0, 200, 200, 0))  # a CMYK JPEG's mode: no PNG holds it as is
    floats = Image.new("F", (48, 48), 0.5)
    empty = Image.new("RGB", (0, 0))
    unreadable = "/" + "x" * 300  # a name too long for the file system: OSError, not "no such file"
    requests = [GENERATE, {"kind": "caption", "input": {"image": cmyk, "max_new_tokens": 4}},
                {"kind": "caption", "input": {"image": empty}}, {"kind": "caption", "input": {"image": floats}},
                {"kind": "caption", "input": {"image": unreadable}}, GENERATE]
    results = client.submit_many(requests, chunk_size=2)
    assert [type(r).__name__ for r in results] == ["Job", "Job", "InvalidInput", "Job", "InvalidInput", "Job"], results
    assert "empty (0x0 pixels)" in results[2].message and "cannot be read" in results[4].message
    for job in (results[1], results[3]):
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error


def test_a_bad_parameter_is_refused_before_the_image_is_uploaded(client: Client) -> None:
    data = encode(Image.frombytes("RGB", (16, 16), os.urandom(16 * 16 * 3)), "PNG")  # never uploaded before
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        client.caption(data, max_new_tokens=10_000)
    assert not client.storage.exists(input_key(hashlib.sha256(data).hexdigest(), "png"))


def test_an_upload_waits_out_storage_briefly_and_says_for_how_long(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller is waiting: a submit's upload has its own short budget, not a job's
    VISIONQ_STORAGE_RETRY_S (300 s by default), and the refusal names the one it used."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # boto3's; nothing listens there
    settings = Settings.from_env({**service_env, "VISIONQ_STORAGE_RETRY_S": "300"})
    with pytest.raises(StorageError, match=r"\(a submit's budget is 10 s\)"):
        Client(settings=settings).caption(encode(scene(seed=78), "PNG"))


def test_a_webhook_url_is_checked_before_its_secret(client: Client) -> None:
    settings = client.settings.model_copy(update={"webhook_secret": None})
    with pytest.raises(InvalidInput, match="webhook") as refused:
        Client(settings=settings).generate("a kite", webhook=5)  # type: ignore[arg-type]
    assert "secret" not in refused.value.message, refused.value.message


def test_a_pil_image_is_sent_as_a_worker_would_see_it() -> None:
    import io

    from tasks.images import png_of
    from tasks.images import to_rgb

    sixteen_bit = Image.new("I", (4, 4), 20000)  # a 16-bit TIFF's grey: a plain convert clips it to white
    sent = Image.open(io.BytesIO(png_of(sixteen_bit))).convert("RGB")
    assert sent.getpixel((0, 0)) == to_rgb(sixteen_bit).getpixel((0, 0)) == (78, 78, 78)
