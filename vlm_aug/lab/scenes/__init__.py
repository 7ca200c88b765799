"""A deterministic world of coloured-shape scenes, their shards, and the scene models' evaluation."""

from vlm_aug.lab.scenes.shards import SceneSample, make_sample, shard_samples, write_scene_shards
from vlm_aug.lab.scenes.world import (
    Scene, SceneObject, dense_description, parse_description, perturb, perturbed_description,
    plant_wrong_sentence, render, sample_scene,
)

__all__ = [
    "Scene", "SceneObject", "SceneSample", "dense_description", "make_sample", "parse_description",
    "perturb", "perturbed_description", "plant_wrong_sentence", "render", "sample_scene",
    "shard_samples", "write_scene_shards",
]
