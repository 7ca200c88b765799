"""The config's sections as typed, validated objects; `load_config` reads YAML and `--set` overrides."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlm_aug.config.errors import ConfigError
from vlm_aug.config.presets import apply_presets, clear_preset_fields
from vlm_aug.formats import IMAGE_EXTS, MAX_CAPTION_BYTES


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(value: str) -> str:
    """torch's spelling of the devices a model can run on; anything else was a torch traceback at load."""
    if not DEVICE.fullmatch(value):
        raise ValueError(f"{value!r} is not a device: use auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps")
    return value


Device = Annotated[str, AfterValidator(check_device)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VLLMSettings(Strict):
    """`vlm.engine: vllm`: the `vllm.LLM` settings users tune (docs/engines.md). None: vLLM's default."""

    # CLIP shares the actor's GPU: vLLM takes this fraction of its memory, the rest is CLIP's and torch's
    gpu_memory_utilization: float = Field(0.80, gt=0, le=1)
    max_num_seqs: Optional[int] = Field(None, ge=1)  # sequences vLLM batches at once
    # prompt + generated tokens; a rewrite the context cuts is that sample's rewrite_error (vLLM cuts the output)
    max_model_len: Optional[int] = Field(None, ge=16)
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"image": 1})  # images per request: one
    mm_processor_kwargs: Optional[dict[str, Any]] = None  # None: vlm.processor_kwargs (same image tokens as hf)
    enable_prefix_caching: Optional[bool] = None  # reuse the KV cache of a shared prompt prefix
    tensor_parallel_size: Optional[int] = Field(None, ge=1)  # None: the GPUs this worker holds
    enforce_eager: bool = False  # no CUDA graphs: slower, starts sooner (tests, small runs)
    cpu_kvcache_space_gib: int = Field(1, ge=1)  # CPU builds only (VLLM_CPU_KVCACHE_SPACE); vLLM's own default is 4+
    extra: dict[str, Any] = Field(default_factory=dict)  # any other vllm.LLM keyword, passed as is


ENGINES = ("hf", "vllm", "openai")


class VLMConfig(Strict):
    preset: Optional[str] = None  # configs/models/NAME.yaml; fills the fields left out (vlm_aug.config.presets)
    model: str = "HuggingFaceTB/SmolVLM-256M-Instruct"  # a hub id, a local checkpoint folder, or vlm_aug:scene_vlm
    revision: Optional[str] = None  # hub commit, branch or tag; pin a commit sha for reproducible data
    # auto: bfloat16 on CUDA, float16 on MPS, float32 on the CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Device = "auto"  # auto: cuda, else mps, else cpu; or cuda:N, cpu
    trust_remote_code: bool = False  # run a checkpoint's own Python code (docs/security.md); recorded in provenance
    allow_pickle_weights: bool = False  # load .bin / .pt weights (pickle) when a checkpoint has no safetensors
    batch_size: int = Field(8, ge=1)  # hf: samples per generate call
    # the processor's image settings (e.g. max_pixels, do_image_splitting): bound image tokens
    processor_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Who generates (docs/engines.md): hf = transformers `generate` in batch_size chunks; vllm = vllm.LLM
    # in the worker; openai = any OpenAI-compatible chat-completions server; auto = vllm on CUDA when
    # it is importable, else hf.
    engine: Literal["auto", "hf", "vllm", "openai"] = "hf"
    window: int = Field(256, ge=1)  # vllm / openai: samples handed to the engine at once (decoded images held)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    endpoint: Optional[list[str]] = None  # openai: base URL(s) ending in /v1; several are spread across
    api_key_env: Optional[str] = None  # openai: the NAME of the variable holding the key (never the key)
    served_model_name: Optional[str] = None  # openai: the model name the server knows; None: vlm.model
    max_in_flight: int = Field(16, ge=1)  # openai: requests in flight per worker
    request_timeout_s: float = Field(300.0, gt=0)  # openai: one request, connect to last byte
    max_retries: int = Field(6, ge=0)  # openai: on connection errors, 408, 429 and 5xx, with backoff
    retry_backoff_s: float = Field(0.5, gt=0)  # openai: first wait; doubles per retry, at most 30 s

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in (part.strip() for part in value.split(",")) if v]
        if value is not None:
            for url in value:
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError(f"vlm.endpoint {url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
                parts = urlsplit(str(url))
                if parts.username is not None or parts.password is not None:  # the config is written to the manifest
                    raise ValueError(f"vlm.endpoint {parts.scheme}://...@{parts.hostname} holds credentials; keys never go "
                                     "into a config (it is written to the manifest): put the key in an environment "
                                     "variable and name it in vlm.api_key_env")
            value = [str(url).rstrip("/") for url in value]
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):  # never echoed: it may be the key
            raise ValueError("vlm.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), not hold "
                             "the key itself: keys never go into a config")
        return value

    @model_validator(mode="after")
    def _engine_needs(self) -> "VLMConfig":
        if self.engine == "openai" and not self.endpoint:
            raise ValueError("vlm.engine: openai needs vlm.endpoint, the server's base URL "
                             "(e.g. --set vlm.endpoint=http://127.0.0.1:8000/v1)")
        return self


