"""The fast I/O path gives what the slow one gave: output tars byte for byte what `tarfile` writes,
input headers parsed exactly as `tarfile` parses them (real, long-name, PAX, link and mutated
headers), members read raw equal to `extractfile`, EXIF orientation still applied when images
skip their no-op copies, and the record json the same object as before in orjson's bytes."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest
from PIL import Image

from helpers import image_bytes, write_tar
from vlm_aug.record import record_json
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import decode_samples
from vlm_aug.shards.read import ShardReader, _PlainHeaders
from vlm_aug.shards.write import TarMembers, add_member

FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname",
          "devmajor", "devminor")


def random_members(rng: random.Random) -> list[tuple[str, bytes]]:
    members = []
    for _ in range(rng.randint(0, 10)):
        length = rng.choice([1, 40, 99, 100, 101, 180, 300])
        name = "".join(rng.choice("abz_/0-.éü") for _ in range(length)).strip("/") or "a"
        payload = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))
        members.append((f"{name}.txt", payload))
    return members


def test_output_tar_is_byte_for_byte_tarfiles_gnu_stream():
    rng = random.Random(18)
    for _ in range(300):
        members = random_members(rng)
        expected = io.BytesIO()
        with tarfile.open(fileobj=expected, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for name, payload in members:
                add_member(tar, name, payload)
        ours = io.BytesIO()
        writer = TarMembers(ours)
        for name, payload in members:
            writer.add(name, payload)
        writer.close()
        assert ours.getvalue() == expected.getvalue()
        with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as back:  # and tarfile reads it back
            assert [(m.name, back.extractfile(m).read()) for m in back] == members


def headers_of(fmt: int) -> list[bytes]:
    """Every 512-byte header block tarfile writes for a mix of member kinds in format `fmt`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind in [("a.txt", tarfile.REGTYPE), ("d" * 90 + "/" + "n" * 60 + ".png", tarfile.REGTYPE),
                           ("x" * (90 if fmt == tarfile.USTAR_FORMAT else 130) + ".json", tarfile.REGTYPE),
                           ("dir", tarfile.DIRTYPE),
                           ("link", tarfile.SYMTYPE), ("hard", tarfile.LNKTYPE), ("fifo", tarfile.FIFOTYPE),
                           ("ünï.txt", tarfile.REGTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime, info.mode = kind, 700 if kind == tarfile.REGTYPE else 0, 1234567, 0o640
            info.uid, info.gid, info.uname, info.gname, info.linkname = 1000, 100, "me", "us", "a.txt"
            tar.addfile(info, io.BytesIO(b"\1" * info.size) if kind == tarfile.REGTYPE else None)
    data = buf.getvalue()
    return [data[i:i + 512] for i in range(0, len(data), 512) if data[i:i + 512].strip(b"\1")]


def v7_block(name: bytes, kind: bytes) -> bytes:
    """An old-style header: type NUL (a V7 file; a V7 directory when the name ends in /), checksum right."""
    block = bytearray(tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT))
    block[0:100], block[156:157] = name.ljust(100, b"\0"), kind
    block[257:265] = b"\0" * 8  # no ustar magic
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def parse(cls, block: bytes):
    try:
        info = cls.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        return type(exc).__name__
    return {f: getattr(info, f) for f in FIELDS}


def test_input_headers_parse_as_tarfile_parses_them():
    blocks = [b for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT) for b in headers_of(fmt)]
    blocks += [v7_block(b"old/dir//", b"\0"), v7_block(b"old/file.txt", b"\0"), v7_block(b"dir/", b"0")]
    rng = random.Random(7)
    mutated = []
    for block in blocks * 40:  # flip a byte: checksums, octal digits, types, NULs, high bits
        b = bytearray(block)
        b[rng.randrange(512)] = rng.choice([0, 0x20, ord("0"), ord("7"), ord("9"), 0x80, 0xFF, ord("5"), ord("x")])
        mutated.append(bytes(b))
    fast = 0
    for block in blocks + mutated + [b"\0" * 512, b"\0" * 100]:
        assert parse(_PlainHeaders, block) == parse(tarfile.TarInfo, block)
        fast += isinstance(parse(tarfile.TarInfo, block), dict)
    assert fast > len(blocks)  # most mutations still parse: the comparison covered the fast path


