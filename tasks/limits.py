"""Every limit a request or an image is held to, in one place.

The defaults are documented in the README; operators override them through
settings (``VISIONQ_MAX_IMAGE_PIXELS`` ...). Submit-time checks and worker-side
checks read the same object, so the two sides can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # Images. Pillow only warns above 89.5 Mpx and refuses above twice that; our cap
    # is far lower and is checked on the declared size, before any pixel is decoded.
    max_image_pixels: int = 40_000_000
    max_image_side: int = 16_384
    max_image_bytes: int = 20 * MB  # fetched by URL or read from storage
    max_inline_image_bytes: int = 7 * MB  # base64 text carried inside the queue message
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
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
    # Idempotency keys and webhook URLs travel in records and messages.
    max_key_chars: int = 200
    max_url_chars: int = 2_048


DEFAULT_LIMITS = Limits()
