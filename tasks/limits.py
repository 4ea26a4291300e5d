"""Every limit a request or an image is held to, in one place.

The defaults are documented in the README; operators override them through
settings (``VISIONQ_MAX_IMAGE_PIXELS`` ...). Submit-time checks and worker-side
checks read the same object, so the two sides can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024
# Jobs in one `POST /v1/jobs/batch`; the SDK's gateway mode sends submit_many in chunks of at most this.
MAX_BATCH_JOBS = 100


@dataclass(frozen=True)
class Limits:
    # Images. Pillow only warns above 89.5 Mpx and refuses above twice that; our cap
    # is far lower and is checked on the declared size, before any pixel is decoded.
    max_image_pixels: int = 40_000_000
    max_image_side: int = 16_384
    max_image_bytes: int = 20 * MB  # fetched by URL or read from storage
    max_inline_image_bytes: int = 7 * MB  # base64 text carried inside the queue message
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    # A progressive JPEG is decoded once per scan: thousands of empty scans cost
    # minutes of CPU in a few hundred KB. libjpeg-turbo advises ~100 (real files have ~10).
    max_jpeg_scans: int = 100
    # Text.
    max_prompt_chars: int = 2_000
    max_labels: int = 16
    max_label_chars: int = 100
    # Caption.
    max_new_tokens: int = 256
    max_num_beams: int = 8
    # Generate. Diffusion latents are 1/8 of the image, hence the multiple of 8.
    min_side: int = 64
    max_side: int = 2_048
    side_multiple: int = 8
    max_steps: int = 100
    max_num_images: int = 8
    max_guidance_scale: float = 30.0
    max_seed: int = 2**32 - 1
    # Work per job. Generate: width x height x steps x num_images (2**28 keeps
    # 512^2 x 100 steps x 1 and 1024^2 x 50 steps x 4; refuses 2048^2 x 100 x 8).
    max_generate_work: int = 2**28
    # Segment with labels: one full-size mask per label, so labels x image pixels
    # (2**27 keeps 16 labels on 4 Mpx; refuses 16 labels on 40 Mpx). Checked on the
    # worker, once the image's size is known.
    max_segment_mask_pixels: int = 2**27
    # Idempotency keys and webhook URLs travel in records and messages.
    max_key_chars: int = 200
    max_url_chars: int = 2_048


DEFAULT_LIMITS = Limits()
