"""The realistic-image benchmark inputs: real photos (scikit-image) as 512-1024 px JPEGs that read,
decode and pass through the pipeline's own host steps."""

from vlm_aug.lab.bench.realistic import (_from_ring, _processors, _tensors, host_batch, host_batch_into, host_costs,
                                         host_path_rate_processes, host_pool, shared_ring, write_realistic_shards)


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
    # with vllm / openai the VLM's processor runs in vLLM, not on the worker's threads
    assert costs["cores_per_h100_without_vlm_processor"]["smolvlm-256m"] < costs["cores_per_h100"]["smolvlm-256m"]


def test_host_path_in_processes_returns_the_same_tensors_through_shared_memory(tmp_path):
    """The process-pool variant of the host path measured in scripts/bench.py: what comes back from a
    pool process is what the same host work makes in this process, bit for bit, and it came through
    shared memory (torch's reductions), not pickled pixels."""
    import tarfile

    import torch

    shards = write_realistic_shards(tmp_path, 1, 12, seed=5)
    processors = _processors()
    with tarfile.open(shards[0]) as tar:
        blobs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    here = [host_batch(blobs[:6], processors), host_batch(blobs[6:], processors)]
    with host_pool(2) as pool:
        there = list(pool.map(host_batch, [blobs[:6], blobs[6:]]))
    assert len(here) == len(there) == 2
    for (groups, pixels), (their_groups, their_pixels) in zip(here, there):
        assert pixels.shape == (6, 3, 224, 224) and their_pixels.is_shared()
        assert torch.equal(pixels, their_pixels)
        assert [sorted(g) for g in groups] == [sorted(g) for g in their_groups] and "pixel_values" in groups[0]
        for group, theirs in zip(groups, their_groups):
            assert all(torch.equal(group[k], theirs[k]) for k in group)
    assert host_path_rate_processes(shards, 1, batch=6) > 0
    # the same through the slots of a shared ring mapped once (reuse): equal tensors, views of the ring
    ring = shared_ring(2, 6 * 6 * 2**20)
    with host_pool(2, ring) as pool:
        placed = list(pool.map(host_batch_into, [1, 0], [blobs[:6], blobs[6:]]))
    assert len(placed) == 2
    for made, (slot, where) in zip(here, placed):
        views = _from_ring(ring, slot, where)
        assert len(views) == len(_tensors(made)) and all(v.untyped_storage().data_ptr() == ring.untyped_storage().data_ptr()
                                                         for v in views)
        assert all(v.dtype == t.dtype and torch.equal(v, t) for v, t in zip(views, _tensors(made)))
    assert host_path_rate_processes(shards, 1, batch=6, reuse=True) > 0