class ExtraCaption(Strict):
    """One more caption of the same image (`generation.captions`), written as KEY.<name>.txt."""

    name: str  # the member name: KEY.<name>.txt
    prompt: str  # a template name (configs/prompts/NAME.yaml) or a YAML file

    @field_validator("name")
    @classmethod
    def _member_name(cls, value: str) -> str:
        if not value.isidentifier() or value in ("txt", "json", "orig"):
            raise ValueError(f"generation.captions name {value!r} must be an identifier other than txt, json, orig: "
                             "it names the tar member KEY.<name>.txt")
        return value


class GenerationConfig(Strict):
    prompt: str = "dense_v1"  # a template name (configs/prompts/NAME.yaml) or a YAML file with id and text ({caption})
    # the rewrite is cut here (the guards then drop an unfinished last sentence)
    max_new_tokens: int = Field(128, ge=1, le=4096)
    max_time_s: Optional[float] = Field(None, gt=0, description="wall-clock cap per generate call (hf engine); "
                                        "where it cuts depends on the machine's speed, so a run with it is not "
                                        "reproducible; a cut rewrite's unfinished last sentence is dropped")
    # false: greedy; true: sampling with each sample's own seed (from generation.seed and its key)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0)  # sampling only
    top_p: float = Field(0.9, gt=0, le=1)  # sampling only: nucleus
    seed: int = 0  # the run's seed; each sample's is derived from it, its shard and its key
    # text guards before scoring (stages/guards.py): strip preambles and sign-offs, cut an unfinished
    # last sentence, refuse loops, refusals and echoes
    guards: bool = True
    # best of n: n sampled candidates per sample (each with its own seed), the one with the highest CLIP
    # cosine is the rewrite; every candidate and its score is in provenance (docs/captions.md)
    n: int = Field(1, ge=1, le=16)
    # several captions per image: each generated from the same image with its own prompt, scored, and
    # written as KEY.<name>.txt beside KEY.txt (which stays the policy's training caption)
    captions: list[ExtraCaption] = Field(default_factory=list)

    @model_validator(mode="after")
    def _n_needs_sampling(self) -> "GenerationConfig":
        if self.n > 1 and not self.do_sample:
            raise ValueError("generation.n > 1 (best of n) needs generation.do_sample: true; greedy decoding "
                             "would give n identical candidates")
        names = [c.name for c in self.captions]
        if len(names) != len(set(names)):
            raise ValueError(f"generation.captions names must be unique, got {names}")
        return self


class CLIPConfig(Strict):
    preset: Optional[str] = None  # configs/models/NAME.yaml (kind: clip)
    model: str = "ViT-B-32"  # an open_clip model name, or a local open_clip folder (vlm_aug:scene_clip)
    pretrained: Optional[str] = "laion2b_s34b_b79k"  # open_clip's pretrained tag; null for a local folder
    device: Device = "auto"  # auto: cuda, else mps, else cpu; or cuda:N, cpu
    batch_size: int = Field(32, ge=1)  # images or texts per CLIP forward pass


