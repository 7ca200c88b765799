"""Small embedded thumbnails for gallery cards.

Kept samples' images come from the run's output tar; rejected and error samples
have no image there, so theirs come from the input shard named in the row, while
that shard is still readable. Tars are read as streams, members are matched by
name only (never used as paths) and oversized members or images are skipped.
"""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Optional

import fsspec

from vlm_aug.formats import IMAGE_EXTS
from vlm_aug.shards.decode import open_image

THUMB_SIDE = 192
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 50_000_000

def thumbnail_uri(data: bytes, side: int = THUMB_SIDE, max_pixels: int = MAX_PIXELS) -> tuple[Optional[str], str]:
    """Image bytes -> (JPEG data URI, "") or (None, why not)."""
    try:
        image = open_image(data)
        if image.width * image.height > max_pixels:
            return None, f"image too large to preview ({image.width}x{image.height})"
        image.draft("RGB", (side, side))  # JPEG: decode at reduced scale, much faster
        image = image.convert("RGB")
        image.thumbnail((side, side))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=78)
    except Exception as exc:  # noqa: BLE001 - any undecodable image becomes a placeholder
        return None, f"image unreadable ({type(exc).__name__})"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""

def read_members(url: str, names: set[str]) -> tuple[dict[str, bytes], str]:
    """Bytes of the wanted members of one tar, by exact name -> ({name: bytes}, error or "")."""
    found: dict[str, bytes] = {}
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            return found, "shard no longer exists"
        with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if member.name in names and member.isfile() and member.size <= MAX_MEMBER_BYTES:
                    found[member.name] = tar.extractfile(member).read()
                    if len(found) == len(names):
                        break
    except (OSError, tarfile.TarError, ValueError) as exc:
        return found, f"shard unreadable ({type(exc).__name__})"
    return found, ""

def wanted_member(card: dict) -> tuple[str, list[str]]:
    """-> (tar url, candidate member names) holding this card's image."""
    source = card["provenance"].get("source") or {}
    if card["status"] == "kept":
        ext = source.get("image_reencoded_to") or source.get("image_ext") or "jpg"
        return card["out_tar"], [f"{card['key']}.{ext}"]
    members = [m for m in source.get("members") or [] if m.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    if not members and source.get("image_ext"):
        members = [f"{card.get('source_key') or card['key']}.{source['image_ext']}"]
    return card.get("shard") or "", members

def attach_thumbnails(cards: list[dict], max_pixels: int = MAX_PIXELS) -> None:
    """Set card["thumb"] (data URI or None) and card["thumb_note"] (why none) on every card."""
    by_tar: dict[str, list[tuple[dict, list[str]]]] = {}
    for card in cards:
        url, names = wanted_member(card)
        card["thumb"], card["thumb_note"] = None, "no image member recorded"
        if url and names:
            by_tar.setdefault(url, []).append((card, names))
    for url, entries in by_tar.items():
        found, error = read_members(url, {n for _, names in entries for n in names})
        for card, names in entries:
            data = next((found[n] for n in names if n in found), None)
            if data is None:
                card["thumb_note"] = error or "image not found in shard"
                continue
            card["thumb"], card["thumb_note"] = thumbnail_uri(data, max_pixels=max_pixels)