def test_members_read_raw_equal_extractfile(tmp_path):
    """PAX and GNU long names put extra headers before a member; the raw read must still start at its data."""
    members = [(f"{'k' * 120}{i}.{ext}", payload) for i in range(3) for ext, payload in
               (("jpg", image_bytes()), ("txt", f"caption {i} ünï".encode()), ("json", b'{"a": 1}'))]
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"{fmt}.tar"
        usable = members if fmt != tarfile.USTAR_FORMAT else [(n[110:], p) for n, p in members]
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, payload in usable:
                add_member(tar, name, payload)
        samples = list(ShardReader(str(path), "txt", ["jpg"], 1 << 20))
        assert [s.caption_orig for s in samples] == [f"caption {i} ünï" for i in range(3)]
        assert all(s.image_bytes == usable[0][1] and s.active for s in samples)


def test_truncated_member_is_still_reported(tmp_path):
    path = write_tar(tmp_path / "cut.tar", [("a.jpg", image_bytes()), ("a.txt", b"cap")])
    data = path.read_bytes()
    path.write_bytes(data[:512 + 100])  # the header and 100 bytes of the jpeg
    reader = ShardReader(str(path), "txt", ["jpg"], 1 << 20)
    samples = list(reader)
    assert reader.report.error and "truncated" in reader.report.error
    assert all(not s.active for s in samples)


def exif_jpeg(orientation: int) -> bytes:
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    image.paste((220, 20, 20), (0, 0, 30, 20))  # the left half red: a turn shows where it went
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


@pytest.mark.parametrize("orientation,size", [(1, (60, 20)), (6, (20, 60)), (8, (20, 60)), (3, (60, 20))])
def test_exif_orientation_is_still_applied(orientation, size):
    sample = Sample(key="k", shard="s", image_bytes=exif_jpeg(orientation), image_ext="jpg")
    decode_samples([sample], 1 << 24, 1 << 20)
    assert sample.image.size == size and sample.image.mode == "RGB"
    # the stored image's red half, after the turn EXIF asks for (1: as stored; 3: 180; 6: 90 clockwise;
    # 8: 90 counter-clockwise)
    red_at = {1: (5, 10), 3: (55, 10), 6: (10, 5), 8: (10, 55)}[orientation]
    green_at = {1: (55, 10), 3: (5, 10), 6: (10, 55), 8: (10, 5)}[orientation]
    assert sample.image.getpixel(red_at)[0] > 150 and sample.image.getpixel(green_at)[1] > 150, orientation


def test_rgb_png_is_not_copied_and_other_modes_become_rgb():
    plain, grey = (Sample(key=k, shard="s", image_bytes=image_bytes(fmt="PNG", mode=m), image_ext="png")
                   for k, m in (("a", "RGB"), ("b", "L")))
    decode_samples([plain, grey], 1 << 24, 1 << 20)
    assert plain.image.mode == grey.image.mode == "RGB" and plain.image_real_ext == "png"
    # the RGB image is the opened PNG itself (a copy is a plain Image, with no format); the grey one is converted
    assert plain.image.format == "PNG" and grey.image.format is None


def test_record_json_is_the_record():
    record = {"b": 1, "a": {"z": [1.5, None, "ünï"], "y": 0.1 + 0.2}, "nan": float("nan"), "big": 2 ** 63}
    raw = record_json(record)
    assert raw.decode("utf-8").startswith('{"a":{"y":0.30000000000000004,"z":[1.5,null,"ünï"]}')
    back = json.loads(raw)
    assert back["nan"] is None  # valid JSON, unlike json.dumps's NaN
    assert {k: v for k, v in back.items() if k != "nan"} == {k: v for k, v in record.items() if k != "nan"}
    assert record_json(dict(reversed(list(record.items())))) == raw  # key order never changes the bytes