class RepairConfig(Strict):
    """Sentence repair (docs/repair.md): a rewrite whose weakest sentences fail is kept without them."""

    # a sentence whose CLIP cosine with the image is below this is dropped; null = off. An absolute
    # cosine separated wrong sentences better than rules relative to the sample's other sentences in
    # the scene world (AUC 0.89 vs 0.71-0.73); the value is CLIP-specific (scene CLIP: 0.50)
    drop_sentences_below: Optional[float] = Field(None, ge=-1, le=1)
    min_sentences: int = Field(1, ge=1)  # fewer left: the rewrite fails (reason low_clip_sentences)


class PolicyConfig(Strict):
    name: Literal["rewrite", "fallback", "both", "mix"] = "fallback"  # what a sample trains on (README.md, Policies)
    # a rewrite below this CLIP cosine with the image fails (low_clip_rewrite)
    min_clip_rewrite: float = Field(0.20, ge=-1, le=1)
    # an original below this fails (low_clip_orig); fallback keeps one above it
    min_clip_orig: float = Field(0.20, ge=-1, le=1)
    # fallback / mix: a rewrite scoring more than this below the original fails (rewrite_worse)
    max_drop: float = Field(0.02, ge=0, le=2)
    # mix: share of samples with an acceptable rewrite that train on it (seeded draw)
    mix_rewrite_fraction: float = Field(0.8, ge=0, le=1)
    # Reject a sample whose original caption scores below min_clip_orig even when its rewrite passes
    # (reason `orig_misaligned`): the rewrite was written from that caption and may repeat its error.
    reject_misaligned_orig: bool = False
    repair: RepairConfig = Field(default_factory=RepairConfig)


class LimitsConfig(Strict):
    # larger declared images are not decoded (image_too_large): decompression bombs
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_image_bytes: int = Field(64 * 1024 * 1024, ge=1)  # larger image members are not decoded (image_too_large)
    # longer captions are cut before prompting (caption_truncated in provenance)
    max_caption_chars: int = Field(1000, ge=1)
    # a longer original caption is not a caption (a page, a dump): the sample is an error, caption_too_long
    max_caption_bytes: int = Field(MAX_CAPTION_BYTES, ge=1)
    # one tar member (image, caption, json); `max_sample_bytes` is its old name, still read
    max_member_bytes: int = Field(128 * 1024 * 1024, ge=1,
                                  validation_alias=AliasChoices("max_member_bytes", "max_sample_bytes"))


class InputConfig(Strict):
    # shard files, folders, globs, {000..009} patterns, fsspec URLs (s3://, gs://); or --input
    paths: list[str] = Field(default_factory=list)
    # threads decoding images and preparing model inputs per worker, the calling thread among them
    # (Pillow releases the GIL while it decodes: 2 reach ~1.8x of 1 on 2 cores, docs/performance.md);
    # None: half the worker's cores, 1 to 4 (a Ray actor's: ray.num_cpus_per_actor; a local run's: the CPUs
    # the process may run on); a dry run (no model) all of them, 1 to 4
    decode_workers: Optional[int] = Field(None, ge=1, le=64)
    caption_key: str = "txt"  # the caption member: txt, another extension (caption, orig.txt), or json:FIELD
    # image member extensions, in order of preference; `image_keys` is its old name, still read
    image_exts: list[str] = Field(default_factory=lambda: list(IMAGE_EXTS),
                                  validation_alias=AliasChoices("image_exts", "image_keys"))

    @field_validator("paths")
    @classmethod
    def _no_secrets(cls, value: list[str]) -> list[str]:
        """An input's URL is written into every sample's provenance, the manifest and the card."""
        for path in value:
            refuse_secrets(path, "input")
        return value

    @field_validator("caption_key")
    @classmethod
    def _caption_key(cls, value: str) -> str:
        return caption_key(value)


def caption_key(value: str) -> str:
    """`input.caption_key` (and the lab's --heldout-caption-key) in its normal form. Member extensions are
    compared in lower case (`KEY.TXT` is `txt`), so the key is too; one of two parts names a member
    such as `KEY.orig.txt`."""
    if value.startswith("json:"):
        return value
    if not all(part.isidentifier() for part in value.split(".")):
        raise ValueError("use 'txt', another member extension (e.g. caption, orig.txt), or 'json:FIELD' "
                         "(e.g. json:caption)")
    return value.lower()


