"""Rewrite: prompt(template, original caption) + image -> VLM engine -> dense caption.

The prompt, the per-sample seed, the cleaning of the text and the record are this stage's, the
same for every engine; the engine (`stages/engines/`) only turns requests into text."""

from __future__ import annotations

import re

from vlm_aug.config import GenerationConfig, LimitsConfig, VLMConfig
from vlm_aug.sample import Sample
from vlm_aug.stages.base import Resources, derive_seed
from vlm_aug.stages.engines import EngineUnavailable, Request, make_engine
from vlm_aug.stages.engines.hf import PerRowSampler  # noqa: F401  (public name, kept importable here)
from vlm_aug.stages.guards import guard
from vlm_aug.stages.prompts import chat_messages, load_template, sha256_text

_RESIDUE = re.compile(r"^\s*(assistant|Assistant|ASSISTANT)\s*:\s*|<\|?[a-z_]+\|?>|<end_of_utterance>")


def clean_rewrite(text: str) -> str:
    """Strip chat residue (role prefixes, special tokens) and normalise whitespace."""
    return " ".join(_RESIDUE.sub(" ", text).split())


class RewriteStage:
    name = "rewrite"
    section = "generation"  # the record section its description fills

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig, limits: LimitsConfig):
        self.vlm, self.generation, self.limits = vlm, generation, limits
        self.template = load_template(generation.prompt)
        self.engine = make_engine(vlm, generation)
        if self.engine.name == "openai":  # the model runs on the server
            self.resources = Resources()
        else:
            self.resources = Resources.for_device(vlm.device)
            tp = vlm.vllm.tensor_parallel_size if self.engine.name == "vllm" else None
            if tp and tp > 1:
                self.resources = Resources(cpus=1.0, gpus=float(tp), needs_gpu=True)

    # the loaded model and processor (hf and vllm engines), for tests and tools that look inside
    model = property(lambda self: getattr(self.engine, "model", None))
    processor = property(lambda self: getattr(self.engine, "processor", None))
    device = property(lambda self: self.engine.device)
    dtype = property(lambda self: self.engine.dtype)
    revision = property(lambda self: self.engine.revision)

    def setup(self) -> None:
        self.engine.setup()

    def describe(self) -> dict:
        g = self.generation
        params = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample,
                  "temperature": g.temperature if g.do_sample else None,
                  "top_p": g.top_p if g.do_sample else None, "batch_size": self.vlm.batch_size,
                  "max_time_s": g.max_time_s}
        return {"model": self.vlm.model, "revision": self.revision, "dtype": str(self.dtype).replace("torch.", ""),
                "device": self.device, "trust_remote_code": self.vlm.trust_remote_code,
                "prompt_id": self.template.id, "prompt_sha256": self.template.sha256, "params": params,
                "engine": self.engine.describe()}

    def _request(self, sample: Sample) -> Request:
        caption = sample.caption_orig
        if len(caption) > self.limits.max_caption_chars:
            caption = caption[: self.limits.max_caption_chars]
            sample.generation.caption_truncated = True
        rendered = self.template.render(caption)
        sample.generation.rendered_prompt_sha256 = sha256_text(rendered)
        sample.generation.seed = derive_seed(self.generation.seed, sample.shard.rsplit("/", 1)[-1], sample.key)
        return Request(rendered_prompt=rendered, seed=sample.generation.seed, image=sample.image,
                       image_bytes=sample.image_bytes, image_ext=sample.image_ext)

    def _prompt(self, sample: Sample) -> str:
        """The chat-templated prompt text a local engine feeds the model (what a server builds itself)."""
        rendered = self._request(sample).rendered_prompt
        return self.processor.apply_chat_template(chat_messages(rendered), add_generation_prompt=True)

    def process_batch(self, samples: list[Sample]) -> None:
        active = [s for s in samples if s.active]
        per_call = self.engine.per_call
        if per_call is None:  # a serving engine schedules all of them itself
            self.generate(active)
            return
        # similar prompt lengths in one generate call waste less on padding
        active.sort(key=lambda s: len(s.caption_orig))
        for start in range(0, len(active), per_call):
            self.generate(active[start:start + per_call])

    def generate(self, batch: list[Sample]) -> None:
        """One engine call for `batch` (decoded, active samples): sets each sample's rewrite, or fails
        the samples the engine could not serve (`rewrite_error`). Raises EngineUnavailable when the
        engine itself is down, so the shard is redone rather than committed full of errors."""
        requests = [self._request(s) for s in batch]
        results = self.engine.generate(requests)
        for sample, request, result in zip(batch, requests, results):
            sample.generation.retries = result.retries
            if result.error is not None:
                sample.fail("rewrite_error", result.error)
                continue
            sample.caption_rewrite = clean_rewrite(result.text)
            sample.generation.new_tokens = result.new_tokens
            if self.generation.guards and sample.caption_rewrite:
                guarded = guard(sample.caption_rewrite, sample.caption_orig, request.rendered_prompt, result.hit_limit)
                sample.caption_rewrite = guarded.text
                sample.generation.guards, sample.generation.stripped = guarded.flags, guarded.stripped
                sample.generation.guard_problem = guarded.problem


__all__ = ["EngineUnavailable", "PerRowSampler", "RewriteStage", "clean_rewrite"]
