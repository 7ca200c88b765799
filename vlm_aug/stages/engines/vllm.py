"""`vlm.engine: vllm`: `vllm.LLM` held by the worker, loaded once; a window of requests goes to the
engine together so its scheduler batches them (continuous batching, paged KV cache, prefix cache).
Each request carries its sample's seed, so a rewrite does not depend on its neighbours."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from vlm_aug.config import GenerationConfig, VLMConfig
from vlm_aug.stages.engines.base import Request, Result, serve_command, vllm_version
from vlm_aug.stages.models import ModelUnavailable, locate_hf, resolve_device, resolve_dtype
from vlm_aug.stages.prompts import chat_messages

log = logging.getLogger(__name__)


def _worker_gpus() -> int:
    """GPUs this worker holds: Ray and schedulers set CUDA_VISIBLE_DEVICES to them; 1 when unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([d for d in visible.split(",") if d.strip()]) if visible else 1


class VLLMEngine:
    name = "vllm"
    per_call = None  # the engine schedules a whole window

    def __init__(self, vlm: VLMConfig, generation: GenerationConfig):
        self.vlm, self.generation = vlm, generation
        self.llm = self.processor = None
        self.revision = None
        self.device, self.dtype = vlm.device, vlm.dtype
        self.settings: dict[str, Any] = {}
        self.preprocessing = threading.local()  # per calling thread: seconds in vLLM's preprocessing (take_timings)

    def llm_kwargs(self, path: str) -> dict[str, Any]:
        v = self.vlm.vllm
        mm = v.mm_processor_kwargs if v.mm_processor_kwargs is not None else dict(self.vlm.processor_kwargs)
        kwargs = dict(model=path, dtype=str(self.dtype).replace("torch.", ""), seed=self.generation.seed,
                      trust_remote_code=self.vlm.trust_remote_code, limit_mm_per_prompt=dict(v.limit_mm_per_prompt),
                      mm_processor_kwargs=mm or None, max_model_len=v.max_model_len, max_num_seqs=v.max_num_seqs,
                      enable_prefix_caching=v.enable_prefix_caching, enforce_eager=v.enforce_eager)
        if self.device != "cpu":
            kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
            kwargs["tensor_parallel_size"] = v.tensor_parallel_size or _worker_gpus()
        kwargs.update(v.extra)
        return {k: value for k, value in kwargs.items() if value is not None}

    def setup(self) -> None:
        if vllm_version() is None:
            raise ModelUnavailable("vlm.engine: vllm needs vLLM in this environment: on a CUDA machine "
                                   "`pip install vllm`. On a CPU machine vLLM's build cannot share an environment "
                                   f"with open_clip (CLIP scoring): start vLLM's server from .venv-vllm (`{serve_command()}`, "
                                   "after `bash scripts/setup.sh --vllm`) and run with vlm.engine: openai "
                                   "(docs/engines.md, 'The engine environment')")
        located = locate_hf(self.vlm.model, self.vlm.revision, self.vlm.allow_pickle_weights)
        self.device = resolve_device(self.vlm.device)
        if self.device.startswith("cuda:") and self.device != "cuda:0":  # vLLM takes the first visible GPU(s)
            raise ModelUnavailable(f"vlm.device {self.device!r} with vlm.engine: vllm: vLLM runs on the first GPU "
                                   "the process sees, whatever the index (the record would name a GPU it did not use): "
                                   "set vlm.device: cuda and choose the GPU with CUDA_VISIBLE_DEVICES (under Ray, "
                                   "each actor's own)")
        self.dtype = resolve_dtype(self.vlm.dtype, self.device)
        if self.device == "cpu":  # the measured CPU settings (docs/engines.md): in-process, a small KV cache
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.vlm.vllm.cpu_kvcache_space_gib))
        from vllm import LLM

        from vlm_aug.stages.families import check_processor_kwargs, load_processor

        revision = self.vlm.revision if located.source == "hub" else None
        # the processor builds the chat prompt exactly as the hf engine does
        self.processor = load_processor(located.path, self.vlm.model, self.vlm.processor_kwargs,
                                        trust_remote_code=self.vlm.trust_remote_code, revision=revision)
        kwargs = self.llm_kwargs(located.path)
        if self.vlm.vllm.mm_processor_kwargs:  # vLLM's processor drops an unknown key with a warning only
            check_processor_kwargs(self.processor, self.vlm.vllm.mm_processor_kwargs, self.vlm.model,
                                   "vlm.vllm.mm_processor_kwargs")
        if revision:
            kwargs["revision"] = revision
        try:
            self.llm = LLM(**kwargs)
        except TypeError as exc:  # an engine argument vLLM does not take (vlm.vllm.extra)
            raise ModelUnavailable(f"vLLM refused its settings ({exc}): check vlm.vllm.extra "
                                   f"{sorted(self.vlm.vllm.extra)} against vLLM {vllm_version()}'s EngineArgs") from None
        except Exception as exc:  # noqa: BLE001 - a model vLLM cannot serve, memory it cannot have: name it
            raise ModelUnavailable(f"vLLM {vllm_version()} could not load {self.vlm.model!r} "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}): "
                                   "either vLLM does not serve this architecture (vlm.engine: hf runs any transformers "
                                   "VLM), or it cannot meet the settings (memory: vlm.vllm.gpu_memory_utilization, "
                                   "max_model_len, cpu_kvcache_space_gib)") from None
        self.revision = located.revision
        self.settings = {k: v for k, v in kwargs.items() if k not in ("model", "revision")}

    def describe(self) -> dict:
        return {"name": self.name, "version": f"vllm {vllm_version()}", "settings": self.settings}

    def take_timings(self) -> dict[str, float]:
        """Seconds of the `rewrite` stage spent in vLLM's image preprocessing since this thread's last call
        (a Ray actor runs several shards' threads through one engine)."""
        taken, self.preprocessing.s = getattr(self.preprocessing, "s", 0.0), 0.0
        return {"vlm_preprocess": taken} if taken else {}

    def _sampling(self, seed: int):
        from vllm import SamplingParams

        g = self.generation
        if g.do_sample:
            return SamplingParams(max_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, seed=seed)
        return SamplingParams(max_tokens=g.max_new_tokens, temperature=0.0, seed=seed)

    def inputs(self, requests: list[Request]) -> list[dict]:
        """vLLM's prompts for `requests`: the chat-templated text and the decoded image."""
        return [{"prompt": self.processor.apply_chat_template(chat_messages(r.rendered_prompt),
                                                              add_generation_prompt=True),
                 "multi_modal_data": {"image": r.image}} for r in requests]

    def sampling(self, requests: list[Request]) -> list:
        """One `SamplingParams` per request, each with its sample's seed."""
        return [self._sampling(r.seed) for r in requests]

    def generate(self, requests: list[Request]) -> list[Result]:
        inputs, params = self.inputs(requests), self.sampling(requests)
        if hasattr(self.llm, "enqueue"):  # generate's two halves (vllm-project/vllm#33195), the first timed
            # vLLM preprocesses each request's image on this thread, one after another (docs/engines.md); a
            # request that fails there takes the ones queued before it out again, as generate does
            start = time.perf_counter()
            try:
                self.llm.enqueue(inputs, params, use_tqdm=False)
            finally:
                self.preprocessing.s = getattr(self.preprocessing, "s", 0.0) + time.perf_counter() - start
            outputs = self.llm.wait_for_completion(use_tqdm=False)  # in the order queued (by request id)
        else:
            outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        results, limit = [], self.generation.max_new_tokens
        for output in outputs:
            completion = output.outputs[0]
            new = len(completion.token_ids)
            if completion.finish_reason == "length" and new < limit:  # cut by the context, not max_new_tokens
                prompt = len(output.prompt_token_ids or [])
                results.append(Result(text=None, new_tokens=new, error=(
                    f"the rewrite was cut at {new} tokens by the model's context: the prompt ({prompt} tokens) "
                    f"and generation.max_new_tokens ({limit}) exceed "
                    + (f"vlm.vllm.max_model_len ({self.vlm.vllm.max_model_len}): raise it" if self.vlm.vllm.max_model_len
                       else "the model's context length: shorten the prompt") + " or lower max_new_tokens")))
                continue
            results.append(Result(text=completion.text, new_tokens=new, hit_limit=completion.finish_reason == "length"))
        return results
