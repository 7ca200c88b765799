"""Downstream A/B: train the same small CLIP with open_clip's own trainer on original captions and
on vlm_aug's output, evaluate each on held-out image-caption shards, repeat over seeds.

Modules: models (CLIP configs), arms (training sets), train (open_clip_train in a subprocess),
evaluate (retrieval and zero-shot from a checkpoint), aggregate (seeds -> mean, spread, gains),
experiment (the whole A/B, downstream.json), scene_ab (the offline scene-world A/B).
"""

DOWNSTREAM_JSON = "downstream.json"
SCHEMA_VERSION = 1


class DownstreamError(RuntimeError):
    """A problem with the inputs or the trainer, worded so the user can fix it."""
