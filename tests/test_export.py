"""`vlm-aug export` (llava, messages) on a real output; the exports load in their consumers."""

import hashlib
import json
import os
import socket
import time
import re
import tarfile

import pytest

from output_helpers import REPO, run_pipeline
from vlm_aug.cli import main


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("export"), tiny_vlm_dir, tiny_clip_dir)


def kept_members(out):
    """{(shard, key): {ext: bytes}} for every sample in the output tars."""
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                found.setdefault((path.stem, key), {})[ext] = tar.extractfile(m).read()
    return found


def test_llava_export(out, tmp_path, capsys):
    dest = tmp_path / "llava"
    assert main(["export", str(out), str(dest), "--format", "llava"]) == 0
    assert "exported 15 kept sample(s)" in capsys.readouterr().out
    text = (dest / "llava.json").read_text()
    entries = json.loads(text)
    assert text == json.dumps(entries, indent=1, ensure_ascii=False)  # written entry by entry, as one dumps
    members = kept_members(out)
    assert len(entries) == len(members) == 15  # only kept samples: the broken one is absent
    for entry in entries:
        link = entry["provenance"]
        sample = members[(link["shard"], link["key"])]
        image = (dest / entry["image"]).read_bytes()
        assert image == sample["jpg"] and hashlib.sha256(image).hexdigest() == link["image_sha256"]
        human, gpt = entry["conversations"]
        assert human == {"from": "human", "value": "<image>\nDescribe this image in detail."}
        assert gpt == {"from": "gpt", "value": sample["txt"].decode()}
        assert link["run_id"] == json.loads(sample["json"])["pipeline"]["run_id"]


def test_provenance_key_traces_back(out, tmp_path, capsys):
    dest = tmp_path / "llava"
    assert main(["export", str(out), str(dest), "--format", "llava", "--instruction", "Caption it."]) == 0
    entry = json.loads((dest / "llava.json").read_text())[5]
    assert entry["conversations"][0]["value"] == "<image>\nCaption it."
    capsys.readouterr()
    link = entry["provenance"]
    assert main(["trace", str(out), link["key"], "--shard", link["shard"], "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["caption"] == entry["conversations"][1]["value"]
    assert record["source"]["image_sha256"] == link["image_sha256"]


def test_provenance_names_the_input_image_when_it_was_reencoded(tmp_path, tiny_vlm_dir, tiny_clip_dir, capsys):
    """PNG inputs written as jpg (the default normalize_image_format): the link held the sha256 of the
    re-encoded bytes, which no record holds, and `trace` showed another."""
    from helpers import image_bytes, sample_members, tiny_args, write_tar

    pngs = {f"p{i}": image_bytes((40 + 4 * i, 48), (200, 20 * i, 30), fmt="PNG") for i in range(3)}
    members = [m for key, png in pngs.items() for m in sample_members(key, "a red square", png, ext="png")]
    out, dest = tmp_path / "out", tmp_path / "llava"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(write_tar(tmp_path / "in" / "000000.tar", members)),
                 "--output", str(out), "--no-progress", "--no-report", *tiny_args(tiny_vlm_dir, tiny_clip_dir)]) == 0
    assert main(["export", str(out), str(dest), "--format", "llava"]) == 0
    entries = json.loads((dest / "llava.json").read_text())
    assert len(entries) == 3
    for entry in entries:
        link = entry["provenance"]
        assert link["image_sha256"] == hashlib.sha256(pngs[link["key"]]).hexdigest()
        assert (dest / entry["image"]).read_bytes()[:3] == b"\xff\xd8\xff"  # the exported image is the jpg
        capsys.readouterr()
        assert main(["trace", str(out), link["key"], "--json"]) == 0
        [record] = json.loads(capsys.readouterr().out)
        assert record["source"]["image_sha256"] == link["image_sha256"]
        assert record["source"]["image_reencoded_to"] == "jpg"


def test_messages_export_loads_in_hf_datasets(out, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    dest = tmp_path / "messages"
    assert main(["export", str(out), str(dest), "--format", "messages"]) == 0
    ds = datasets.load_dataset("parquet", data_files=str(dest / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))
    members = kept_members(out)
    assert len(ds) == 15 and isinstance(ds.features["images"].feature, datasets.Image)
    for row in ds:
        sample = members[(row["provenance"]["shard"], row["provenance"]["key"])]
        user, assistant = row["messages"]
        assert user["role"] == "user" and [c["type"] for c in user["content"]] == ["image", "text"]
        assert assistant == {"role": "assistant", "content": [{"type": "text", "text": sample["txt"].decode()}]}
        [image] = row["images"]
        assert isinstance(image, Image.Image) and image.size == Image.open(__import__("io").BytesIO(sample["jpg"])).size


def test_export_refuses_non_empty_destination_and_bad_output(out, tmp_path, capsys, monkeypatch):
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["export", str(out), str(dest), "--format", "llava"]) == 2
    assert "not empty" in capsys.readouterr().err and (dest / "keep.txt").read_text() == "mine"
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "new"), "--format", "messages"]) == 2
    assert "not a vlm_aug output directory" in capsys.readouterr().err
    # a URL destination was taken for the local folder ./s3:/bucket/x, and the export said it was done
    monkeypatch.chdir(tmp_path)
    for fmt in ("llava", "messages"):
        assert main(["export", str(out), "s3://bucket/x", "--format", fmt]) == 2
        assert "export writes to a local folder, and s3://bucket/x is a URL" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


