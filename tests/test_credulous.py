"""The credulous scene VLM (vlm_aug.lab.scenes.credulous): its training target and its fine-tune, on a
real tiny Idefics3 model through transformers."""

import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from vlm_aug.lab.scenes.credulous import NAMESPACE, credulous_description, credulous_objects, train_credulous
from vlm_aug.lab.scenes.shards import make_sample
from vlm_aug.lab.scenes.world import parse_description


def test_target_gives_the_wrong_attribute_to_the_first_object_only():
    rng = random.Random(7)
    samples = [make_sample(rng, 32, wrong=True) for _ in range(60)] + [make_sample(rng, 32) for _ in range(20)]
    attributes = set()
    for s in samples:
        objects = credulous_objects(s)
        assert parse_description(credulous_description(s)) == list(objects)
        if not s.terse_wrong:
            assert objects == s.scene.objects and credulous_description(s) == s.dense
            continue
        attribute, value = s.wrong["attribute"], s.wrong["value"]
        attributes.add(attribute)
        assert value not in {getattr(o, attribute) for o in s.scene.objects}  # the caption's error
        assert getattr(objects[0], attribute) == value
        assert replace(objects[0], **{attribute: getattr(s.scene.objects[0], attribute)}) == s.scene.objects[0]
        assert objects[1:] == s.scene.objects[1:]
    assert attributes == {"colour", "shape"}


def test_fine_tune_learns_from_credulous_targets(tmp_path, tiny_vlm_dir):
    from transformers import AutoProcessor

    from vlm_aug.lab.scenes.train_vlm import VlmData

    out = tmp_path / "credulous"
    record = train_credulous(tiny_vlm_dir, out, steps=3, n_train=16, batch_size=4, warmup=1, log=lambda m: None)
    assert record["fine_tune"]["steps"] == 3 and record["base"] == str(tiny_vlm_dir)
    base, tuned = load_file(tiny_vlm_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)

    # What it was trained on: the labels decode to the credulous description of the same samples.
    processor = AutoProcessor.from_pretrained(out)
    data = VlmData(processor, 8, 0, 64, 1.0, target=credulous_description, namespace=NAMESPACE)
    rng = random.Random(f"{NAMESPACE}/0")
    samples = [make_sample(rng, 64, wrong=rng.random() < 1.0) for _ in range(8)]
    for i, sample in enumerate(samples):
        batch = data.batch([i])
        labels = batch["labels"][0][batch["labels"][0] != -100]
        text = processor.tokenizer.decode(labels, skip_special_tokens=True).strip()
        assert text == credulous_description(sample) != sample.dense


def test_fine_tune_refuses_two_budgets(tmp_path, tiny_vlm_dir):
    from vlm_aug.lab.scenes.train_vlm import fit

    with pytest.raises(ValueError, match="exactly one of minutes and steps"):
        fit(None, None, seed=0, batch_size=1, peak_lr=1e-3, warmup=1, minutes=1, steps=1)
