"""Rewrite: prompt(template, original caption) + image -> VLM -> dense caption."""

from __future__ import annotations

import re

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vlm_aug.config import GenerationConfig, LimitsConfig, VLMConfig
from vlm_aug.sample import Sample
from vlm_aug.stages.base import Resources, derive_seed
from vlm_aug.stages.models import locate_hf, resolve_device, resolve_dtype
from vlm_aug.stages.prompts import chat_messages, load_template, sha256_text

_RESIDUE = re.compile(r"^\s*(assistant|Assistant|ASSISTANT)\s*:\s*|<\|?[a-z_]+\|?>|<end_of_utterance>")


def clean_rewrite(text: str) -> str:
    """Strip chat residue (role prefixes, special tokens) and normalise whitespace."""
    return " ".join(_RESIDUE.sub(" ", text).split())


class PerRowSampler(LogitsProcessor):
    """Sampling where each row draws from its own seeded generator, so a sample's
    rewrite does not depend on which other samples share its batch. Greedy decoding
    then picks the drawn token (all other logits are set to -inf)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cut = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
        sorted_probs[cut] = 0.0
        chosen = torch.empty(len(self.generators), dtype=torch.long)
        for row, generator in enumerate(self.generators):
            pick = torch.multinomial(sorted_probs[row], 1, generator=generator)
            chosen[row] = order[row, pick]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), chosen.to(scores.device)] = 0.0
        return out


class RewriteStage:
    name = "rewrite"
    section = "generation"  # the record section its description fills

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig, limits: LimitsConfig):
        self.vlm, self.generation, self.limits = vlm, generation, limits
        self.template = load_template(generation.prompt)
        self.resources = Resources.for_device(vlm.device)
        self.model = self.processor = None
        self.revision = None

    def setup(self) -> None:
        from transformers import AutoModelForImageTextToText

        from vlm_aug.stages.families import load_processor

        located = locate_hf(self.vlm.model, self.vlm.revision, self.vlm.allow_pickle_weights)
        self.device = resolve_device(self.vlm.device)
        self.dtype = resolve_dtype(self.vlm.dtype, self.device)
        common = dict(trust_remote_code=self.vlm.trust_remote_code, revision=self.vlm.revision if located.source == "hub" else None)
        self.processor = load_processor(located.path, self.vlm.model, self.vlm.processor_kwargs, **common)
        self.model = AutoModelForImageTextToText.from_pretrained(
            located.path, dtype=self.dtype, use_safetensors=None if self.vlm.allow_pickle_weights else True, **common
        ).to(self.device).eval()
        self.revision = located.revision

    def describe(self) -> dict:
        g = self.generation
        params = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample,
                  "temperature": g.temperature if g.do_sample else None,
                  "top_p": g.top_p if g.do_sample else None, "batch_size": self.vlm.batch_size,
                  "max_time_s": g.max_time_s}
        return {"model": self.vlm.model, "revision": self.revision, "dtype": str(self.dtype).replace("torch.", ""),
                "device": self.device, "trust_remote_code": self.vlm.trust_remote_code,
                "prompt_id": self.template.id, "prompt_sha256": self.template.sha256, "params": params}

    def _prompt(self, sample: Sample) -> str:
        caption = sample.caption_orig
        if len(caption) > self.limits.max_caption_chars:
            caption = caption[: self.limits.max_caption_chars]
            sample.generation.caption_truncated = True
        rendered = self.template.render(caption)
        sample.generation.rendered_prompt_sha256 = sha256_text(rendered)
        sample.generation.seed = derive_seed(self.generation.seed, sample.shard.rsplit("/", 1)[-1], sample.key)
        return self.processor.apply_chat_template(chat_messages(rendered), add_generation_prompt=True)

    def process_batch(self, samples: list[Sample]) -> None:
        active = [s for s in samples if s.active]
        # similar prompt lengths in one generate call waste less on padding
        active.sort(key=lambda s: len(s.caption_orig))
        for start in range(0, len(active), self.vlm.batch_size):
            self.generate(active[start:start + self.vlm.batch_size])

    @torch.inference_mode()
    def generate(self, batch: list[Sample]) -> None:
        """One `generate` call for `batch` (decoded, active samples): sets each sample's rewrite."""
        prompts = [self._prompt(s) for s in batch]
        inputs = self.processor(text=prompts, images=[[s.image] for s in batch], padding=True, return_tensors="pt")
        inputs = inputs.to(self.device, dtype=self.dtype)
        g = self.generation
        processors = LogitsProcessorList(
            [PerRowSampler([s.generation.seed for s in batch], g.temperature, g.top_p)] if g.do_sample else [])
        output = self.model.generate(**inputs, max_new_tokens=g.max_new_tokens, do_sample=False,
                                     logits_processor=processors, max_time=g.max_time_s)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        for sample, text, tokens in zip(batch, texts, new_tokens):
            sample.caption_rewrite = clean_rewrite(text)
            pad = self.processor.tokenizer.pad_token_id
            sample.generation.new_tokens = int((tokens != pad).sum()) if pad is not None else len(tokens)