def refuse_secrets(url: str, what: str) -> None:
    """A URL with credentials (user:password@) or, over http(s), a query string (a pre-signed URL's
    signature, a token) is refused without echoing them: inputs and outputs are written into the
    manifest, the card and (inputs) every sample's provenance. Each link of an fsspec chain
    (`simplecache::https://...`) is checked."""
    for link in url.split("::"):
        if "://" not in link:
            continue
        parts = urlsplit(link)
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{what} {shown} (user:password@) holds credentials, and an {what}'s URL is written "
                             "into the output's provenance, manifest and card: give the credentials through the "
                             "environment (AWS_ACCESS_KEY_ID, ...; docs/cluster.md) and the URL without them")
        if parts.query or parts.fragment:
            raise ValueError(f"{what} {shown}?... has a query string, which often holds a signature or a token "
                             f"(a pre-signed URL), and an {what}'s URL is written into the output's provenance, "
                             "manifest and card and names its shards: serve the shards at URLs without one, or "
                             "read them as s3:// or gs:// with credentials in the environment")


class OutputConfig(Strict):
    path: str = "out"  # the output folder (local or fsspec URL); or --output
    overwrite: bool = False  # redo every shard, complete ones too (--overwrite)
    # append to an output made with other settings; each shard keeps its own (docs/output.md)
    allow_config_change: bool = False
    # one image format per output, so every consumer loads it (vlm_aug.shards.images): bytes in it are
    # kept unless the models saw other pixels (EXIF turn, alpha, 16 bits); null keeps each image's
    # bytes under its real extension, which may mix formats
    normalize_image_format: Optional[Literal["jpg", "png"]] = "jpg"
    report: bool = True  # write OUT/report.html after the run (--no-report: false)

    @field_validator("path")
    @classmethod
    def _no_secrets(cls, value: str) -> str:
        refuse_secrets(value, "output")
        return value


class ReportConfig(Strict):
    """What is measured after a run (docs/semantic.md); never part of the settings fingerprint."""

    semantic: bool = True  # semantic figures after the run, when a text embedder is installed (vlm-aug[semantic])
    text_embedder: Optional[str] = None  # a sentence-transformers directory; None: the packaged all-MiniLM-L6-v2
    reference: list[str] = Field(default_factory=list)  # reference caption shards (KEY.txt) or .txt files
    semantic_sample: int = Field(5000, ge=10)  # captions per set embedded: a seeded sample of larger outputs
    semantic_seed: int = 0  # seed of that sample
    # captions of different images at or above this are near-duplicates
    near_duplicate_cosine: float = Field(0.95, gt=0, le=1)
    # two sentences of one caption at or above this: redundant
    redundant_sentence_cosine: float = Field(0.90, gt=0, le=1)


class RayConfig(Strict):
    """Where and how shards run under `executor: ray`; see docs/cluster.md."""

    address: Optional[str] = None  # None: RAY_ADDRESS, else an embedded local instance
    num_actors: Optional[int] = Field(None, ge=1)  # None: one per GPU, or CPUs / num_cpus_per_actor
    # None: what the stages declare (a model stage not on `cpu` takes 1 GPU where the cluster has GPUs)
    num_gpus_per_actor: Optional[float] = Field(None, ge=0)
    num_cpus_per_actor: Optional[float] = Field(None, gt=0)  # None: what the stages declare (1)
    # None: floor(num_cpus_per_actor) - 1, at least 1 (a core for the prefetch thread, as the local executor)
    torch_threads_per_actor: Optional[int] = Field(None, ge=1)
    # shards an actor holds at once (one reads while one runs the models)
    max_shards_in_flight_per_actor: int = Field(2, ge=1)
    # a failed shard (actor died, error) is tried again on another actor this many times
    max_retries: int = Field(2, ge=0)
    # how long to wait for the cluster to hold the actor pool before failing
    resource_timeout_s: float = Field(30.0, gt=0)
    setup_timeout_s: float = Field(900.0, gt=0)  # model load per actor
    shard_timeout_s: float = Field(3600.0, gt=0)  # one shard on one actor
    dashboard: Optional[bool] = None  # embedded instance only; None: when ray[default] is installed
    object_store_mb: int = Field(256, ge=75)  # embedded instance only; shards never go through it


