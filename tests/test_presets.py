"""Model presets: their content, how a config uses one, `vlm-aug models`, CLIP variants of the
preset architectures, the offline SigLIP error, pinned revisions, and the real-model smoke script."""

import importlib.util
import json
import shutil
from pathlib import Path

import open_clip
import torch
import pytest
import yaml
from PIL import Image

from helpers import make_shards, tiny_args
from vlm_aug.cli import main
from vlm_aug.config import CLIPConfig, ConfigError, GenerationConfig, LimitsConfig, VLMConfig, load_config
from vlm_aug.stages.models import ModelUnavailable
from vlm_aug.config.presets import list_presets
from vlm_aug.stages.prompts import load_template
from vlm_aug.sample import Sample
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.stages.score import ScoreStage
from vlm_aug.lab.tiny_families import TINY_BUILDERS, build_tiny_clip_variant, build_tiny_qwen_vl

REPO = Path(__file__).resolve().parents[1]
REQUIRED_VLM = {"HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
                "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "Qwen/Qwen2-VL-2B-Instruct",
                "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"}


def test_vlm_presets_cover_the_issue_and_name_everything_a_run_needs():
    presets = list_presets("vlm")
    assert REQUIRED_VLM <= {p.hub_id for p in presets}
    assert any(p.family == "llava" for p in presets)
    for p in presets:
        raw = yaml.safe_load(Path(p.path).read_text())
        assert "revision" in raw["vlm"], f"{p.name}: no revision field to pin"
        assert p.family in TINY_BUILDERS, f"{p.name}: family {p.family!r} has no tiny model test"
        assert p.fields["dtype"] in ("auto", "bfloat16", "float16", "float32")
        assert p.max_image_tokens and p.batch_size_guidance and p.params_b > 0
        load_template(p.sections["generation"]["prompt"])  # the prompt template exists
        VLMConfig(**p.fields)  # every field is a real VLMConfig field


def test_clip_presets_exist_in_open_clip():
    presets = list_presets("clip")
    tags = set(open_clip.list_pretrained())
    assert {("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-L-14", "datacomp_xl_s13b_b90k"),
            ("ViT-L-14", "laion2b_s32b_b82k")} <= {(p.fields["model"], p.fields["pretrained"]) for p in presets}
    assert any("SigLIP" in p.fields["model"] for p in presets)
    for p in presets:
        assert (p.fields["model"], p.fields["pretrained"]) in tags
        CLIPConfig(**p.fields)


def test_preset_fills_fields_and_explicit_fields_win(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"vlm": {"preset": "qwen2.5-vl-3b", "batch_size": 2,
                                                   "processor_kwargs": {"max_pixels": 100352}},
                                           "clip": {"preset": "vit-l-14-datacomp"}}))
    c = load_config(config_file)
    assert c.vlm.model == "Qwen/Qwen2.5-VL-3B-Instruct" and c.vlm.dtype == "bfloat16" and c.vlm.batch_size == 2
    assert c.vlm.processor_kwargs == {"min_pixels": 200704, "max_pixels": 100352}  # merged key by key
    assert (c.clip.model, c.clip.pretrained, c.clip.batch_size) == ("ViT-L-14", "datacomp_xl_s13b_b90k", 128)
    assert c.generation.prompt == "dense_v1"
    assert type(c).model_validate(c.model_dump()) == c  # a dumped config (manifest, Ray workers) re-validates


def test_set_preset_replaces_the_file_model_but_later_sets_still_win():
    c = load_config(REPO / "configs/cluster.yaml", ["vlm.preset=smolvlm-256m", "vlm.batch_size=3"])
    assert c.vlm.model == "HuggingFaceTB/SmolVLM-256M-Instruct"  # not cluster.yaml's Qwen 7B
    assert c.vlm.processor_kwargs == {"do_image_splitting": False}  # not cluster.yaml's Qwen pixels
    assert c.vlm.batch_size == 3 and c.vlm.device == "cuda"  # later --set, and a field the preset leaves
    # a --set before the preset's wins too (it was dropped: the preset cleared it with the file's fields)
    c = load_config(REPO / "configs/cluster.yaml", ["vlm.batch_size=2", "vlm.model=vlm_aug:scene_vlm",
                                                   "vlm.preset=smolvlm-256m"])
    assert (c.vlm.batch_size, c.vlm.model) == (2, "vlm_aug:scene_vlm")
    assert c.vlm.processor_kwargs == {"do_image_splitting": False}  # the file's field is still the preset's


