"""The image member of an output sample: one format per output, so that every consumer (Hugging Face
`datasets` infers one column per member name) loads it; the member's extension always names its bytes.

`output.normalize_image_format: jpg` (the default) keeps JPEG bytes as they are (a `.jpeg` is named
`.jpg`) and re-encodes anything else (PNG, WebP, the first frame of a GIF, BMP, TIFF) as JPEG,
quality 95, transparency on white; `png` does the same towards PNG (lossless, larger for photos).
Bytes already in the target format are re-encoded too when the pixels the models saw differ from
what a consumer's plain `convert("RGB")` of them gives (an EXIF orientation, transparency, 16 bits
a channel: `shards.decode.altered`), so training sees the image that was scored.
null keeps every image's bytes and names it by its real format, which may mix extensions.
A re-encode is recorded in the sample's provenance (`source.image_reencoded_to`), beside the
sha256 of the original bytes (`source.image_sha256`).
"""

from __future__ import annotations

import io
from typing import Optional

from PIL import Image

from vlm_aug.formats import EXT_OF_FORMAT
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import altered, decode_image, open_image

SAVE_AS = {"jpg": "JPEG", "png": "PNG"}


def header_facts(data: bytes, claimed: Optional[str]) -> tuple[Optional[str], bool]:
    """-> (the extension that names what the bytes are, else the claimed one; whether decoding alters
    their pixels), read from their header."""
    try:
        with open_image(data) as image:
            return EXT_OF_FORMAT.get(image.format, claimed), altered(image)
    except Exception:  # undecodable bytes never reach the writer as kept; keep the claim
        return claimed, False


def _as_stored(sample: Sample, target: Optional[str]) -> Optional[str]:
    """The extension the sample's bytes are written under as they are, or None: they are re-encoded."""
    if sample.image_real_ext is not None:  # decoding read both already
        ext, changed = sample.image_real_ext, bool(sample.image_altered)
    else:
        ext, changed = header_facts(sample.image_bytes, sample.image_ext)
    return ext if target is None or (ext == target and not changed) else None


def _encode(sample: Sample, target: str) -> bytes:
    image = sample.image if sample.image is not None else decode_image(sample.image_bytes, Image.MAX_IMAGE_PIXELS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=SAVE_AS[target], quality=95)
    return buffer.getvalue()


def encode_ahead(samples: list[Sample], target: Optional[str], pool=None) -> int:
    """Make the re-encoded image member of each decoded sample that needs one now, on `pool`'s threads
    (the prefetch thread's batch, ahead of the models), into `sample.encoded`: the writer runs on the
    thread that drives the models, and a PNG re-encoded as JPEG there (~3 ms a 768 px image) left the
    accelerator waiting. A sample later not kept costs its encode; one that fails is left to the writer,
    which records why. -> how many were encoded."""
    todo = [s for s in samples if s.active and s.image is not None and target is not None
            and _as_stored(s, target) is None]

    def encode(sample: Sample) -> None:
        try:
            sample.encoded = _encode(sample, target)
        except Exception:  # noqa: BLE001 - met again by output_image, which the writer turns into encode_error
            sample.encoded = None

    if pool is not None:
        pool.map(encode, todo)
    else:
        for sample in todo:
            encode(sample)
    return len(todo)


def output_image(sample: Sample, target: Optional[str]) -> tuple[bytes, str]:
    """-> (bytes, extension) of the sample's image member; sets `sample.image_reencoded_to`."""
    ext = _as_stored(sample, target)
    if ext is not None:
        return sample.image_bytes, ext
    data = sample.encoded if sample.encoded is not None else _encode(sample, target)
    sample.image_reencoded_to = target
    return data, target
