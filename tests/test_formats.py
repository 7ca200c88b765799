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


def turned_jpeg() -> bytes:
    """40x20 as stored, blue on the left half; EXIF orientation 6: upright it is 20x40, blue on top."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def wide_png() -> bytes:
    """16 bits a channel, all at 32,768 (half way): 128 once scaled to 8 bits, 255 when clipped."""
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("target", ["jpg", "png"])
def test_training_sees_the_pixels_that_were_scored(tmp_path, target):
    """Bytes already in the output's format are kept only when a consumer's plain decode
    (`Image.open(...).convert("RGB")`, as webdataset's "pilrgb" and LLaVA loaders do) gives the pixels
    the models saw: an EXIF-turned JPEG, a transparent PNG and a 16-bit PNG are re-encoded as seen."""
    inputs = {"plain": ("jpg", image_bytes()), "turned": ("jpg", turned_jpeg()), "clear": ("png", rgba_png()),
              "wide": ("png", wide_png()), "opaque": ("png", image_bytes(fmt="PNG"))}
    members = [m for key, (ext, data) in inputs.items() for m in sample_members(key, f"caption {key}", data, ext=ext)]
    write_tar(tmp_path / "in/000000.tar", members)
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output",
            str(tmp_path / "out"), "--no-progress", "--no-report", "--no-model", "--executor", "local",
            "--set", f"output.normalize_image_format={target}"]
    assert main(argv) == 0
    out = output_members(tmp_path / "out")
    seen = {key: Image.open(io.BytesIO(out[f"{key}.{target}"])).convert("RGB") for key in inputs}
    reencoded = {key: json.loads(out[f"{key}.json"])["source"]["image_reencoded_to"] for key in inputs}
    kept_as_is = {key for key, (ext, data) in inputs.items() if out[f"{key}.{target}"] == data}
    assert kept_as_is == {"plain" if target == "jpg" else "opaque"}
    assert {k for k, v in reencoded.items() if v} == set(inputs) - kept_as_is
    assert seen["turned"].size == (20, 40)
    top, bottom = seen["turned"].getpixel((10, 5)), seen["turned"].getpixel((10, 35))
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]  # blue on top, as the models saw it
    assert min(seen["clear"].getpixel((5, 5))) >= 250  # on white, not the hidden blue
    assert abs(seen["wide"].getpixel((5, 5))[0] - 128) <= 2  # scaled, not clipped to 255


def test_a_server_gets_the_pixels_the_other_engines_see():
    """The openai engine sends the original bytes, unless decoding changed their pixels: then the
    decoded image as a PNG (a server decodes plainly: no EXIF turn, no transparency on white)."""
    import base64

    from vlm_aug.shards.decode import decode_with_format
    from vlm_aug.stages.engines.base import Request
    from vlm_aug.stages.engines.openai import request_image

    for data, ext, altered in ((image_bytes(), "jpg", False), (turned_jpeg(), "jpg", True), (rgba_png(), "png", True)):
        image, real, changed = decode_with_format(data, 1 << 24)
        assert changed is altered
        url = request_image(Request("p", 0, image=image, image_bytes=data, image_ext=ext, image_altered=changed))
        mime, payload = url.split(",", 1)
        sent = base64.b64decode(payload)
        if altered:
            assert mime == "data:image/png;base64" and Image.open(io.BytesIO(sent)).convert("RGB").tobytes() == image.tobytes()
        else:
            assert sent == data and mime == "data:image/jpeg;base64"
