"""Image bytes -> RGB PIL image, bounded in size; one bad image never stops a run."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from typing import Optional

from PIL import ExifTags, Image, ImageOps

from vlm_aug.formats import EXT_OF_FORMAT, IMAGE_FORMATS
from vlm_aug.sample import Sample

# Pillow warns of an image over Image.MAX_IMAGE_PIXELS (set to limits.max_image_pixels below) as it
# opens it, and `decode_with_format` refuses such an image by its size before decoding, so the warning
# adds nothing. Set once, here: a `warnings.catch_warnings` around each decode swapped the process's
# filters from several threads at once (it is not thread-safe) and dropped other threads' filters.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def open_image(data: bytes) -> Image.Image:
    """`Image.open` of shard bytes, trying only the formats vlm_aug reads (`IMAGE_FORMATS`): left to
    itself Pillow tries every plugin it has, and it hands EPS bytes to Ghostscript."""
    Image.init()  # registers WebP, TIFF and MPO, which Pillow's preinit leaves out; once, then a no-op
    return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode, refusing images that declare more than `max_pixels` before decoding them."""
    return decode_with_format(data, max_pixels)[0]


def decode_with_format(data: bytes, max_pixels: int) -> tuple[Image.Image, Optional[str], bool]:
    """-> (RGB image, the extension that names the bytes' real format, read from their header,
    whether those pixels differ from the plain `convert("RGB")` of the bytes: `altered`)."""
    image = open_image(data)
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"image_too_large: {width}x{height} exceeds limits.max_image_pixels={max_pixels}")
    image.load()
    ext = EXT_OF_FORMAT.get(image.format)
    is_turned = turned(image)
    changed = is_turned or _recoloured(image)
    if is_turned:  # else exif_transpose would only copy
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image), ext, changed


_TURNED = {2, 3, 4, 5, 6, 7, 8}  # EXIF orientations other than "as stored"
_WIDE = ("I;16", "I;16B", "I;16L", "I")  # more than 8 bits a channel: scaled, where convert() would clip
_ALPHA = ("RGBA", "LA", "PA")


def turned(image: Image.Image) -> bool:
    return image.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED


def altered(image: Image.Image) -> bool:
    """Whether the RGB pixels the models get (`_to_rgb` after the EXIF turn) can differ from what a
    consumer's plain `Image.open(...).convert("RGB")` of the same bytes gives, which applies no EXIF
    orientation, drops transparency instead of putting it on white and clips 16-bit values. Read
    from the header (an opened image, loaded or not); the writer re-encodes such images
    (`shards/images.py`), so that training sees what was scored."""
    return turned(image) or _recoloured(image)


def _recoloured(image: Image.Image) -> bool:
    """Transparency (put on white by `_to_rgb`) or more than 8 bits a channel (scaled)."""
    return image.mode in _ALPHA or image.mode in _WIDE or (image.mode == "P" and "transparency" in image.info)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE:
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit: scale to 8 bits first
    if image.mode in _ALPHA or (image.mode == "P" and "transparency" in image.info):  # on white
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB image


def decode_samples(samples: list[Sample], max_pixels: int, max_image_bytes: int, pool=None) -> None:
    """Attach `sample.image` to every active sample, or fail it with a reason. With `pool` (a
    `vlm_aug.workers.Workers`: Pillow releases the GIL while decoding) the images decode in parallel."""
    start_decoding(samples, max_pixels, max_image_bytes, pool)()


def start_decoding(samples: list[Sample], max_pixels: int, max_image_bytes: int, pool=None):
    """`decode_samples` in two halves: with `pool`, the images are handed to its threads now and the
    caller may do other work (read the next batch, write the last one) before it calls the returned
    function, which decodes what is left beside them and attaches images and failures. Without
    `pool` the returned function decodes them all."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    todo = []
    for sample in samples:
        if not sample.active:
            continue
        if len(sample.image_bytes) > max_image_bytes:
            sample.fail("image_too_large", f"{len(sample.image_bytes)} bytes > limits.max_image_bytes")
        elif not sample.image_bytes:
            sample.fail("decode_error", "zero-byte image")
        else:
            todo.append(sample)
    if pool is None:
        outcomes = lambda: [_decode_one(s.image_bytes, max_pixels) for s in todo]  # noqa: E731
    else:
        outcomes = pool.start_map(lambda s: _decode_one(s.image_bytes, max_pixels), todo)

    def finish() -> None:
        for sample, (decoded, failure, sha256) in zip(todo, outcomes()):
            sample.image_sha256 = sha256
            if failure:
                sample.fail(*failure)
            else:
                sample.image, sample.image_real_ext, sample.image_altered = decoded

    return finish


def _decode_one(data: bytes, max_pixels: int):
    """-> ((image, real ext, altered), None, sha256) or (None, (reason, detail), sha256); never raises. The
    record's sha256 of the bytes is made here, on the decode thread (hashlib releases the GIL), rather
    than in the writer, which runs one sample at a time."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return decode_with_format(data, max_pixels), None, sha256
    except MemoryError:  # the worker's, not the sample's: the shard fails and is retried, never committed
        raise
    except Exception as exc:  # PIL raises many types for hostile bytes
        reason = "image_too_large" if "too_large" in str(exc) or "DecompressionBomb" in type(exc).__name__ else "decode_error"
        detail = re.sub(r" at 0x[0-9a-f]+", "", f"{type(exc).__name__}: {exc}")  # reruns record the same text
        return None, (reason, detail), sha256