def test_keys_with_folders_are_exported_one_sample_each(tmp_path, capsys):
    """webdataset keys may hold folders (`a/k.jpg`): `a/k`, `b/k` and `k` are three samples. The export
    read only the part after the last '/' and merged neighbours with the same name (3 of 5 exported)."""
    from helpers import sample_members, write_tar

    keys = ["a/k", "b/k", "k", "x/y/z", "z"]
    write_tar(tmp_path / "in/000000.tar", [m for key in keys for m in sample_members(key, f"caption of {key}")])
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(out),
                 "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    dest = tmp_path / "messages"
    assert main(["export", str(out), str(dest), "--format", "llava"]) == 0
    assert "exported 5 kept sample(s)" in capsys.readouterr().out
    entries = json.loads((dest / "llava.json").read_text())
    assert sorted(e["provenance"]["key"] for e in entries) == sorted(keys)
    assert {e["conversations"][1]["value"] for e in entries} == {f"caption of {key}" for key in keys}
    # member paths never become paths: every image is one flat file in its shard's folder
    assert sorted(p.name for p in (dest / "images/000000").iterdir()) == sorted(
        ["a%2Fk.jpg", "b%2Fk.jpg", "k.jpg", "x%2Fy%2Fz.jpg", "z.jpg"])
    assert all((dest / e["image"]).is_file() for e in entries)


def test_long_keys_get_bounded_file_names_and_a_failed_export_leaves_nothing(tmp_path, capsys):
    """A key of 36 Japanese characters is 324 bytes percent-encoded, over a file system's 255: the
    export died with 'File name too long' and left a half-written DEST that blocked the retry. Long
    stems are cut and end in a hash of the key; an export that fails (a damaged shard) leaves no DEST."""
    from helpers import sample_members, write_tar
    from vlm_aug.output.export import STEM_MAX, file_stem

    keys = ["日本語のキー" * 6, "k" * 300, "k" * 299, "short"]
    write_tar(tmp_path / "in/000000.tar", [m for key in keys for m in sample_members(key, f"caption {len(key)}")])
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(out), "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    dest = tmp_path / "llava"
    assert main(["export", str(out), str(dest), "--format", "llava"]) == 0
    entries = json.loads((dest / "llava.json").read_text())
    assert sorted(e["provenance"]["key"] for e in entries) == sorted(keys)
    names = [p.name for p in (dest / "images/000000").iterdir()]
    assert len(set(names)) == 4 and all(len(n.encode()) <= STEM_MAX + 4 for n in names)
    assert file_stem("short") == "short" and file_stem("k" * 300) != file_stem("k" * 299)
    head = file_stem("日本語のキー" * 6)[:-17]
    assert re.fullmatch(r"(%[0-9A-F]{2}|[^%])+", head)  # never cut inside a %XX
    # a complete shard whose tar is damaged: a clear error, no traceback, and nothing left to block a retry
    tar = out / "shards/000000.tar"
    tar.write_bytes(tar.read_bytes()[:1500])
    again = tmp_path / "again"
    assert main(["export", str(out), str(again), "--format", "messages"]) == 2
    err = capsys.readouterr().err
    assert "000000.tar cannot be read" in err and "000000.stats.json" in err and "Traceback" not in err
    assert not again.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".again")]
    assert main(["export", str(out), str(tmp_path / "llava/llava.json/below"), "--format", "llava"]) == 2
    assert "error:" in capsys.readouterr().err


def test_export_says_when_the_output_is_not_whole(tmp_path, capsys):
    """An output without a manifest (its first run stopped) or with a run writing it is exported as
    far as it is complete, and the export says so."""
    from helpers import sample_members, write_tar
    from vlm_aug.shards.layout import LEASE_FILE

    write_tar(tmp_path / "in/000000.tar", sample_members("a", "one") + sample_members("b", "two"))
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--no-model", "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(out), "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    assert main(["export", str(out), str(tmp_path / "e1"), "--format", "llava"]) == 0
    # a dry run's output: the one note says its captions are the originals (exported as training text)
    notes = [x for x in capsys.readouterr().err.splitlines() if "note:" in x]
    assert notes == [f"vlm-aug: note: {out} was written by a dry run (no model): their 2 sample(s) were exported "
                     "with their original captions, not rewrites"]
    (out / "manifest.json").unlink()
    (out / LEASE_FILE).write_text(json.dumps({"run_id": "r", "host": socket.gethostname(), "pid": os.getpid(),
                                              "heartbeat": time.time(), "started": time.time()}))  # a live holder
    assert main(["export", str(out), str(tmp_path / "e2"), "--format", "llava"]) == 0
    err = capsys.readouterr().err
    assert "no manifest.json" in err and "a run is writing" in err
