"""Hostile and broken inputs: every case finishes the run, records a precise reason,
keeps the invariant, writes nothing outside the output and loads no pickle."""

import contextlib
import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import image_bytes, sample_members, tiny_args, write_tar
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's calling card)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def encoded(mode, size=(32, 24), fmt="PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    color = {"L": 128, "P": 3, "I;16": 40000, "RGBA": (10, 200, 10, 128), "CMYK": (0, 200, 200, 0)}.get(mode, (1, 2, 3))
    Image.new(mode, size, color).save(buffer, fmt, **kw)
    return buffer.getvalue()


class Evil:
    """Unpickling this would create a marker file."""

    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def hostile_members(marker: Path) -> list[tuple[str, bytes]]:
    good = image_bytes()
    Evil.marker = str(marker)
    members = []
    members += sample_members("ok_first", "a red square")
    members += [("../escape.jpg", good), ("../escape.txt", b"escape")]
    members += [("/abs/path.jpg", good), ("/abs/path.txt", b"absolute")]
    members += sample_members("bomb", "a bomb", png_declaring(100_000, 100_000), ext="png")
    members += sample_members("truncated_img", "cut", image_bytes((64, 64))[:100])
    members += sample_members("zero_img", "zero", b"")
    members += sample_members("not_img", "not an image", b"<html>hello</html>")
    members += sample_members("gray", "gray", encoded("L"), ext="png")
    members += sample_members("palette", "palette", encoded("P"), ext="png")
    members += sample_members("sixteen", "16 bit", encoded("I;16"), ext="png")
    members += sample_members("rgba", "rgba", encoded("RGBA"), ext="png")
    members += sample_members("cmyk", "cmyk", encoded("CMYK", fmt="JPEG"))
    members += sample_members("one_px", "one pixel", image_bytes((1, 1)))
    members += sample_members("long_img", "elongated", image_bytes((2000, 3)))
    members += [("bad_utf8.jpg", good), ("bad_utf8.txt", b"caf\xe9 \xff\xfe")]
    members += [("empty_cap.jpg", good), ("empty_cap.txt", b"  \n")]
    members += sample_members("huge_cap", "word " * 10_000)
    members += sample_members("scripts", "一只猫 кошка قطة 🐱🚀")
    members += [("no_caption.jpg", good)]
    members += [("no_image.txt", b"caption without image")]
    members += sample_members("dup", "first copy") + sample_members("other", "between")
    members += sample_members("dup", "second copy")
    members += sample_members("dotted.key.v2", "dots in the key")
    members += sample_members("pickled", "has a pickle") + [("pickled.pyd", pickle.dumps(Evil())),
                                                           ("pickled.pickle", pickle.dumps(Evil()))]
    members += [("badjson.jpg", good), ("badjson.txt", b"fine caption"), ("badjson.json", b"{not json")]
    members += sample_members("ok_last", "a blue circle")
    return members


EXPECTED = {  # key -> (status, reason); None = processed normally
    "ok_first": None, "../escape": ("error", "unsafe_member_path"), "/abs/path": ("error", "unsafe_member_path"),
    "bomb": ("error", "image_too_large"), "truncated_img": ("error", "decode_error"),
    "zero_img": ("error", "decode_error"), "not_img": ("error", "decode_error"),
    "gray": None, "palette": None, "sixteen": None, "rgba": None, "cmyk": None, "one_px": None,
    "long_img": None, "bad_utf8": ("error", "bad_utf8"), "empty_cap": ("error", "empty_caption"),
    "huge_cap": None, "scripts": None, "no_caption": ("error", "missing_caption"),
    "no_image": ("error", "missing_image"), "other": None, "dotted_key_v2": None, "pickled": None,
    "badjson": ("error", "bad_json"), "ok_last": None,
}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "PWNED"
    write_tar(root / "in/000000.tar", hostile_members(marker))
    write_tar(root / "in/000001.tar", sample_members("a", "x") + sample_members("b", "y"))
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tar:
        for name, data in sample_members("t1", "before cut") + sample_members("t2", "cut here", image_bytes((300, 300))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(full.getvalue())) as tar:
        cut = tar.getmember("t2.jpg").offset_data + 100
    (root / "in/000002.tar").write_bytes(full.getvalue()[:cut])  # cut inside t2's image
    write_tar(root / "in/000003.tar", [])  # an empty tar
    (root / "in/000004.tar").write_bytes(b"this file is not a tar archive at all" * 20)
    gz = io.BytesIO()  # webdataset's .tar.gz: read through gzip, written out as 000005.tar
    with tarfile.open(fileobj=gz, mode="w:gz") as tar:
        for name, data in sample_members("g1", "gzipped one") + sample_members("g2", "gzipped two"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "in/000005.tar.gz").write_bytes(gz.getvalue())
    before = set((root).rglob("*"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in"),
                     "--output", str(root / "out"), "--no-progress", "--no-report",
                     *tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "limits.max_image_pixels=1000000",
                                "--set", "limits.max_caption_chars=300")])
    written = set(root.rglob("*")) - before
    root.joinpath("stderr.txt").write_text(err.getvalue())
    return root, code, written, marker


