"""Every VLM family through the real rewrite path, each with a tiny random model of its architecture
loaded by `AutoProcessor` / `AutoModelForImageTextToText`, in batches of differently sized images."""

import json
import logging
import warnings

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import make_shards, tiny_args
from vlm_aug.cli import main
from vlm_aug.config import ConfigError, GenerationConfig, LimitsConfig, VLMConfig
from vlm_aug.stages.families import Family, _require_modules, family_of, load_processor
from vlm_aug.stages.models import ModelUnavailable
from vlm_aug.config.presets import list_presets
from vlm_aug.sample import Sample
from vlm_aug.stages.rewrite import RewriteStage
from vlm_aug.lab.tiny_families import TINY_BUILDERS

# model_type -> (model class, processor class, image placeholder in the prompt, tail of the prompt)
EXPECTED = {
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor", "<image>", "Assistant:"),
    "smolvlm": ("SmolVLMForConditionalGeneration", "SmolVLMProcessor", "<image>", "Assistant:"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor",
                 "<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                   "<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n"),
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "USER: <image>\n", "ASSISTANT:"),
}
SIZES = [(40, 48), (120, 30), (16, 16), (90, 90)]
CAPTIONS = ["a red square", "a long thin banner", "x", "a big blue circle on a white background"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in TINY_BUILDERS.items()}


def samples() -> list[Sample]:
    colors = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30)]
    return [Sample(key=f"k{i}", shard="000000.tar", caption_orig=caption, image=Image.new("RGB", size, color))
            for i, (caption, size, color) in enumerate(zip(CAPTIONS, SIZES, colors))]


def rewrite_stage(model_dir, batch_size=4, **processor_kwargs) -> RewriteStage:
    vlm = VLMConfig(model=str(model_dir), batch_size=batch_size, dtype="float32", device="cpu",
                    processor_kwargs=processor_kwargs)
    stage = RewriteStage(vlm, GenerationConfig(max_new_tokens=5, guards=False), LimitsConfig())  # raw model text
    stage.setup()
    return stage


@pytest.mark.parametrize("model_type", list(EXPECTED))
def test_family_rewrites_a_batch_of_differently_sized_images(family_dirs, model_type):
    torch.set_num_threads(2)
    model_cls, processor_cls, placeholder, tail = EXPECTED[model_type]
    stage = rewrite_stage(family_dirs[model_type])
    assert type(stage.model).__name__ == model_cls
    assert type(stage.processor).__name__ == processor_cls
    assert family_of(stage.model.config.model_type).model_types == (model_type,)

    batch = samples()
    prompt = stage._prompt(batch[0])
    assert placeholder in prompt and prompt.endswith(tail)
    assert stage.template.render("a red square") in prompt  # the original caption is in the user turn

    stage.process_batch(batch)
    for sample in batch:
        assert isinstance(sample.caption_rewrite, str)
        assert 1 <= sample.generation.new_tokens <= 5
    assert stage.describe()["revision"].startswith("sha256:")

    # each sample alone and inside a left-padded batch of other sizes decodes the same tokens
    prompts = [stage._prompt(s) for s in batch]
    mask = stage.processor(text=prompts, images=[[s.image] for s in batch], padding=True,
                           return_tensors="pt")["attention_mask"]
    assert (mask.sum(-1) < mask.shape[-1]).any()  # some rows are padded, so the comparison tests padding
    single = rewrite_stage(family_dirs[model_type], batch_size=1)
    for i, alone in enumerate(samples()):
        single.process_batch([alone])
        assert alone.caption_rewrite == batch[i].caption_rewrite, i


def image_token_counts(stage, batch) -> list[int]:
    prompts = [stage._prompt(s) for s in batch]
    inputs = stage.processor(text=prompts, images=[[s.image] for s in batch], padding=True, return_tensors="pt")
    image_id = stage.model.config.image_token_id if hasattr(stage.model.config, "image_token_id") \
        else stage.model.config.image_token_index
    return (inputs["input_ids"] == image_id).sum(-1).tolist()


