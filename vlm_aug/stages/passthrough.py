"""Dry run (`dry_run: true`, `--no-model`): no model; every readable sample is kept with its
original caption. Measures and tests the I/O path (read, decode, write) on its own."""

from __future__ import annotations

from vlm_aug.sample import Sample
from vlm_aug.stages.base import Resources


class PassThroughStage:
    name = "passthrough"
    section = "decision"  # the record section its description fills
    uses_model = False
    resources = Resources(cpus=1.0)

    def setup(self) -> None:
        pass

    def describe(self) -> dict:
        return {"policy": "dry_run", "params": {}}

    def process_batch(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.active:
                sample.caption_rewrite = sample.caption_orig
                sample.keep(sample.caption_orig, "dry_run")