class Config(Strict):
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    vlm: VLMConfig = Field(default_factory=VLMConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    clip: CLIPConfig = Field(default_factory=CLIPConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    # auto: Ray when a cluster is given, the machine has several GPUs, or the input is large; else the
    # local executor, whose start-up is seconds shorter (docs/cluster.md, its first section)
    executor: Literal["auto", "local", "ray"] = "auto"
    ray: RayConfig = Field(default_factory=RayConfig)
    # local executor: torch threads; None: the usable CPUs but one (a core for decoding)
    torch_threads: Optional[int] = Field(None, ge=1)
    # glibc: keep freed blocks up to 32 MB for reuse instead of giving them back to the kernel, in the
    # processes that run the models (vlm_aug/malloc.py; fewer page faults); false: the allocator as it is
    tune_malloc: bool = True
    dry_run: bool = False  # no models: caption kept as is, images still decoded, full output written

    @model_validator(mode="before")
    @classmethod
    def _expand_presets(cls, data: Any) -> Any:
        return apply_presets(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _engine_options(self) -> "Config":
        if self.vlm.engine in ("vllm", "openai") and self.generation.max_time_s is not None:
            raise ValueError(f"generation.max_time_s is a transformers option that vlm.engine {self.vlm.engine} "
                             "cannot honour: bound the work with generation.max_new_tokens"
                             + (" and vlm.request_timeout_s" if self.vlm.engine == "openai" else "")
                             + ", or set generation.max_time_s: null")
        if self.vlm.engine in ("vllm", "openai") and self.generation.do_sample and self.generation.temperature > 2:
            raise ValueError(f"generation.temperature {self.generation.temperature}: vlm.engine {self.vlm.engine} "
                             "takes 0 to 2 (vLLM and the OpenAI API refuse more, after the model has loaded)")
        return self

    @model_validator(mode="after")
    def _output_not_input(self) -> "Config":
        out = _normalized(self.output.path)
        for pattern in self.input.paths:
            if _normalized(pattern) == out or _normalized(str(Path(pattern).parent)) == out + "/shards":
                raise ValueError(
                    f"output.path {self.output.path!r} would overwrite the input {pattern!r}: "
                    "choose another output directory"
                )
        return self

    def settings(self) -> dict[str, Any]:
        """What decides the content of the output's samples, as flat `section.key` -> value. Where and
        how fast it runs (executor, ray, threads, devices, batch sizes) and where it reads and
        writes (input paths: each shard's own identity is checked apart) are left out."""
        recipe = self.model_dump(include={
            "vlm": {"model", "revision", "dtype", "trust_remote_code", "allow_pickle_weights", "processor_kwargs",
                    "engine", "vllm"},
            "generation": True, "clip": {"model", "pretrained"}, "policy": True, "limits": True,
            "input": {"caption_key", "image_exts"}, "output": {"normalize_image_format"}, "dry_run": True})
        vlm = recipe["vlm"]
        if recipe["limits"]["max_caption_bytes"] == SETTINGS_DEFAULTS["limits.max_caption_bytes"]:
            del recipe["limits"]["max_caption_bytes"]  # absent at its default (SETTINGS_DEFAULTS)
        engine, vllm = vlm.pop("engine"), vlm.pop("vllm")
        if engine != SETTINGS_DEFAULTS["vlm.engine"]:  # absent for hf, as outputs made before engines existed
            vlm["engine"] = engine
        if engine in ("vllm", "auto"):  # the vLLM settings that change what is generated (auto: if it picks vllm)
            vlm["vllm"] = {k: vllm[k] for k in ("max_model_len", "mm_processor_kwargs", "extra")}
        flat: dict[str, Any] = {}
        for section, values in recipe.items():
            for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
                flat[f"{section}.{key}".rstrip(".")] = value
        return flat

    def sha256(self) -> str:
        """Hash of what decides the output; where it runs (executor, ray, threads) does not."""
        recipe = self.model_dump(exclude={"executor", "ray", "torch_threads", "tune_malloc", "report"})
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


# settings left out of `Config.settings()` at their default, so outputs made before they existed keep their
# fingerprint: what an absent key means, for every reader of recorded settings (the card, stats)
SETTINGS_DEFAULTS = {"vlm.engine": "hf", "limits.max_caption_bytes": MAX_CAPTION_BYTES}


def with_defaults(settings: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Recorded settings with the keys left out at their default filled in (None stays None)."""
    return {**SETTINGS_DEFAULTS, **settings} if settings is not None else None


AUTO_ENGINES = ("hf", "vllm")  # what `vlm.engine: auto` may pick (stages/engines/base.resolve_engine)


def settings_for_engine(settings: dict[str, Any], engine: Optional[str]) -> dict[str, Any]:
    """`Config.settings()` of a run with `vlm.engine: auto` once a worker has picked ENGINE: exactly the
    settings an explicit `vlm.engine: ENGINE` gives, so an output's shards match however the engine was
    chosen. Any other run's settings (or no engine: the dry run) come back as they are."""
    if settings.get("vlm.engine") != "auto" or engine is None:
        return settings
    if engine not in AUTO_ENGINES:
        raise ValueError(f"vlm.engine auto cannot resolve to {engine!r}")
    resolved = dict(settings)
    if engine == "hf":
        del resolved["vlm.engine"], resolved["vlm.vllm"]
    else:
        resolved["vlm.engine"] = engine
    return resolved


def _normalized(path: str) -> str:
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).expanduser().resolve())


def _section_model(loc: tuple) -> Optional[type[BaseModel]]:
    """The config class that holds the key at `loc` (list indices and Optional skipped)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = [a for a in [field.annotation, *getattr(field.annotation, "__args__", ())]
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _unknown_key(loc: tuple) -> str:
    """'unknown key', the closest allowed key and every key allowed where it stands."""
    import difflib

    model = _section_model(loc)
    if model is None:
        return "unknown key (check spelling)"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}allowed here: {', '.join(allowed)}; all keys: docs/config.md)"


def _format_errors(err: ValidationError, source: str, set_keys: tuple = ()) -> str:
    """`set_keys`: the keys given with --set, so an error names where the bad value came from."""
    lines = [f"invalid config {source}" + (" with its --set values" if set_keys else "") + ":"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = _unknown_key(e["loc"])
        elif e["type"] == "literal_error":
            msg = f"got {e.get('input')!r}; {msg}"
        elif e["type"] == "list_type":  # --set input.image_exts=png: YAML reads a word
            example = shlex.quote(f"{field}=[{e.get('input')}]")
            msg += f"; got {e.get('input')!r}: write a list, e.g. --set {example}"
        elif field == "vlm.api_key_env":  # a key given by mistake: never echoed
            pass
        elif e["type"] == "string_type" and isinstance(e.get("input"), (int, float, bool)):  # 1234567, yes
            msg += (f"; YAML read {e.get('input')!r} as a {type(e['input']).__name__}: quote it in the value, e.g. "
                    f"--set '{field}=\"{e.get('input')}\"'")
        # the key given, or one below it (--set vlm.procesor_kwargs.max_pixels=5: the unknown key is its parent)
        given = next((k for k in set_keys if field == k or field.startswith(k + ".") or k.startswith(field + ".")), None)
        lines.append(f"  {field}: {msg}" + (f" (from --set {given})" if given else ""))
    return "\n".join(lines)


def _set_dotted(data: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = (), **direct: Any) -> Config:
    """Read YAML, apply `key.sub=value` overrides and direct values, validate."""
    data: dict = {}
    source = "(defaults)"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder: give a YAML file (e.g. configs/preview.yaml)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text: give a YAML file "
                              "(e.g. configs/preview.yaml)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must be a mapping of sections")
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set policy.name=rewrite")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), raw))
    for key, raw in pairs:  # a preset chosen here replaces what the file set, never another --set (any order)
        if key in ("vlm.preset", "clip.preset"):
            data = clear_preset_fields(data, key.split(".")[0], yaml.safe_load(raw))
    for key, raw in pairs:
        _set_dotted(data, key, raw)
    for dotted, value in direct.items():
        if value is not None:
            _set_dotted(data, dotted.replace("__", "."), json.dumps(value))
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, tuple(k for k, _ in pairs))) from None