def test_qwen_image_tokens_follow_image_size_within_bounds(family_dirs):
    stage = rewrite_stage(family_dirs["qwen2_5_vl"], min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # min/max_pixels reach transformers as `size`
        counts = image_token_counts(stage, samples())
    assert counts[2] == 4  # 16x16 is scaled up to min_pixels
    assert all(4 <= c <= 16 for c in counts) and len(set(counts)) > 1
    big = Sample(key="big", shard="s", caption_orig="x", image=Image.new("RGB", (2000, 1500)))
    assert image_token_counts(stage, [big]) == [12]  # 2000x1500 scaled down to <= 16 tokens, aspect kept


def test_llava_image_tokens_fixed(family_dirs):
    stage = rewrite_stage(family_dirs["llava"])
    assert image_token_counts(stage, samples()) == [16] * 4  # 32 px crop / 8 px patches, CLS dropped


@pytest.mark.parametrize("preset", [p for p in list_presets("vlm")], ids=lambda p: p.name)
def test_every_vlm_preset_settings_are_accepted_by_its_family(family_dirs, preset):
    """A preset's processor_kwargs are checked by the processor class of its family (typos fail)."""
    processor = load_processor(str(family_dirs[preset.family]), preset.hub_id, preset.fields["processor_kwargs"])
    if preset.family in ("qwen2_vl", "qwen2_5_vl"):  # the tiny Qwen has the real 14 px patches, 2x2 merge
        big = processor.image_processor(images=[Image.new("RGB", (4000, 3000))], return_tensors="pt")
        small = processor.image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")
        tokens = [int(g.prod()) // 4 for g in (big["image_grid_thw"][0], small["image_grid_thw"][0])]
        assert tokens[0] <= preset.max_image_tokens and tokens[1] == 256


def test_misspelt_processor_setting_is_an_error_not_ignored(family_dirs):
    with pytest.raises(ConfigError, match=r"max_pixel'\].*would be ignored.*max_pixels"):
        load_processor(str(family_dirs["qwen2_vl"]), "tiny-qwen", {"max_pixel": 1000})


def test_qwen_min_pixels_above_max_pixels_is_an_error(family_dirs):
    with pytest.raises(ConfigError, match="min_pixels 200704 is above max_pixels 12544"):
        load_processor(str(family_dirs["qwen2_vl"]), "tiny-qwen", {"min_pixels": 200704, "max_pixels": 12544})


def test_qwen_without_pixel_bound_warns(family_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="vlm_aug.stages.families"):
        load_processor(str(family_dirs["qwen2_vl"]), "tiny-qwen", {})
    assert "max_pixels" in caplog.text and "16,384 tokens" in caplog.text


def test_missing_family_dependency_names_the_package():
    family = Family("Demo", ("demo",), "n/a", requires=("no_such_module_xyz",))
    with pytest.raises(ModelUnavailable, match="pip install no_such_module_xyz"):
        _require_modules(family, "org/demo")


def test_run_with_qwen_preset_on_tiny_qwen_records_loaded_revision(family_dirs, tiny_clip_dir, tmp_path):
    """`vlm.preset` + a local directory of the same architecture, through `main(["run", ...])`."""
    make_shards(tmp_path / "in", n_shards=1, per_shard=4, broken=False)
    out = tmp_path / "out"
    argv = ["run", "configs/preview.yaml", "--input", str(tmp_path / "in/000000.tar"), "--output", str(out),
            "--no-progress", "--no-report", "--set", "vlm.preset=qwen2.5-vl-3b",
            *tiny_args(family_dirs["qwen2_5_vl"], tiny_clip_dir), "--set", "vlm.dtype=float32",
            "--set", "vlm.processor_kwargs={min_pixels: 3136, max_pixels: 12544}"]
    assert main(argv) == 0
    rows = pq.read_table(out / "shards/000000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["kept"] * 4
    generation = json.loads(rows[0]["provenance"])["generation"]
    assert generation["revision"].startswith("sha256:") and generation["model"] == str(family_dirs["qwen2_5_vl"])
    manifest = json.loads((out / "manifest.json").read_text())
    vlm = manifest["config"]["vlm"]
    assert vlm["preset"] == "qwen2.5-vl-3b" and vlm["batch_size"] == 16
    assert vlm["processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 12544}
