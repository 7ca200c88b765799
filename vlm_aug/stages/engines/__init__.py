"""Who generates the rewrite: `hf` (transformers `generate`), `vllm` (vllm.LLM in the worker) or
`openai` (any OpenAI-compatible chat-completions server). The rewrite stage builds the prompt, the
per-sample seed and cleans the text the same way for each; an engine only turns requests into text."""

from __future__ import annotations

from vlm_aug.config import VLMConfig
from vlm_aug.stages.engines.base import (Engine, EngineUnavailable, Request, Result, available_engines, resolve_engine,
                                        serve_command)

__all__ = ["Engine", "EngineUnavailable", "Request", "Result", "available_engines", "make_engine", "resolve_engine",
           "serve_command"]


def make_engine(vlm: VLMConfig, generation) -> Engine:
    name = resolve_engine(vlm.engine, vlm.device)
    if name == "vllm":
        from vlm_aug.stages.engines.vllm import VLLMEngine

        return VLLMEngine(vlm, generation)
    if name == "openai":
        from vlm_aug.stages.engines.openai import OpenAIEngine

        return OpenAIEngine(vlm, generation)
    from vlm_aug.stages.engines.hf import HFEngine

    return HFEngine(vlm, generation)
