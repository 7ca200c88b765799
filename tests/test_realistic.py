"""The realistic-image benchmark inputs: real photos (scikit-image) as 512-1024 px JPEGs that read,
decode and pass through the pipeline's own host steps."""

from vlm_aug.lab.bench.realistic import host_costs, write_realistic_shards


def test_realistic_shards_are_distinct_real_size_jpegs_and_costs_are_measured(tmp_path):
    from PIL import Image
    import io
    import tarfile

    shards = write_realistic_shards(tmp_path, 1, 24, seed=3)
    with tarfile.open(shards[0]) as tar:
        jpgs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    assert len(jpgs) == 24 and len(set(jpgs)) == 24
    for data in jpgs:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and 512 <= max(image.size) <= 1024
    costs = host_costs(shards)
    assert costs["samples"] == 24 and all(v > 0 for v in costs["ms_per_sample"].values())
    assert costs["cores_per_h100"]["smolvlm-256m"] > costs["cores_per_h100"]["qwen2.5-vl-7b"]
