"""The host path: decoding in threads gives the same images and the same failures as in one thread;
`executor: auto` picks local for a preview and Ray when a cluster is given or the input is large."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from helpers import image_bytes
from vlm_aug.config import load_config
from vlm_aug.run import PREVIEW_BYTES, resolve_executor
from vlm_aug.sample import Sample
from vlm_aug.shards.decode import decode_samples


def samples():
    payloads = [image_bytes((40 + i, 30), (i * 9 % 255, 20, 200), fmt) for i, fmt in
                enumerate(["JPEG", "PNG", "JPEG", "WEBP", "GIF", "BMP", "JPEG", "PNG"] * 3)]
    payloads[3] = b"\xff\xd8\xff broken jpeg"
    payloads[10] = b""
    return [Sample(key=f"k{i}", shard="s.tar", image_bytes=p, image_ext="jpg") for i, p in enumerate(payloads)]


def test_threads_decode_the_same_images_and_failures():
    one, many = samples(), samples()
    decode_samples(one, 50_000_000, 1 << 20)
    with ThreadPoolExecutor(3) as pool:
        decode_samples(many, 50_000_000, 1 << 20, pool)
    for a, b in zip(one, many):
        assert (a.status, a.reason, a.error_detail, a.image_real_ext) == (b.status, b.reason, b.error_detail,
                                                                          b.image_real_ext)
        assert (a.image is None) == (b.image is None)
        if a.image is not None:
            assert a.image.tobytes() == b.image.tobytes()
    assert [s.reason for s in one if s.reason] == ["decode_error", "decode_error"]
    assert {s.image_real_ext for s in one if s.image is not None} == {"jpg", "png", "webp", "gif", "bmp"}


def test_executor_auto(tmp_path, monkeypatch):
    small = tmp_path / "000000.tar"
    small.write_bytes(b"\0" * 10240)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(None, [f"input.paths=['{small}']", f"output.path={tmp_path / 'out'}"])
    assert cfg.executor == "auto"
    name, why = resolve_executor(cfg, [str(small)])
    assert name == "local" and "--executor ray" in why
    big = tmp_path / "000001.tar"
    with big.open("wb") as handle:  # sparse: over the preview size without writing it
        handle.truncate(PREVIEW_BYTES + 1)
    assert resolve_executor(cfg, [str(small), str(big)])[0] == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert resolve_executor(cfg, [str(small)]) == ("ray", "a Ray cluster is given")
    forced = load_config(None, [f"input.paths=['{small}']", f"output.path={tmp_path / 'out'}", "executor=local"])
    assert resolve_executor(forced, [str(big)])[0] == "local"
