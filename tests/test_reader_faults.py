"""Faults of the archive and of single members that the reader met badly (an audit of hostile shards):
each becomes the shard's `read_error` or one sample's reason, and nothing after it is lost unsaid."""

import bz2
import gzip
import io
import json
import lzma
import os
import signal
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import sample_members, write_tar
from vlm_aug.cli import main
from vlm_aug.shards.read import ShardReader

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n"
       b"newpath 0 0 moveto 64 0 lineto 64 48 lineto closepath fill\nshowpage\n%%EOF\n")


def read(path: Path, **kw) -> tuple[list, ShardReader]:
    reader = ShardReader(str(path), "txt", ["jpg"], 1 << 20, **kw)
    return list(reader), reader


def tar_bytes(members, fmt=tarfile.USTAR_FORMAT, **kw) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, **kw) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def four() -> list:
    return sum((sample_members(k, f"caption {k}") for k in "abcd"), [])


def test_json_nested_past_the_recursion_limit_is_one_samples_bad_json(tmp_path):
    """json.loads raises RecursionError, not ValueError, on [[[[...]]]] ~1,000 deep: it failed the
    whole shard, on every rerun."""
    deep = ("[" * 5000 + "]" * 5000).encode()
    members = sample_members("ok1", "one") + [("deep.jpg", sample_members("x", "")[0][1]), ("deep.txt", b"deep"),
                                              ("deep.json", deep)] + sample_members("ok2", "two")
    samples, reader = read(write_tar(tmp_path / "s.tar", members))
    assert [(s.key, s.reason) for s in samples] == [("ok1", None), ("deep", "bad_json"), ("ok2", None)]
    assert reader.report.error is None


def test_a_member_name_that_is_not_utf8_is_one_samples_error_and_the_run_writes_it(tmp_path, capsys):
    """tarfile reads such a name with surrogate escapes, which no parquet or tar writer takes: the
    whole shard failed. Now the sample is an error (`bad_member_name`) with its bytes spelled out."""
    members = sample_members("ok1", "a red square") + sample_members("caf\udce9", "latin-1") + sample_members("ok2", "b")
    data = tar_bytes(members, encoding="utf-8", errors="surrogateescape")
    assert b"caf\xe9.jpg" in data
    shard = tmp_path / "in" / "000000.tar"
    shard.parent.mkdir()
    shard.write_bytes(data)
    samples, reader = read(shard)
    assert [(s.key, s.reason) for s in samples] == [("ok1", None), ("caf\\xe9", "bad_member_name"), ("ok2", None)]
    assert samples[1].members == ["caf\\xe9.jpg", "caf\\xe9.txt", "caf\\xe9.json"]
    assert samples[1].error_detail == "member name(s) 'caf\\xe9.jpg', 'caf\\xe9.txt', 'caf\\xe9.json' are not valid UTF-8"
    # through a whole run (no model): the shard commits, its parquet holds the three samples
    out = tmp_path / "out"
    code = main(["run", "configs/demo.yaml", "--no-model", "--no-report", "--input", str(shard), "--output", str(out),
                 "--set", "executor=local"])
    assert code == 0, capsys.readouterr().err
    rows = pq.read_table(out / "shards" / "000000.parquet").to_pylist()
    assert [(r["key"], r["status"], r["reason"]) for r in rows] == [
        ("ok1", "kept", None), ("caf\\xe9", "error", "bad_member_name"), ("ok2", "kept", None)]


