"""Stages: rewrite (VLM), score (CLIP), decide (policy), and the dry run's passthrough, with
what only stages use: finding model weights (`models`), per-family loading (`families`) and
prompt templates (`prompts`). The contract every stage keeps is in `base`. No stage imports Ray."""
