"""Tiny random VLMs of the real families beside Idefics3: SmolVLM2, Qwen2-VL, Qwen2.5-VL, LLaVA.

Each is built from the family's own config class and processor class, with a locally trained
BPE tokenizer that carries the family's special tokens and a chat template of the same shape as
the real one, then saved so `AutoProcessor` / `AutoModelForImageTextToText` load it exactly like
the hub checkpoint. Weights are random: these models exercise code paths, not caption quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from vlm_aug.lab.tiny import DEFAULT_CORPUS, SMOLVLM_CHAT_TEMPLATE, VLM_SPECIAL_TOKENS, build_tiny_vlm, train_bpe_tokenizer

# Qwen2-VL / Qwen2.5-VL chat template shape: a default system turn, ChatML roles, and the image
# as <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|> per image).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# llava-hf/llava-1.5 template shape: "USER: <image>\nTEXT ASSISTANT:" (images first, then text).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAVA_SPECIAL_TOKENS = ["<s>", "</s>", "<image>"]

WIDTH, HEADS, LAYERS, VOCAB = 64, 4, 2, 512


def _tokenizer(special_tokens: list[str]):
    return train_bpe_tokenizer(DEFAULT_CORPUS, VOCAB, special_tokens)


def _llama_text(tokenizer) -> dict:
    return dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=WIDTH * 2,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5)


def _save(model, processor, out_dir, eos_tokens: list[str]) -> Path:
    from transformers import GenerationConfig

    tok = processor.tokenizer
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.convert_tokens_to_ids(t) for t in eos_tokens],
        pad_token_id=tok.pad_token_id, do_sample=False)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def _qwen_text(tokenizer, model_type: str) -> dict:
    # mrope splits the rotary half-dim (head_dim / 2 = 8) over time, height and width.
    return dict(model_type=model_type, vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=WIDTH * 2,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


def build_tiny_qwen_vl(out_dir, *, version: str = "2.5", patch_size: int = 14, seed: int = 0) -> Path:
    """A tiny Qwen2-VL (`version="2"`) or Qwen2.5-VL (`"2.5"`) saved like the hub checkpoint.
    Images are resized to multiples of patch*merge (28 px, as real), 4 to 16 image tokens each."""
    import transformers as tf

    tokenizer = _tokenizer(QWEN_SPECIAL_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    factor = patch_size * 2
    size = {"shortest_edge": factor * factor * 4, "longest_edge": factor * factor * 16}
    common = dict(patch_size=patch_size, merge_size=2, temporal_patch_size=2, size=size)
    image_processor = tf.Qwen2VLImageProcessor(**common)
    video_processor = tf.Qwen2VLVideoProcessor(**common)
    if version == "2":
        vision = dict(depth=LAYERS, embed_dim=32, hidden_size=WIDTH, num_heads=HEADS, patch_size=patch_size,
                      spatial_merge_size=2, temporal_patch_size=2)
        config_cls, model_cls, proc_cls, text_type = (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration,
                                                       tf.Qwen2VLProcessor, "qwen2_vl_text")
    elif version == "2.5":
        # window attention over 2x2 merged patches, the last block full attention (as in 3B/7B)
        vision = dict(depth=LAYERS, hidden_size=32, intermediate_size=64, num_heads=HEADS, patch_size=patch_size,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=WIDTH,
                      window_size=patch_size * 2 * 2, fullatt_block_indexes=[LAYERS - 1])
        config_cls, model_cls, proc_cls, text_type = (tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration,
                                                       tf.Qwen2_5_VLProcessor, "qwen2_5_vl_text")
    else:
        raise ValueError(f"unknown Qwen-VL version {version!r}; use '2' or '2.5'")
    processor = proc_cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=QWEN_CHAT_TEMPLATE)
    config = config_cls(text_config=_qwen_text(tokenizer, text_type), vision_config=vision,
                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    return _as_hub_qwen_layout(_save(model_cls(config), processor, out_dir, ["<|im_end|>", "<|endoftext|>"]))


def _as_hub_qwen_layout(out_dir: Path) -> Path:
    """Published Qwen2-VL / Qwen2.5-VL checkpoints keep the image processor in preprocessor_config.json,
    its bounds as top-level `min_pixels` / `max_pixels` (no `size`), which transformers' image processor
    lets override a `size` given at load: written the same way, so that a preset's bounds meet the
    checkpoint's own here as on the real model."""
    processor_config = out_dir / "processor_config.json"
    config = json.loads(processor_config.read_text(encoding="utf-8"))
    image = config.pop("image_processor")
    size = image.pop("size")
    image.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2), encoding="utf-8")
    processor_config.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir


def build_tiny_llava(out_dir, *, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    """A tiny LLaVA-1.5 (CLIP vision tower + MLP projector + Llama) saved like llava-hf checkpoints."""
    import transformers as tf

    tokenizer = _tokenizer(LLAVA_SPECIAL_TOKENS)
    tokens = (image_size // patch_size) ** 2  # CLS dropped by the "default" feature selection
    image_processor = tf.CLIPImageProcessor(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=LLAVA_CHAT_TEMPLATE)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, image_size=image_size, patch_size=patch_size, projection_dim=32)
    config = tf.LlavaConfig(vision_config=vision, text_config=_llama_text(tokenizer),
                            image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=tokens,
                            vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    return _save(tf.LlavaForConditionalGeneration(config), processor, out_dir, ["</s>"])


def build_tiny_smolvlm2(out_dir, *, image_size: int = 64, patch_size: int = 8, seed: int = 0) -> Path:
    """A tiny SmolVLM2 (`smolvlm` architecture: SigLIP tower, pixel shuffle, Llama) without image splitting."""
    import transformers as tf

    tokenizer = _tokenizer([*VLM_SPECIAL_TOKENS, "<video>"])
    image_seq_len = (image_size // patch_size) ** 2 // 4  # 2x2 pixel shuffle
    sizes = dict(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size})
    processor = tf.SmolVLMProcessor(
        image_processor=tf.SmolVLMImageProcessor(do_image_splitting=False, **sizes), tokenizer=tokenizer,
        video_processor=tf.SmolVLMVideoProcessor(**sizes), image_seq_len=image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  image_size=image_size, patch_size=patch_size)
    config = tf.SmolVLMConfig(vision_config=vision, text_config=_llama_text(tokenizer), scale_factor=2,
                              image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                              pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return _save(tf.SmolVLMForConditionalGeneration(config), processor, out_dir, ["<end_of_utterance>"])


# model_type (as in the checkpoint's config.json) -> builder of a tiny model of that architecture
TINY_BUILDERS: dict[str, Callable[..., Path]] = {
    "idefics3": build_tiny_vlm,
    "smolvlm": build_tiny_smolvlm2,
    "qwen2_vl": lambda out_dir, **kw: build_tiny_qwen_vl(out_dir, version="2", **kw),
    "qwen2_5_vl": lambda out_dir, **kw: build_tiny_qwen_vl(out_dir, version="2.5", **kw),
    "llava": build_tiny_llava,
}


def tiny_clip_variant_config(architecture: str, *, image_size: int = 64, width: int = 64, layers: int = 2) -> dict:
    """open_clip's own config for `architecture` (e.g. ViT-L-14) shrunk in width, depth and image size;
    patch size, tokenizer (vocab, context length) and every other structural choice stay as released."""
    import copy

    import open_clip

    real = open_clip.get_model_config(architecture)
    if real is None or "timm_model_name" in real.get("vision_cfg", {}) or "hf_tokenizer_name" in real.get("text_cfg", {}):
        raise ValueError(f"{architecture!r} is not a plain open_clip ViT CLIP; no tiny variant is built for it")
    cfg = copy.deepcopy(real)
    heads = 4
    cfg["embed_dim"] = width
    cfg["vision_cfg"].update(image_size=image_size, layers=layers, width=width, head_width=width // heads)
    cfg["text_cfg"].update(width=width, heads=heads, layers=layers)
    return cfg


def build_tiny_clip_variant(out_dir, architecture: str, *, seed: int = 0, **size_knobs) -> Path:
    """Save a random tiny variant of an open_clip architecture in the `local-dir:` layout."""
    import open_clip

    from vlm_aug.lab.tiny import save_open_clip

    cfg = tiny_clip_variant_config(architecture, **size_knobs)
    torch.manual_seed(seed)
    return save_open_clip(open_clip.CLIP(**cfg), cfg, out_dir)