def test_image_bytes_of_a_format_not_read_never_reach_other_decoders(tmp_path, monkeypatch):
    """Pillow left to itself tries every plugin: EPS bytes in a .jpg member were handed to Ghostscript
    (`gs`). Only the image formats vlm_aug reads are tried now; the sample is a decode_error."""
    fake = tmp_path / "bin"
    fake.mkdir()
    ran = tmp_path / "gs_ran"
    (fake / "gs").write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexit 1\n")
    (fake / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    from vlm_aug.shards.decode import decode_samples
    from vlm_aug.shards.images import header_facts

    samples, _ = read(write_tar(tmp_path / "s.tar", sample_members("eps", "a black square", EPS)))
    decode_samples(samples, 50_000_000, 1 << 20)
    assert (samples[0].status, samples[0].reason) == ("error", "decode_error")
    assert header_facts(EPS, "jpg") == ("jpg", False)
    assert not ran.exists()


@pytest.mark.parametrize("where", ["b.jpg", "d.jpg"])
def test_a_damaged_header_is_a_read_error_wherever_it_is(tmp_path, where):
    """tarfile takes a header it cannot parse for the end of the archive. Near the end of a shard the
    rest was already in its buffer, so the end check saw nothing: sample d vanished without a word."""
    data = bytearray(tar_bytes(four()))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        offset = tar.getmember(where).offset
    data[offset] ^= 0x01  # one bit of the name: the checksum no longer matches
    path = tmp_path / "d.tar"
    path.write_bytes(bytes(data))
    samples, reader = read(path)
    assert reader.report.error.startswith(f"truncated: a damaged tar header at byte {offset}")
    assert [s.key for s in samples] == list("abcd"[: "abcd".index(where[0])])


def test_a_member_longer_than_its_header_says_is_a_read_error(tmp_path):
    """b.txt declares 5 bytes and holds 700: tarfile reads the rest as the next header, takes it for the
    end of the archive, and sample c was dropped without a read error."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sample_members("a", "a red square") + sample_members("b", "")[:1]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        body = b"a blue circle " * 50
        info = tarfile.TarInfo("b.txt")
        info.size = 5
        tar.fileobj.write(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        tar.fileobj.write(body + b"\0" * (-len(body) % 512))
        tar.offset += 512 + len(body) + (-len(body) % 512)
        for name, data in sample_members("c", "a green square"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "s.tar"
    path.write_bytes(buffer.getvalue())
    samples, reader = read(path)
    assert [s.key for s in samples] == ["a", "b"]
    assert reader.report.error is not None and reader.report.error.startswith("truncated: a damaged tar header")


def test_bytes_after_the_end_are_checked_a_chunk_at_a_time(tmp_path):
    """Zero padding past the end of the archive is fine (tars pad to records); anything else after it
    is a read error; the tail was read in one piece (1.5 GB of padding: 4 GB of memory)."""
    data = tar_bytes(four())
    padded = tmp_path / "padded.tar"
    padded.write_bytes(data + b"\0" * (3 * 1024 * 1024))
    samples, reader = read(padded)
    assert (len(samples), reader.report.error) == (4, None)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(data + b"\0" * (2 * 1024 * 1024) + b"junk")
    samples, reader = read(junk)
    assert len(samples) == 4 and reader.report.error.startswith("truncated")


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_shards_are_read_and_their_checksum_checked(tmp_path, compress):
    """A flipped byte in a stored gzip block passed: tarfile never reads the stream's CRC."""
    data = tar_bytes(four())
    good = tmp_path / "good.tar.gz"
    good.write_bytes(compress(data))
    samples, reader = read(good)
    assert ([s.caption_orig for s in samples], reader.report.error) == ([f"caption {k}" for k in "abcd"], None)
    if compress is gzip.compress:
        stored = bytearray(gzip.compress(data, compresslevel=0))
        i = stored.find(b"caption b")
        stored[i + 8] = ord("x")
        bad = tmp_path / "bad.tar.gz"
        bad.write_bytes(bytes(stored))
        samples, reader = read(bad)
        assert reader.report.error is not None and "CRC" in reader.report.error


def test_a_caption_past_max_caption_bytes_is_an_error(tmp_path):
    """A 10 MB caption was kept as the training caption, and the semantic figures ran out of memory."""
    members = sample_members("big", "word " * 20_000) + sample_members("ok", "a red square")
    samples, _ = read(write_tar(tmp_path / "s.tar", members))
    assert [(s.key, s.reason) for s in samples] == [("big", "caption_too_long"), ("ok", None)]
    assert samples[0].error_detail == "100000 bytes > limits.max_caption_bytes=65536"
    samples, _ = read(tmp_path / "s.tar", max_caption_bytes=200_000)
    assert [s.reason for s in samples] == [None, None]


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """A FIFO named like a shard blocked the run forever."""
    fifo = tmp_path / "000000.tar"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the reader waited on the FIFO"))
    signal.alarm(20)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            read(fifo)
    finally:
        signal.alarm(0)


def test_a_link_among_the_ignored_members_leaves_the_sample_alone(tmp_path):
    """A symlink `x.pyd` beside a good sample's members is never read or followed, as any ignored
    member: it is counted, and the sample is not failed for it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sample_members("a", "a red square"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a.pyd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        image = tarfile.TarInfo("b.jpg")
        image.type, image.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(image)
    path = tmp_path / "s.tar"
    path.write_bytes(buffer.getvalue())
    samples, reader = read(path)
    assert [(s.key, s.reason) for s in samples] == [("a", None), ("b", "not_a_regular_file")]
    assert reader.report.ignored_members == 1
    assert json.loads(samples[0].orig_json) == {"key": "a"}


@pytest.mark.parametrize("url,says", [("http://user:SECRET@127.0.0.1:9/000000.tar", "holds credentials"),
                                      ("https://host.invalid/000000.tar?X-Amz-Signature=SECRET", "query string"),
                                      # each link of an fsspec chain (these passed, and the secrets were written)
                                      ("simplecache::http://u:SECRET@127.0.0.1:9/000000.tar", "holds credentials"),
                                      ("simplecache::https://host.invalid/000000.tar?X-Amz-Signature=SECRET",
                                       "query string")])
def test_an_input_url_with_a_secret_is_refused_without_echoing_it(tmp_path, capsys, url, says):
    """An input's URL goes into every sample's provenance, the manifest and the card, and a query string
    named the output shards (`000000.tar?X-Amz-Signature=....tar`)."""
    code = main(["run", "configs/demo.yaml", "--no-model", "--input", url, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "SECRET" not in err
    assert not (tmp_path / "out").exists()


def test_an_output_url_with_credentials_is_refused_without_echoing_them(tmp_path, capsys):
    """It went into the manifest, or botocore printed it in a traceback."""
    shard = write_tar(tmp_path / "in" / "000000.tar", four())
    code = main(["run", "configs/demo.yaml", "--no-model", "--input", str(shard), "--output", "s3://AKIAOUT:SECRET@bkt/o"])
    err = capsys.readouterr().err
    assert code == 2 and "output s3://bkt/o (user:password@) holds credentials" in err and "SECRET" not in err


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_a_decompression_bomb_among_ignored_members_is_stopped(tmp_path, compress, monkeypatch):
    """An ignored member of zeros is inflated to be skipped: 3 GB from 3 MB of gzip took 79 s, and
    there was no bound. Past MAX_INFLATED_FREE (1 GiB; 8 MiB here, so the test stays small) a shard may
    inflate at most MAX_INFLATION to 1: the samples before stand, the shard's read_error says why."""
    import vlm_aug.shards.read as read_module

    monkeypatch.setattr(read_module, "MAX_INFLATED_FREE", 8 << 20)
    bomb = sample_members("ok1", "one") + [("junk.npy", bytes(64 << 20))] + sample_members("ok2", "two")
    path = tmp_path / "bomb.tar.x"
    path.write_bytes(compress(tar_bytes(bomb)))
    samples, reader = read(path)
    assert [(s.key, s.reason) for s in samples] == [("ok1", None), ("junk", "truncated")]
    assert reader.report.error.startswith("inflation: ") and "decompress it and give the plain .tar" in reader.report.error
    # a shard of small distinct images (1 KB of noise, ~4 KB of tar and text each) is read whole past it
    real = sum((sample_members(f"k{i:04d}", f"a red square on a blue field, number {i}", os.urandom(1024),
                               {"url": f"https://example.com/{i}.jpg"}) for i in range(3000)), [])
    path.write_bytes(compress(tar_bytes(real)))
    samples, reader = read(path)
    assert len(samples) == 3000 and reader.report.error is None


def test_keys_that_differ_only_by_a_dot_folder_are_one_key(tmp_path):
    """`tar -C dir -cf x.tar .` names members './a.jpg': './a' and 'a' were both written, and `tar -x`
    of the output put them in one file. Now './a' is written 'a' (source_key keeps './a'), and a second
    sample that would be written 'a' is a duplicate_key error."""
    members = (sample_members("./a", "dot") + sample_members("a", "plain") + sample_members("x//y", "double")
               + sample_members("./b", "alone") + sample_members("../c", "unsafe"))
    samples, reader = read(write_tar(tmp_path / "s.tar", members))
    assert [(s.key, s.source_key, s.reason) for s in samples] == [
        ("a", "./a", None), ("a", None, "duplicate_key"), ("x/y", None, None), ("b", "./b", None),
        ("../c", None, "unsafe_member_path")]
    assert "'./a' (earlier in the shard) and 'a' are both written 'a'" in samples[1].error_detail
    assert reader.report.error is None


def test_globs_and_folders_take_shards_and_name_what_they_leave(tmp_path, capsys):
    """img2dataset writes 00000.tar, 00000.parquet and 00000_stats.json side by side: `dir/*` made the
    parquet and the json two empty shards, committed as done; .tar.xz and .tar.bz2 shards were read
    when named but left out of a folder without a word, and their outputs named `x.tar.xz`."""
    from vlm_aug.shards.read import expand_inputs, shard_name

    d = tmp_path / "in"
    d.mkdir()
    data = tar_bytes(four())
    (d / "00000.tar").write_bytes(data)
    (d / "00001.tar.xz").write_bytes(lzma.compress(data))
    (d / "00002.tar.bz2").write_bytes(bz2.compress(data))
    (d / "00000.parquet").write_bytes(b"PAR1")
    (d / "00000_stats.json").write_text("{}")
    shards = [str(d / n) for n in ("00000.tar", "00001.tar.xz", "00002.tar.bz2")]
    assert expand_inputs([str(d)]) == shards
    assert expand_inputs([str(d / "*")]) == shards
    assert "2 file(s) it matches are not shards and are left out (00000.parquet, 00000_stats.json)" \
        in capsys.readouterr().err
    assert [shard_name(u) for u in shards] == ["00000", "00001", "00002"]
    assert [len(read(Path(u))[0]) for u in shards] == [4, 4, 4]
    with pytest.raises(FileNotFoundError, match=r"matches 2 file\(s\) but no shard \(00000.parquet, 00000_stats"):
        expand_inputs([str(d / "00000[._][ps]*")])
    (d / "SHARD_3.TAR").write_bytes(data)  # any case, and no extension at all: a tar is told by its bytes
    (d / "shard-4").write_bytes(data)
    assert expand_inputs([str(d / "*")]) == sorted(shards + [str(d / "SHARD_3.TAR"), str(d / "shard-4")])
    assert str(d / "SHARD_3.TAR") in expand_inputs([str(d)])
    with pytest.raises(FileNotFoundError, match="pipe: URLs .* are not read"):
        expand_inputs([f"pipe:cat {d}/00000.tar"])


def test_an_output_an_earlier_version_named_after_the_whole_file_is_not_written_twice(tmp_path, capsys):
    """A .tar.xz shard named as input was read before, its output named `x.tar.xz` (x.tar.xz.tar, ...);
    it is `x` now: a rerun wrote every sample again beside the old shard. The old output is rebuilt here
    as that version wrote it (its files and their `shard` field renamed)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in/x.tar.xz").write_bytes(lzma.compress(tar_bytes(four())))
    out = tmp_path / "out"
    args = ["run", "configs/demo.yaml", "--no-model", "--no-report", "--no-progress", "--input",
            str(tmp_path / "in/x.tar.xz"), "--output", str(out)]
    assert main(args) == 0
    stats = json.loads((out / "shards/x.stats.json").read_text())
    stats["shard"] = "x.tar.xz"
    (out / "shards/x.tar.xz.stats.json").write_text(json.dumps(stats))
    (out / "shards/x.stats.json").unlink()
    for suffix in ("tar", "parquet"):
        (out / f"shards/x.{suffix}").rename(out / f"shards/x.tar.xz.{suffix}")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds 1 shard(s) that an earlier vlm_aug wrote under the input's whole file name" in err
    assert "in/x.tar.xz: x.tar.xz.tar (now x.tar)" in err and not (out / "shards/x.tar").exists()


def test_input_shards_of_one_name_are_refused_naming_them(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "000000.tar").write_bytes(tar_bytes(four()))
    assert main(["run", "configs/demo.yaml", "--input", str(tmp_path / "a"), "--input", str(tmp_path / "b"), "--output",
                 str(tmp_path / "out"), "--no-model", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"'000000': {tmp_path}/a/000000.tar, {tmp_path}/b/000000.tar" in err and "rename them" in err


def test_an_image_the_output_format_cannot_hold_is_one_samples_error(tmp_path):
    """A kept 70,000 x 4 PNG (280,000 pixels) cannot be written as JPEG (at most 65,500 a side): the
    writer's OSError failed the whole shard, on every rerun; now that sample is an `encode_error`."""
    wide = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (70000, 4), (200, 10, 10)).save(wide, format="PNG")
    write_tar(tmp_path / "in/000000.tar", sample_members("a", "first") + sample_members("wide", "too wide", wide.getvalue(), ext="png")
              + sample_members("z", "last"))
    out = tmp_path / "out"
    assert main(["run", "configs/demo.yaml", "--no-model", "--no-report", "--no-progress", "--input",
                 str(tmp_path / "in/000000.tar"), "--output", str(out), "--set", "output.normalize_image_format=jpg"]) == 0
    got = {r["key"]: r for r in pq.read_table(out / "shards/000000.parquet").to_pylist()}
    assert [got[k]["status"] for k in ("a", "wide", "z")] == ["kept", "error", "kept"]
    record = json.loads(got["wide"]["provenance"])
    assert got["wide"]["reason"] == "encode_error" and got["wide"]["caption"] is None
    assert record["source"]["error_detail"].startswith("the 70000x4 image could not be written as "
                                                       "output.normalize_image_format=jpg (OSError: ")
    assert record["source"]["error_detail"].endswith("; JPEG holds at most 65500 pixels a side: `png` or null writes it")
    with tarfile.open(out / "shards/000000.tar") as tar:
        assert sorted({n.split(".")[0] for n in tar.getnames()}) == ["a", "z"]
    assert json.loads((out / "shards/000000.stats.json").read_text())["counts"]["error"] == 1


