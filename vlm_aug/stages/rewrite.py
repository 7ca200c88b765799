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
    uses_model = True

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig, limits: LimitsConfig):
        self.vlm, self.generation, self.limits = vlm, generation, limits
        self.template = load_template(generation.prompt)
        self.extra_templates = {c.name: load_template(c.prompt) for c in generation.captions}
        self.engine = make_engine(vlm, generation)
        if self.engine.name == "openai":  # the model runs on the server
            self.resources = Resources()
        else:
            self.resources = Resources.for_device(vlm.device)
            # (engine auto: the driver, on a head node without a GPU, resolves hf, and the actor then picks vllm)
            tp = vlm.vllm.tensor_parallel_size if self.engine.name == "vllm" or vlm.engine == "auto" else None
            if tp and tp > 1:
                self.resources = Resources(cpus=1.0, gpus=float(tp), needs_gpu=True)
            if self.engine.name == "vllm":  # vLLM takes its share of the whole GPU, not of the actor's reservation
                r = self.resources
                self.resources = Resources(r.cpus, r.gpus, r.needs_gpu, gpu_memory=vlm.vllm.gpu_memory_utilization)

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
        if g.n > 1:  # only when on: records of runs without it keep their exact params
            params["n"] = g.n
        described = {"model": self.vlm.model, "revision": self.revision, "dtype": str(self.dtype).replace("torch.", ""),
                     "device": self.device, "trust_remote_code": self.vlm.trust_remote_code,
                     "prompt_id": self.template.id, "prompt_sha256": self.template.sha256, "params": params,
                     "engine": self.engine.describe()}
        if self.extra_templates:
            described["captions"] = {name: {"prompt_id": t.id, "prompt_sha256": t.sha256}
                                     for name, t in self.extra_templates.items()}
        return described

    def _caption(self, sample: Sample) -> str:
        caption = sample.caption_orig
        if len(caption) > self.limits.max_caption_chars:
            caption = caption[: self.limits.max_caption_chars]
            sample.generation.caption_truncated = True
        return caption

    def _request(self, sample: Sample, candidate: int = 0, caption: str | None = None) -> Request:
        """The main caption's request (candidate i > 0 of best-of-n draws with its own seed), or the
        request of the extra caption named `caption`. The seed depends only on the sample's identity."""
        shard = sample.shard.rsplit("/", 1)[-1]
        template = self.extra_templates[caption] if caption else self.template
        rendered = template.render(self._caption(sample))
        if caption:
            seed = derive_seed(self.generation.seed, shard, sample.key, f"caption:{caption}")
        else:
            sample.generation.rendered_prompt_sha256 = sha256_text(rendered)
            sample.generation.seed = derive_seed(self.generation.seed, shard, sample.key)
            seed = sample.generation.seed if candidate == 0 else derive_seed(self.generation.seed, shard, sample.key,
                                                                              f"candidate:{candidate}")
        return Request(rendered_prompt=rendered, seed=seed, image=sample.image,
                       image_bytes=sample.image_bytes, image_ext=sample.image_ext,
                       image_altered=bool(sample.image_altered))

    def _prompt(self, sample: Sample) -> str:
        """The chat-templated prompt text a local engine feeds the model (what a server builds itself)."""
        rendered = self._request(sample).rendered_prompt
        return self.processor.apply_chat_template(chat_messages(rendered), add_generation_prompt=True)

    def _calls(self, samples: list[Sample]) -> list[list[Sample]]:
        """The active samples in the groups that go to the engine together: a serving engine takes all of
        them; a batching one `per_call` requests at a time, similar prompt lengths together (less padding)."""
        active = [s for s in samples if s.active]
        per_call = self.engine.per_call
        if per_call is None:  # a serving engine schedules all of them itself
            return [active]
        active.sort(key=lambda s: len(s.caption_orig))
        per_sample = self.generation.n + len(self.extra_templates)  # requests per sample
        step = max(1, per_call // per_sample)
        return [active[start:start + step] for start in range(0, len(active), step)]

    def process_batch(self, samples: list[Sample]) -> None:
        for group in self._calls(samples):
            self.generate(group)

    def take_timings(self) -> dict[str, float]:
        """Named parts of this stage's time since the last call, from engines that measure them (vllm:
        `vlm_preprocess`, its image preprocessing); the shard's stats carry them beside the stage's own."""
        take = getattr(self.engine, "take_timings", None)
        return take() if take is not None else {}

    def prepare(self, samples: list[Sample], pool=None) -> None:
        """The processor's tensors of each engine call, made ahead (engines that have `encode`: hf), on
        `pool`'s threads when given. Kept on the group's first sample with the group's identity."""
        encode = getattr(self.engine, "encode", None)
        if encode is None or self.engine.per_call is None:
            return
        groups = [g for g in self._calls(samples) if g]
        made = (pool.map if pool else map)(lambda g: encode(self._requests(g)[1]), groups)
        for group, inputs in zip(groups, made):
            group[0].prepared[self.name] = ([id(s) for s in group], inputs)

    def _requests(self, batch: list[Sample]) -> tuple[list, list[Request]]:
        n = self.generation.n
        jobs = [(s, "rewrite", i) for s in batch for i in range(n)]
        jobs += [(s, name, 0) for s in batch for name in self.extra_templates]
        return jobs, [self._request(s, i) if kind == "rewrite" else self._request(s, caption=kind) for s, kind, i in jobs]

    def _run(self, requests: list[Request], inputs=None) -> list:
        """The engine on `requests`, `per_call` at a time for engines that batch a fixed number;
        `inputs`: the one call's tensors made by `prepare`."""
        step = self.engine.per_call or len(requests) or 1
        if inputs is not None and len(requests) <= step:
            return self.engine.generate(requests, inputs)
        results = []
        for start in range(0, len(requests), step):
            results += self.engine.generate(requests[start:start + step])
        return results

    def _text(self, sample: Sample, request: Request, result) -> dict:
        """Cleaned and guarded text of one result, with what the guards did."""
        text = clean_rewrite(result.text)
        out = {"text": text, "seed": request.seed, "new_tokens": result.new_tokens, "guards": [], "stripped": [],
               "problem": None}
        if self.generation.guards and text:
            guarded = guard(text, sample.caption_orig, request.rendered_prompt, result.hit_limit)
            out.update(text=guarded.text, guards=guarded.flags, stripped=guarded.stripped, problem=guarded.problem)
        return out

    def generate(self, batch: list[Sample]) -> None:
        """The engine on `batch` (decoded, active samples): each sample's rewrite (its best-of-n candidates,
        generation.n) and its extra captions (generation.captions); or `rewrite_error` for the samples the
        engine could not serve. Raises EngineUnavailable when the engine itself is down, so the shard is
        redone rather than committed full of errors."""
        n = self.generation.n
        jobs, requests = self._requests(batch)
        made = batch[0].prepared.pop(self.name, None) if batch else None
        inputs = made[1] if made and made[0] == [id(s) for s in batch] else None  # else made for other groups
        results = self._run(requests, inputs)
        for (sample, kind, i), request, result in zip(jobs, requests, results):
            sample.generation.retries += result.retries
            if result.error is not None:
                if sample.active:
                    sample.fail("rewrite_error", result.error)
                continue
            text = self._text(sample, request, result)
            if kind != "rewrite":
                template = self.extra_templates[kind]
                sample.generation.captions[kind] = {"text": text["text"], "prompt_id": template.id,
                                                    "prompt_sha256": template.sha256, "seed": request.seed,
                                                    "new_tokens": text["new_tokens"], "guards": text["guards"],
                                                    "problem": text["problem"], "clip": None}
            elif n > 1:
                sample.generation.candidates.append(text)
            if kind == "rewrite" and i == 0:  # the rewrite until scoring picks the best of n
                sample.caption_rewrite = text["text"]
                sample.generation.new_tokens = text["new_tokens"]
                sample.generation.guards, sample.generation.stripped = text["guards"], text["stripped"]
                sample.generation.guard_problem = text["problem"]


__all__ = ["EngineUnavailable", "PerRowSampler", "RewriteStage", "clean_rewrite"]
