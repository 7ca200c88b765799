"""Tiny real models built locally: an Idefics3 (SmolVLM architecture) VLM and an open_clip CLIP.

Both are saved in the exact on-disk layout of their real counterparts, so the pipeline loads
them with `AutoProcessor` / `AutoModelForImageTextToText` and `open_clip`'s `local-dir:` schema.
Tests use them randomly initialised; `scripts/train_scene_models.py` trains them on scenes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

END_OF_UTTERANCE = "<end_of_utterance>"
IM_START = "<|im_start|>"
PAD = "<pad>"
UNK = "<unk>"
# Tokens the Idefics3 processor looks up by name; <row_i_col_j> are only used with image splitting.
VLM_SPECIAL_TOKENS = [PAD, UNK, IM_START, END_OF_UTTERANCE, "<fake_token_around_image>", "<image>", "<global-img>"]

# SmolVLM's template: "<|im_start|>User:<image>TEXT<end_of_utterance>\nAssistant:"
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Used when the caller gives no corpus: enough English-ish text for a useful byte-level BPE.
DEFAULT_CORPUS = (
    "a photo of a cat sitting on a red sofa",
    "A large red circle at the top left. A small blue square at the bottom right.",
    "Describe the image. Caption: a dog on the beach",
    "two shapes on a white background, a green triangle in the middle",
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512,
                        extra_special_tokens: Iterable[str] = (), *, padding_side: str = "left"):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (specials first, pad = `<pad>`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([PAD, UNK, *extra_special_tokens]))
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()  # without it decoded text is full of 'Ġ'
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[t for t in specials if t not in (PAD, UNK)],
        padding_side=padding_side,
    )


def _vlm_config(tokenizer, image_size: int, patch_size: int, vision_width: int, vision_layers: int,
                text_width: int, text_layers: int, heads: int, max_positions: int):
    from transformers import Idefics3Config

    vision = dict(hidden_size=vision_width, intermediate_size=vision_width * 4,
                  num_hidden_layers=vision_layers, num_attention_heads=heads,
                  image_size=image_size, patch_size=patch_size)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=text_width,
                intermediate_size=text_width * 3, num_hidden_layers=text_layers,
                num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=max_positions, tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5)
    return Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=2, tie_word_embeddings=True,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )


def build_vlm_processor(tokenizer, image_size: int, image_seq_len: int):
    """An `Idefics3Processor` without image splitting: every image becomes one square of `image_size`."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=image_seq_len, chat_template=SMOLVLM_CHAT_TEMPLATE)


def build_tiny_vlm(out_dir, *, corpus: Iterable[str] = (), image_size: int = 64, seed: int = 0,
                   patch_size: int = 8, vision_width: int = 64, vision_layers: int = 2,
                   text_width: int = 64, text_layers: int = 2, heads: int = 4,
                   vocab_size: int = 512, max_positions: int = 512) -> Path:
    """Save a randomly initialised tiny Idefics3 model + processor to `out_dir`; return the path."""
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    out_dir = Path(out_dir)
    texts = list(corpus) or list(DEFAULT_CORPUS)
    tokenizer = train_bpe_tokenizer(texts, vocab_size, VLM_SPECIAL_TOKENS)
    image_seq_len = (image_size // patch_size) ** 2 // 4  # 2x2 pixel shuffle
    processor = build_vlm_processor(tokenizer, image_size, image_seq_len)
    config = _vlm_config(processor.tokenizer, image_size, patch_size, vision_width, vision_layers,
                         text_width, text_layers, heads, max_positions)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    eou = processor.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    model.generation_config = GenerationConfig(
        eos_token_id=eou, pad_token_id=processor.tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def tiny_clip_config(image_size: int = 64, *, patch_size: int = 8, vision_width: int = 64,
                     vision_layers: int = 2, text_width: int = 32, text_layers: int = 2,
                     heads: int = 4, embed_dim: int = 64, context_length: int = 32) -> dict:
    """An open_clip `model_cfg` for a tiny ViT CLIP with the packaged (49,408-token) BPE tokenizer."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": vision_layers, "width": vision_width,
                       "head_width": vision_width // heads, "patch_size": patch_size},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": heads, "layers": text_layers},
    }


def clip_preprocess_cfg() -> dict:
    """Preprocessing saved beside the tiny CLIP (plain [-1, 1] scaling, like the scene pixels)."""
    return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic", "resize_mode": "shortest"}


def save_open_clip(model, model_cfg: dict, out_dir, *, fp16: bool = True) -> Path:
    """Write `open_clip_config.json` + `open_clip_model.safetensors` (the `local-dir:` layout)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": clip_preprocess_cfg()}
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    dtype = torch.float16 if fp16 else torch.float32
    # fp16 halves the shipped size; open_clip copies it into the fp32 parameters on load.
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir


def build_tiny_clip(out_dir, *, image_size: int = 64, seed: int = 0, fp16: bool = True,
                    **size_knobs) -> Path:
    """Save a randomly initialised tiny open_clip CLIP to `out_dir`; return the path."""
    import open_clip

    model_cfg = tiny_clip_config(image_size, **size_knobs)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    return save_open_clip(model, model_cfg, out_dir, fp16=fp16)
