"""The size cost of `output.normalize_image_format`: the colour photos that scikit-image ships, each
saved as JPEG (q90, as web data mostly is), PNG, WebP, GIF, BMP and TIFF, then passed through the
writer's own conversion (`shards.images.output_image`) to jpg and to png; prints bytes in and out.

    python -m vlm_aug.lab.bench.image_sizes      # needs scikit-image (pip install scikit-image)
"""

from __future__ import annotations

import io

from PIL import Image

from vlm_aug.formats import EXT_OF_FORMAT
from vlm_aug.sample import Sample
from vlm_aug.shards.images import output_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG and WebP saved at quality 90


def photos() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def main() -> None:
    images = photos()
    print(f"{len(images)} photos ({', '.join(PHOTOS)}), bytes summed over them")
    print(f"{'input format':>12} {'input':>10} {'as jpg':>10} {'ratio':>6} {'as png':>10} {'ratio':>6}")
    for fmt in INPUT_FORMATS:
        ext = EXT_OF_FORMAT[fmt]
        sizes = {"in": 0, "jpg": 0, "png": 0}
        for image in images:
            data = encoded(image, fmt)
            sizes["in"] += len(data)
            for target in ("jpg", "png"):
                sample = Sample(key="k", shard="s", image_bytes=data, image_ext=ext)  # decoded from the bytes, as in a run
                sizes[target] += len(output_image(sample, target)[0])
        print(f"{ext:>12} {sizes['in']:>10,} {sizes['jpg']:>10,} {sizes['jpg'] / sizes['in']:>6.2f} "
              f"{sizes['png']:>10,} {sizes['png'] / sizes['in']:>6.2f}")


if __name__ == "__main__":
    main()