@pytest.mark.parametrize("sets, message", [
    (["vlm.preset=nope"], "vlm.preset 'nope' is not a preset; available: .*smolvlm-256m"),
    (["clip.preset=smolvlm-256m"], "is a vlm preset, not a clip one"),
])
def test_bad_preset_names_the_field_and_the_choices(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/preview.yaml", sets)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache: no model is available offline until a test puts it there."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def install_in_hub_cache(model_dir, cache, repo_id: str, sha: str) -> Path:
    """Lay a model out as huggingface_hub caches a download: snapshots/<sha>/ plus refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


@pytest.fixture(scope="module")
def tiny_qwen25(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen25"), version="2.5")


SHA = "0123456789abcdef0123456789abcdef01234567"


def test_models_command_offline_lists_presets_and_finds_cached_ones(hub_cache, tiny_qwen25, tmp_path, capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for p in list_presets():
        assert p.name in table
    assert f"0 of {len(list_presets())} presets available offline" in table

    install_in_hub_cache(tiny_qwen25, hub_cache, "Qwen/Qwen2.5-VL-3B-Instruct", SHA)
    local = tmp_path / "models" / "SmolVLM-256M-Instruct"
    shutil.copytree(tiny_qwen25, local)  # any checkpoint directory named like the repo counts
    assert main(["models", "--kind", "vlm", "--json", "--models-dir", str(tmp_path / "models")]) == 0
    rows = {r["preset"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == {p.name for p in list_presets("vlm")}
    assert rows["qwen2.5-vl-3b"]["offline"] == f"hub cache @ {SHA[:12]}"
    assert rows["smolvlm-256m"]["offline"] == f"local {local}"
    assert rows["qwen2.5-vl-7b"]["offline"] is None
    assert rows["qwen2.5-vl-7b"]["memory_gb"] == pytest.approx(8.29 * 2 * 1.25, abs=0.1)


def test_models_memory_is_at_the_dtype_each_device_runs():
    """`vlm-aug models` sizes memory at the dtype the stages pick (`resolve_dtype`): half precision on
    CUDA and MPS, float32 on the CPU; CLIP at float32 everywhere."""
    from vlm_aug.commands.models import preset_rows

    for device, half in (("cpu", "float32"), ("cuda", "bfloat16"), ("mps", "float16")):
        rows = {r["preset"]: r for r in preset_rows(device=device)}
        assert rows["smolvlm-500m"]["dtype"] == half  # dtype: auto
        assert rows["qwen2.5-vl-7b"]["dtype"] == "bfloat16"  # set in the preset: wins everywhere
        ratio = rows["smolvlm-500m"]["memory_gb"] / rows["smolvlm-500m"]["download_gb"]
        assert ratio == pytest.approx((2 if half == "float32" else 1) * 1.25, rel=0.05)
        assert all(r["dtype"] == "float32" for r in rows.values() if r["kind"] == "clip")


def test_hub_revision_loaded_is_recorded_pinned_or_not(hub_cache, tiny_qwen25):
    install_in_hub_cache(tiny_qwen25, hub_cache, "tiny-org/qwen-tiny", SHA)
    for revision in (None, "main", SHA):
        vlm = VLMConfig(model="tiny-org/qwen-tiny", revision=revision, device="cpu", dtype="float32",
                        processor_kwargs={"max_pixels": 12544})
        stage = RewriteStage(vlm, GenerationConfig(max_new_tokens=2, guards=False), LimitsConfig())
        stage.setup()
        assert stage.describe()["revision"] == SHA
    other = VLMConfig(model="tiny-org/qwen-tiny", revision="f" * 40, device="cpu")
    with pytest.raises(ModelUnavailable, match="tiny-org/qwen-tiny.*not in the local Hugging Face cache") as caught:
        RewriteStage(other, GenerationConfig(), LimitsConfig()).setup()
    # the command fetches the pinned revision (without it, main: the rerun failed again)
    assert f"at revision {'f' * 40}" in str(caught.value)
    assert f"`hf download tiny-org/qwen-tiny --revision {'f' * 40}`" in str(caught.value)


def test_clip_weights_must_be_cached_not_only_their_repo(hub_cache):
    """A repo of which only open_clip_config.json was cached passed the check, and open_clip then failed
    with a traceback (RuntimeError: Failed to download weights); the error names clip.model, not vlm.model."""
    from vlm_aug.stages.models import locate_clip

    repo = hub_cache / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "open_clip_config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    with pytest.raises(ModelUnavailable, match="CLIP weights 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K' is not in") as caught:
        locate_clip("ViT-B-32", "laion2b_s34b_b79k")
    assert "`hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K`" in str(caught.value)
    assert "clip.model: /path/to/open_clip_dir, clip.pretrained: null" in str(caught.value)
    (repo / "snapshots" / SHA / "open_clip_model.safetensors").write_bytes(b"")  # now the weights are there
    assert locate_clip("ViT-B-32", "laion2b_s34b_b79k")[:2] == ("ViT-B-32", "laion2b_s34b_b79k")


def test_hub_reachable_asks_the_endpoints_own_port(monkeypatch):
    """A mirror at HF_ENDPOINT=http://host:8765 was probed at port 443 and never reached; HF_HUB_OFFLINE=on
    (which huggingface_hub honours) was not taken for offline."""
    import socket

    from huggingface_hub import constants

    from vlm_aug.stages.models import hub_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2)
        monkeypatch.setenv("HF_HUB_OFFLINE", "on")
        assert not hub_reachable(timeout=2)
    finally:
        server.close()


@pytest.mark.parametrize("preset", [p for p in list_presets("clip") if "SigLIP" not in p.fields["model"]],
                         ids=lambda p: p.name)
def test_tiny_variant_of_each_open_clip_preset_architecture_scores(preset, tmp_path):
    arch = preset.fields["model"]
    model_dir = build_tiny_clip_variant(tmp_path / arch, arch)
    cfg = json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["vision_cfg"]["patch_size"] == open_clip.get_model_config(arch)["vision_cfg"]["patch_size"]
    stage = ScoreStage(CLIPConfig(model=str(model_dir), pretrained=None, device="cpu"))
    stage.setup()
    sample = Sample(key="k", shard="s", caption_orig="a red square", caption_rewrite="A red square. It is small.",
                    image=Image.new("RGB", (70, 50), (220, 20, 20)))
    stage.process_batch([sample])
    with torch.no_grad():  # the cosines the model itself gives, outside the stage's batching
        image = stage.model.encode_image(stage.preprocess(sample.image)[None], normalize=True)
        texts = stage.model.encode_text(stage.tokenizer(["a red square", "A red square.", "It is small."]),
                                        normalize=True)
    orig, *sentences = (texts @ image.T).squeeze(1).tolist()
    assert sample.scores["clip_orig"] == pytest.approx(orig, abs=1e-5)
    assert sample.scores["clip_sentences"] == pytest.approx(sentences, abs=1e-5)


def no_clip_sets(args: list[str]) -> list[str]:
    """`--set K=V` pairs without the clip ones (the preset names the CLIP; an explicit --set would win)."""
    pairs = [(flag, kv) for flag, kv in zip(args[::2], args[1::2]) if not kv.startswith("clip.")]
    return [x for pair in pairs for x in pair]


def test_siglip_preset_offline_gives_a_clear_error(hub_cache, tiny_vlm_dir, tmp_path, capsys):
    make_shards(tmp_path / "in", n_shards=1, per_shard=2, broken=False)
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/000000.tar"),
            "--output", str(tmp_path / "out"), "--no-progress", "--no-report",
            *no_clip_sets(tiny_args(tiny_vlm_dir, "")), "--set", "clip.preset=siglip-b-16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tokenizer 'timm/ViT-B-16-SigLIP'" in err and "hf download timm/ViT-B-16-SigLIP" in err


def _smoke_main():
    spec = importlib.util.spec_from_file_location("smoke_real_models", REPO / "scripts/smoke_real_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_smoke_script_skips_when_nothing_is_cached(hub_cache, capsys):
    assert _smoke_main()([]) == 0
    assert "skipped - no VLM preset is in the local Hugging Face cache" in capsys.readouterr().out


def test_smoke_script_runs_a_cached_preset(hub_cache, tiny_qwen25, tmp_path, capsys):
    """The tiny Qwen2.5-VL stands in the cache under the real hub id: discovery, the preset's own
    settings (256-512 image tokens per image) and the whole pipeline run as they will on real weights."""
    install_in_hub_cache(tiny_qwen25, hub_cache, "Qwen/Qwen2.5-VL-3B-Instruct", SHA)
    assert _smoke_main()(["--out", str(tmp_path / "smoke"), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "CLIP: tiny random CLIP (no CLIP preset cached)" in out
    assert "== qwen2.5-vl-3b: 4 images in" in out and f"revision {SHA}" in out
    for caption in ("'a red circle'", "'a blue bar'", "'two green squares'", "'a yellow triangle'"):
        assert caption in out


def test_a_preset_file_with_a_typo_is_named_and_the_others_still_work(tmp_path, monkeypatch, capsys):
    """One misspelt key (`param_b:`) in any preset file was a TypeError traceback for every preset lookup,
    for an unknown name's error and for `vlm-aug models`."""
    import vlm_aug.config.presets as presets

    folder = tmp_path / "models"
    shutil.copytree(REPO / "configs" / "models", folder)
    (folder / "mine.yaml").write_text("kind: vlm\nparam_b: 0.3\ntarget: laptop\nvlm:\n  model: org/mine\n")
    monkeypatch.setattr(presets, "presets_dir", lambda: folder)
    assert presets.load_preset("smolvlm-256m", "vlm").hub_id == "HuggingFaceTB/SmolVLM-256M-Instruct"
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown key\(s\) param_b"):
        presets.load_preset("mine", "vlm")
    with pytest.raises(ConfigError, match="'nosuch' is not a preset; available: .*smolvlm-256m"):
        presets.load_preset("nosuch", "vlm")
    assert "mine.yaml: unknown key(s) param_b; a preset takes" in capsys.readouterr().err  # named, left out
    assert main(["models"]) == 0
    assert "smolvlm-256m" in capsys.readouterr().out
