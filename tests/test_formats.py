"""Input shards that mix image formats give output that every consumer loads with default settings:
one image member name (`jpg`) whose bytes are JPEG, JPEG inputs copied untouched, the rest
re-encoded and said so in provenance; unreadable image types get their own reason."""

import hashlib
import io
import json
import subprocess
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import image_bytes, sample_members, write_tar
from output_helpers import REPO
from vlm_aug.cli import main


def animated_gif() -> bytes:
    frames = [Image.new("P", (30, 20), i) for i in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def rgba_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (24, 24), (0, 0, 255, 0)).save(buffer, "PNG")  # fully transparent blue
    return buffer.getvalue()


INPUTS = {  # key -> (member extension, bytes)
    "a_jpg": ("jpg", image_bytes()), "b_jpeg": ("jpeg", image_bytes(color=(10, 200, 10))),
    "c_png": ("png", rgba_png()), "d_webp": ("webp", image_bytes(fmt="WEBP")), "e_gif": ("gif", animated_gif()),
    "f_bmp": ("bmp", image_bytes(fmt="BMP")), "g_tif": ("tif", image_bytes(fmt="TIFF")),
    "h_tiff": ("tiff", image_bytes(fmt="TIFF", color=(9, 9, 9))),
    "i_lies": ("png", image_bytes()),  # JPEG bytes under a .png name
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    members = [m for key, (ext, data) in INPUTS.items() for m in sample_members(key, f"caption {key}", data, ext=ext)]
    members += sample_members("z_heic", "an unreadable type", b"\x00\x00\x00\x18ftypheic", ext="heic")
    write_tar(root / "in" / "000000.tar", members)
    write_tar(root / "in" / "000001.tar", sample_members("k_png", "second shard", rgba_png(), ext="png"))
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in/*.tar"), "--output",
            str(root / "out"), "--no-progress", "--no-report", "--no-model", "--executor", "local"]
    assert main(argv) == 0
    return root


def output_members(out) -> dict[str, bytes]:
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar})
    return found


def test_one_image_member_name_whose_bytes_it_names(mixed):
    members = output_members(mixed / "out")
    images = {n: d for n, d in members.items() if not n.endswith((".txt", ".json"))}
    assert sorted(images) == sorted(f"{k}.jpg" for k in [*INPUTS, "k_png"])
    for name, data in images.items():
        assert Image.open(io.BytesIO(data)).format == "JPEG", name
    for key, (ext, data) in INPUTS.items():
        record = json.loads(members[f"{key}.json"])["source"]
        assert record["image_sha256"] == hashlib.sha256(data).hexdigest()  # the original's, always
        untouched = key in ("a_jpg", "b_jpeg", "i_lies")
        assert (members[f"{key}.jpg"] == data) is untouched, key
        assert record["image_reencoded_to"] == ("" if untouched else "jpg"), key
    # the transparent PNG is composited on white, as the models saw it
    assert Image.open(io.BytesIO(members["c_png.jpg"])).convert("RGB").getpixel((5, 5)) >= (250, 250, 250)


def test_gif_bmp_tiff_kept_and_unsupported_type_named(mixed):
    rows = {r["key"]: r for r in pq.read_table(mixed / "out/shards/000000.parquet").to_pylist()}
    assert all(rows[k]["status"] == "kept" for k in INPUTS)
    heic = rows["z_heic"]
    assert (heic["status"], heic["reason"]) == ("error", "unsupported_image_type")
    assert ".heic" in json.loads(heic["provenance"])["source"]["error_detail"]


def test_hf_datasets_loads_both_ways_by_default(mixed, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = mixed / "out"
    tars = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    by_files = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                                     cache_dir=str(tmp_path / "c1"))
    by_card = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c2"))
    for ds in (by_files, by_card):
        assert len(ds) == len(INPUTS) + 1 and "jpg" in ds.features
        assert {row["jpg"].size for row in ds} >= {(30, 20), (24, 24)}  # gif's first frame, the png


def test_webdataset_1x_and_0_2_86_and_ray_data_read_it(mixed, consumer_python):
    import webdataset as wds

    tars = sorted(str(p) for p in (mixed / "out/shards").glob("*.tar"))
    decoded = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(decoded) == len(INPUTS) + 1 and all(isinstance(s["jpg"], Image.Image) for s in decoded)
    script = ("import sys, webdataset as wds, importlib.metadata as m\n"
              "assert m.version('webdataset') == '0.2.86'\n"
              "print(sum(1 for s in wds.WebDataset(sys.argv[1:]).decode('pil') if s['jpg'].size))")
    done = subprocess.run([consumer_python, "-c", script, *tars], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == str(len(INPUTS) + 1), done.stderr[-2000:]
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        rows = ray.data.read_webdataset(tars).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == len(INPUTS) + 1


def test_keeping_original_formats_warns_of_mixed_extensions(tmp_path, capsys):
    write_tar(tmp_path / "in/000000.tar", sample_members("a", "x", image_bytes(), ext="jpg")
              + sample_members("b", "y", rgba_png(), ext="png"))
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output",
            str(tmp_path / "out"), "--no-progress", "--no-report", "--no-model", "--executor", "local",
            "--set", "output.normalize_image_format=null"]
    assert main(argv) == 0
    assert "2 extensions (jpg, png)" in capsys.readouterr().err
    assert sorted(n for n in output_members(tmp_path / "out") if not n.endswith((".txt", ".json"))) == ["a.jpg", "b.png"]