def rows(root, shard):
    return {r["key"]: r for r in pq.read_table(root / f"out/shards/{shard}.parquet").to_pylist()}


def test_run_completes_and_every_case_has_its_reason(hostile_run):
    root, code, _, _ = hostile_run
    assert code == 0
    got = rows(root, "000000")
    for key, expected in EXPECTED.items():
        row = got[key]
        if expected is None:
            assert row["status"] == "kept", (key, row["status"], row["reason"])
        else:
            assert (row["status"], row["reason"]) == expected, key


def test_duplicate_keys_and_dotted_keys(hostile_run):
    root = hostile_run[0]
    table = pq.read_table(root / "out/shards/000000.parquet").to_pylist()
    dups = [r for r in table if r["key"] == "dup"]
    assert [r["status"] for r in dups] == ["kept", "error"] and dups[1]["reason"] == "duplicate_key"
    assert dups[0]["caption_orig"] == "first copy"
    dotted = [r for r in table if r["key"] == "dotted_key_v2"][0]
    assert dotted["source_key"] == "dotted.key.v2"
    with tarfile.open(root / "out/shards/000000.tar") as tar:
        names = tar.getnames()
    assert "dotted_key_v2.jpg" in names and not any(n.startswith(("..", "/")) for n in names)


def test_members_with_two_part_extensions_belong_to_their_sample(tmp_path):
    """webdataset's layout `KEY.seg.png`, `KEY.orig.txt`: one sample with the members it knows, as
    webdataset groups them; the known extension's rule made `KEY.seg` a sample (no caption), then `KEY`
    again (a duplicate), so every sample failed. Dotted keys stay one sample each."""
    from vlm_aug.shards.read import ShardReader

    members = []
    for key in ("000001", "000002"):
        members += [(f"{key}.jpg", image_bytes()), (f"{key}.json", b'{"url": "u"}'),
                    (f"{key}.orig.txt", b"the original"), (f"{key}.seg.png", image_bytes()),
                    (f"{key}.txt", f"caption {key}".encode())]
    members += sample_members("photo.2019.v2", "dotted") + sample_members("x", "plain")
    members += sample_members("x.y", "a dotted key after its own prefix") + sample_members("x.y.z", "and again")
    write_tar(tmp_path / "s.tar", members)
    reader = ShardReader(str(tmp_path / "s.tar"), "txt", ["jpg", "png"], 1 << 20)
    read = list(reader)
    assert [(s.key, s.active, s.caption_orig) for s in read] == [
        ("000001", True, "caption 000001"), ("000002", True, "caption 000002"),
        ("photo_2019_v2", True, "dotted"), ("x", True, "plain"), ("x_y", True, "a dotted key after its own prefix"),
        ("x_y_z", True, "and again")], [(s.key, s.reason) for s in read]
    assert read[0].image_bytes == image_bytes() and reader.report.ignored_members == 4  # orig.txt, seg.png
    assert next(iter(ShardReader(str(tmp_path / "s.tar"), "orig.txt", ["jpg"], 1 << 20))).caption_orig == "the original"


def test_a_byte_order_mark_is_not_part_of_the_caption_or_the_json(tmp_path):
    from vlm_aug.shards.read import ShardReader

    write_tar(tmp_path / "s.tar", [("a.jpg", image_bytes()), ("a.json", b'\xef\xbb\xbf{"k": 1}'),
                                   ("a.txt", b"\xef\xbb\xbfa red square")])
    (sample,) = ShardReader(str(tmp_path / "s.tar"), "txt", ["jpg"], 1 << 20)
    assert sample.active and sample.caption_orig == "a red square" and sample.orig_json == '{"k": 1}'


def test_keys_that_one_output_key_would_stand_for(tmp_path):
    """'a.b' is written as 'a_b': of an input that also holds 'a_b' the first is kept, and the error
    of the others names both input keys rather than claiming the input repeats one."""
    from vlm_aug.shards.read import ShardReader

    write_tar(tmp_path / "s.tar", sample_members("a.b", "dotted") + sample_members("a_b", "plain")
              + sample_members("c", "between") + sample_members("a_b", "again"))
    first, second, _, third = ShardReader(str(tmp_path / "s.tar"), "txt", ["jpg"], 1 << 20)
    assert (first.key, first.source_key, first.active) == ("a_b", "a.b", True)
    assert (second.key, second.reason) == ("a_b", "duplicate_key")
    assert second.error_detail == "keys 'a.b' (earlier in the shard) and 'a_b' are both written 'a_b' (dots in keys become '_'; a folder './' is dropped)"
    assert (third.reason, third.error_detail) == ("duplicate_key", second.error_detail)