def test_running_out_of_memory_while_decoding_fails_the_shard_not_the_sample(tmp_path, monkeypatch, capsys):
    """A MemoryError is the worker's fault (`pipeline._not_the_datas`): it was recorded as the sample's
    `decode_error` and the shard committed, so no rerun would ever decode that image again."""
    from PIL import ImageFile

    write_tar(tmp_path / "in/000000.tar", sample_members("a", "first") + sample_members("b", "second"))
    real = ImageFile.ImageFile.load

    def load(image):  # the allocator's answer when the process's memory is spent (ulimit -v)
        load.calls += 1
        if load.calls == 2:  # once: the second image's decode
            raise MemoryError()
        return real(image)

    load.calls = 0
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    out = tmp_path / "out"
    assert main(["run", "configs/demo.yaml", "--no-model", "--no-report", "--no-progress", "--input",
                 str(tmp_path / "in/000000.tar"), "--output", str(out), "--set", "input.decode_workers=1"]) == 1
    assert "MemoryError" in capsys.readouterr().err and not (out / "shards/000000.stats.json").exists()


def test_decoding_leaves_the_process_warning_filters_alone(tmp_path):
    """Each decode swapped the process's warning filters (`warnings.catch_warnings`, not thread-safe):
    a filter another thread added meanwhile was lost, and an `error` filter could stay behind."""
    import threading
    import warnings

    from helpers import image_bytes
    from vlm_aug.shards.decode import decode_image

    stop = threading.Event()

    def decode():
        while not stop.is_set():
            decode_image(image_bytes(), 1 << 20)

    threads = [threading.Thread(target=decode) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            warnings.filterwarnings("ignore", message=f"mark {i}")
            decode_image(image_bytes(), 1 << 20)
    finally:
        stop.set()
        for t in threads:
            t.join()
        kept = sum(1 for f in warnings.filters if f[1] is not None and f[1].pattern.startswith("mark "))
        warnings.resetwarnings()
    assert kept == 300


def test_a_run_where_every_sample_is_an_error_says_why_and_what_to_look_at(tmp_path, capsys):
    """img2dataset's captions in KEY.json only, read for KEY.txt: every sample an error, and the run's
    summary gave counts alone (exit 0, no reason, no hint)."""
    from helpers import image_bytes

    members = []
    for k in "abcd":
        members += [(f"{k}.jpg", image_bytes()), (f"{k}.json", json.dumps({"caption": f"photo {k}"}).encode())]
    write_tar(tmp_path / "in/000000.tar", members)
    args = ["run", "configs/demo.yaml", "--no-model", "--no-report", "--no-progress", "--input", str(tmp_path / "in")]
    assert main([*args, "--output", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "reasons: error:missing_caption 4 (the parquet's `reason` column" in captured.out
    assert ("warning: every sample (4) is an error, so the output holds nothing to train on; the commonest reason is "
            "error:missing_caption (4): is the caption in another member? input.caption_key") in captured.err
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["totals"]["reasons"] == {"error:missing_caption": 4}
    assert main([*args, "--output", str(tmp_path / "out2"), "--set", "input.caption_key=json:caption"]) == 0
    captured = capsys.readouterr()
    assert "warning: every sample" not in captured.err and "reasons:" not in captured.out


def test_members_of_one_key_apart_are_named_as_such(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", b"x"), ("b.jpg", b"y"), ("a.txt", b"cap a"), ("b.txt", b"cap b")])
    samples, _ = read(tmp_path / "s.tar")
    assert [(s.key, s.reason) for s in samples] == [("a", "missing_caption"), ("b", "missing_caption"),
                                                     ("a", "duplicate_key"), ("b", "duplicate_key")]
    assert "members are not next to each other" in samples[2].error_detail and "sorted by name" in samples[2].error_detail
