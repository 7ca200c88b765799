"""The scene world is deterministic and well-formed; the shipped scene models meet their floors."""

import json
import random

import pytest
import webdataset as wds

from vlm_aug.paths import ASSETS_DIR
from vlm_aug.lab.scenes import (
    SceneObject, dense_description, parse_description, perturb, plant_wrong_sentence, sample_scene,
    write_scene_shards,
)
from vlm_aug.lab.scenes.world import COLOURS, SHAPES


def _read(paths):
    return list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))


def test_same_seed_same_bytes(tmp_path):
    a = write_scene_shards(tmp_path / "a", 2, 5, seed=3, wrong_fraction=0.4)
    b = write_scene_shards(tmp_path / "b", 2, 5, seed=3, wrong_fraction=0.4)
    c = write_scene_shards(tmp_path / "c", 1, 5, seed=4)
    assert [p.name for p in a] == ["000000.tar", "000001.tar"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()


def test_shards_read_back_with_webdataset(tmp_path):
    samples = _read(write_scene_shards(tmp_path, 2, 4, seed=0, image_size=64))
    assert len(samples) == 8
    for s in samples:
        assert "." not in s["__key__"]
        assert set(s) >= {"png", "txt", "json"}
        meta = json.loads(s["json"])
        truth = [SceneObject(**o) for o in meta["truth"]["objects"]]
        assert parse_description(meta["dense"]) == truth
        assert s["png"][:4] == b"\x89PNG"


def test_wrong_fraction_is_honoured_and_marked(tmp_path):
    samples = _read(write_scene_shards(tmp_path, 2, 10, seed=1, wrong_fraction=0.3))
    metas = [json.loads(s["json"]) for s in samples]
    wrong = [m for m in metas if m["terse_wrong"]]
    assert len(wrong) == 6
    for meta, sample in zip(metas, samples):
        if not meta["terse_wrong"]:
            continue
        objects = meta["truth"]["objects"]
        attribute, value = meta["wrong"]["attribute"], meta["wrong"]["value"]
        assert value in sample["txt"].decode()
        assert value not in {o[attribute] for o in objects}


def test_perturb_and_plant_change_exactly_what_they_say():
    rng = random.Random(0)
    for _ in range(50):
        scene = sample_scene(rng)
        for attribute in ("colour", "shape", "size", "position"):
            changed = perturb(scene, 0, attribute, rng)
            assert getattr(changed[0], attribute) != getattr(scene.objects[0], attribute)
            assert changed[1:] == scene.objects[1:]
        sentences, planted = plant_wrong_sentence(scene, rng)
        assert len(sentences) == len(scene.objects) + 1
        extra = parse_description(sentences[planted])[0]
        assert (extra.colour, extra.shape) not in {(o.colour, o.shape) for o in scene.objects}
        assert extra.colour in COLOURS and extra.shape in SHAPES
        assert " ".join(s for i, s in enumerate(sentences) if i != planted) == \
            dense_description(scene.objects)


VLM_DIR, CLIP_DIR = ASSETS_DIR / "scene_vlm", ASSETS_DIR / "scene_clip"


@pytest.mark.slow
@pytest.mark.skipif(not (VLM_DIR / "config.json").is_file(), reason="scene VLM not trained")
def test_shipped_scene_vlm_meets_floor():
    from vlm_aug.lab.scenes.evaluate import vlm_accuracy

    result = vlm_accuracy(VLM_DIR, n=60, seed=2024)
    assert result["objects_colour_shape_accuracy"] >= 0.85, result


@pytest.mark.slow
@pytest.mark.skipif(not (CLIP_DIR / "open_clip_config.json").is_file(),
                    reason="scene CLIP not trained")
def test_shipped_scene_clip_meets_floor():
    from vlm_aug.lab.scenes.evaluate import clip_metrics

    result = clip_metrics(CLIP_DIR, n=60, seed=2024)
    assert result["pair_accuracy_colour_or_shape"] >= 0.9, result
    assert result["terse_true_over_wrong"] >= 0.8, result
