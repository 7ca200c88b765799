"""The tiny models load through the same entry points the pipeline uses for real ones."""

import torch
from PIL import Image

from vlm_aug.stages.prompts import chat_messages, load_template
from vlm_aug.lab.tiny import END_OF_UTTERANCE, train_bpe_tokenizer

SIZES = [(40, 70), (64, 64), (200, 100)]
CAPTIONS = ["a red shape", "two shapes on a long line of caption text", "circle"]


def _images():
    return [Image.new("RGB", size, (30 * i, 200, 90)) for i, size in enumerate(SIZES)]


def test_bpe_tokenizer_round_trips_text():
    tok = train_bpe_tokenizer(["A large red circle at the top left."] * 3, 300, ["<x>"])
    ids = tok("A large red circle.<x>")["input_ids"]
    assert tok.decode(ids) == "A large red circle.<x>"
    assert tok.decode(ids, skip_special_tokens=True) == "A large red circle."
    assert tok.padding_side == "left"


def test_tiny_vlm_batched_generate(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    template = load_template("scene_v1")
    prompts = [
        processor.apply_chat_template(chat_messages(template.render(c)), add_generation_prompt=True)
        for c in CAPTIONS
    ]
    assert prompts[0].startswith("<|im_start|>User:<image>Caption: a red shape")
    assert prompts[0].endswith("<end_of_utterance>\nAssistant:")
    inputs = processor(text=prompts, images=[[im] for im in _images()], padding=True,
                       return_tensors="pt")
    assert inputs["attention_mask"][:, -1].all()  # left padding: every row ends with real tokens
    assert not inputs["attention_mask"][:, 0].all()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6)
    new = out[:, inputs["input_ids"].shape[1]:]
    texts = processor.batch_decode(new, skip_special_tokens=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert "Ġ" not in "".join(texts)
    eou = processor.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    assert model.generation_config.eos_token_id == eou
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id


def test_tiny_vlm_stops_at_end_of_utterance(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    eou = processor.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
    with torch.no_grad():  # make <end_of_utterance> the only likely next token
        model.lm_head.weight.zero_()
        model.lm_head.weight[eou] = 1.0
    prompt = processor.apply_chat_template(chat_messages("x"), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[_images()[0]]], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 1


def test_tiny_clip_encodes_normalized(tiny_clip_dir):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip_dir}")
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    pixels = torch.stack([preprocess(im) for im in _images()])
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokenizer(CAPTIONS), normalize=True)
    assert img.shape == (3, txt.shape[1]) and txt.shape[0] == 3
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-4)
