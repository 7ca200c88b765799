"""`vlm.engine: hf`: transformers `generate` on `vlm.batch_size` samples at a time."""

from __future__ import annotations

import copy
import threading

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from vlm_aug.config import GenerationConfig, VLMConfig
from vlm_aug.stages.engines.base import Request, Result
from vlm_aug.stages.models import locate_hf, resolve_device, resolve_dtype
from vlm_aug.stages.prompts import chat_messages


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


class HFEngine:
    name = "hf"

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig):
        self.vlm, self.generation = vlm, generation
        self.per_call = vlm.batch_size
        self.model = self.processor = None
        self.revision = None
        self.device, self.dtype = vlm.device, vlm.dtype
        self._local = threading.local()

    def setup(self) -> None:
        from transformers import AutoModelForImageTextToText

        from vlm_aug.progress import quiet_model_load
        from vlm_aug.stages.families import load_processor

        located = locate_hf(self.vlm.model, self.vlm.revision, self.vlm.allow_pickle_weights)
        self.device = resolve_device(self.vlm.device)
        self.dtype = resolve_dtype(self.vlm.dtype, self.device)
        common = dict(trust_remote_code=self.vlm.trust_remote_code, revision=self.vlm.revision if located.source == "hub" else None)
        self.processor = load_processor(located.path, self.vlm.model, self.vlm.processor_kwargs, **common)
        with quiet_model_load():
            self.model = AutoModelForImageTextToText.from_pretrained(
                located.path, dtype=self.dtype, use_safetensors=None if self.vlm.allow_pickle_weights else True,
                **common).to(self.device).eval()
        self.revision = located.revision

    def describe(self) -> dict:
        import transformers

        return {"name": self.name, "version": f"transformers {transformers.__version__}", "settings": {}}

    def _thread_processor(self):
        """This thread's copy of the processor: a fast tokenizer is not safe to pad in one thread while
        another decodes with it ("Already borrowed"), and `encode` runs in prefetch and pool threads."""
        processor = getattr(self._local, "processor", None)
        if processor is None:
            processor = self._local.processor = copy.deepcopy(self.processor)
        return processor

    def encode(self, requests: list[Request]):
        """The processor's CPU tensors for one `generate` call: chat template, tokens, image pixels.
        Host work only, so the pipeline runs it ahead, beside the model (RewriteStage.prepare)."""
        processor = self._thread_processor()
        prompts = [processor.apply_chat_template(chat_messages(r.rendered_prompt), add_generation_prompt=True)
                   for r in requests]
        return processor(text=prompts, images=[[r.image] for r in requests], padding=True, return_tensors="pt")

    @torch.inference_mode()
    def generate(self, requests: list[Request], inputs=None) -> list[Result]:
        """One `generate` call for all `requests`; `inputs`: their `encode`, when made ahead."""
        inputs = (inputs if inputs is not None else self.encode(requests)).to(self.device, dtype=self.dtype)
        g = self.generation
        processors = LogitsProcessorList(
            [PerRowSampler([r.seed for r in requests], g.temperature, g.top_p)] if g.do_sample else [])
        output = self.model.generate(**inputs, max_new_tokens=g.max_new_tokens, do_sample=False,
                                     logits_processor=processors, max_time=g.max_time_s)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=new_tokens.device)
        results = []
        for text, tokens in zip(texts, new_tokens):
            n = int((tokens != pad).sum()) if pad is not None else len(tokens)
            # stopped without an end-of-sequence token: by max_new_tokens, or by max_time_s (which
            # `n >= max_new_tokens` missed, so a rewrite cut by time kept its unfinished last sentence)
            ended = bool(torch.isin(tokens, eos).any()) if len(eos) else n < g.max_new_tokens
            results.append(Result(text=text, new_tokens=n, hit_limit=not ended))
        return results
