"""vlm_aug: rewrite terse image captions with a VLM, score them with CLIP, keep provenance."""

__version__ = "0.1.0"
SCHEMA_VERSION = "vlm_aug.sample/1"