def test_a_key_without_a_name_is_an_error_not_a_sample_consumers_drop(tmp_path):
    """Members '.jpg' and 'a/.jpg' have no name before their extension: webdataset and HF datasets
    drop such samples without a word, so the reader makes them errors with a reason."""
    from vlm_aug.shards.read import ShardReader

    write_tar(tmp_path / "s.tar", sample_members("p", "one") + sample_members("", "no name")
              + sample_members("a/", "no name in a folder") + sample_members("q", "two"))
    got = [(s.key, s.status, s.reason) for s in ShardReader(str(tmp_path / "s.tar"), "txt", ["jpg"], 1 << 20)]
    assert got == [("p", "pending", None), ("", "error", "empty_key"), ("a/", "error", "empty_key"),
                   ("q", "pending", None)]


def test_stats_counts_match_the_rows_and_the_tar(hostile_run):
    """The writer's counters, checked against what it wrote: parquet rows by status, keys in the tar."""
    root = hostile_run[0]
    for stats_file in (root / "out/shards").glob("*.stats.json"):
        name = stats_file.name[: -len(".stats.json")]
        stats = json.loads(stats_file.read_text())
        statuses = [r["status"] for r in pq.read_table(root / f"out/shards/{name}.parquet").to_pylist()]
        with tarfile.open(root / f"out/shards/{name}.tar") as tar:
            tar_keys = {m.name.split(".", 1)[0] for m in tar}
        assert stats["counts"] == {"inputs": len(statuses), **{s: statuses.count(s) for s in ("kept", "rejected", "error")}}
        assert stats["counts"]["kept"] == len(tar_keys)
        reasons = sum(stats["reasons"].values())
        assert reasons == sum(1 for r in pq.read_table(root / f"out/shards/{name}.parquet").to_pylist() if r["reason"])


def test_long_caption_truncated_with_flag(hostile_run):
    row = rows(hostile_run[0], "000000")["huge_cap"]
    assert row["caption_truncated"] is True
    assert json.loads(row["provenance"])["generation"]["caption_truncated"] is True


def test_no_pickle_loaded_and_nothing_written_outside_output(hostile_run):
    root, _, written, marker = hostile_run
    assert not marker.exists()
    assert all(str(p).startswith(str(root / "out")) for p in written), written
    assert json.loads((root / "out/shards/000000.stats.json").read_text())["ignored_members"] == 2


def test_truncated_empty_and_not_a_tar(hostile_run):
    root = hostile_run[0]
    cut = json.loads((root / "out/shards/000002.stats.json").read_text())
    assert cut["read_error"].startswith("truncated")
    got = rows(root, "000002")
    assert got["t1"]["status"] == "kept" and got["t2"]["status"] == "error"
    empty = json.loads((root / "out/shards/000003.stats.json").read_text())
    assert empty["counts"]["inputs"] == 0 and empty["read_error"] is None
    bogus = json.loads((root / "out/shards/000004.stats.json").read_text())
    assert bogus["counts"]["inputs"] == 0 and "ReadError" in bogus["read_error"]
    manifest = json.loads((root / "out/manifest.json").read_text())
    assert set(manifest["shards"]["read_errors"]) == {"000002", "000004"}
    assert rows(root, "000001")["a"]["status"] == "kept"
    # said at the end of the run, not only written down: the shards not read to their end, with why
    warning = (root / "stderr.txt").read_text().split("warning: 2 input shard(s) could not be read to their end")[1]
    assert "000002: truncated" in warning and "000004: ReadError" in warning and "000003" not in warning
    from vlm_aug.output.query import stats
    from vlm_aug.shards.layout import OutputDir

    assert set(stats(OutputDir(str(root / "out")), per_shard=False)["read_errors"]) == {"000002", "000004"}


def test_a_gzipped_shard_is_read_whole_and_keeps_its_name(hostile_run):
    root = hostile_run[0]
    stats = json.loads((root / "out/shards/000005.stats.json").read_text())
    assert stats["read_error"] is None and stats["counts"]["inputs"] == 2  # no bogus "truncated"
    assert {r["key"]: r["status"] for r in rows(root, "000005").values()} == {"g1": "kept", "g2": "kept"}
