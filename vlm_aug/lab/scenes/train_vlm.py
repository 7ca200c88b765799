"""Train the scene VLM (tiny Idefics3) from scratch, prompted exactly as the pipeline prompts a VLM."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from vlm_aug.lab.scenes.shards import make_sample
from vlm_aug.lab.scenes.world import COLOURS, POSITIONS, SHAPES, SIZES
from vlm_aug.lab.tiny import END_OF_UTTERANCE, build_tiny_vlm
from vlm_aug.stages.prompts import chat_messages, load_template

PROMPT_ID = "scene_v1"
VLM_SIZE = dict(patch_size=8, vision_width=128, vision_layers=3, text_width=192, text_layers=3,
                heads=4, vocab_size=400, max_positions=256)


def tokenizer_corpus(n: int = 3000, seed: int = 12345) -> list[str]:
    """Scene texts plus the prompt template: what the scene tokenizer must encode compactly."""
    rng = random.Random(seed)
    texts = [load_template(PROMPT_ID).text, "User: Assistant:", " ".join(POSITIONS)]
    texts += [" ".join(words) for words in (SHAPES, tuple(COLOURS), SIZES)]
    for _ in range(n):
        s = make_sample(rng, 16, wrong=rng.random() < 0.3)
        texts += [s.terse, " " + s.dense]
    return texts


def pixels_of(images) -> torch.Tensor:
    """The Idefics3 processor's pixel values for square images already at its size: x/127.5 - 1."""
    arrays = [torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8) for im in images]
    size = images[0].size[0]
    x = torch.stack(arrays).view(len(images), size, size, 3).permute(0, 3, 1, 2).float()
    return (x / 127.5 - 1.0).unsqueeze(1)  # (B, 1 image, 3, H, W)


class VlmData:
    """Pre-rendered training samples tokenised as prompt + dense target, prompt masked out."""

    def __init__(self, processor, n: int, seed: int, image_size: int, wrong_fraction: float = 0.25,
                 target=lambda sample: sample.dense, namespace: str = "scene-vlm-train"):
        rng = random.Random(f"{namespace}/{seed}")
        samples = [make_sample(rng, image_size, wrong=rng.random() < wrong_fraction) for _ in range(n)]
        self.pixels = ((pixels_of([s.image for s in samples]) + 1) * 127.5).round().to(torch.uint8)
        tok, template = processor.tokenizer, load_template(PROMPT_ID)
        image_text = ("<fake_token_around_image><global-img>" + "<image>" * processor.image_seq_len
                      + "<fake_token_around_image>")
        prompts = [processor.apply_chat_template(chat_messages(template.render(s.terse)),
                                                 add_generation_prompt=True) for s in samples]
        expanded = [p.replace("<image>", image_text) for p in prompts]
        prompt_ids = tok(expanded, add_special_tokens=False)["input_ids"]
        full_ids = tok([e + " " + target(s) + END_OF_UTTERANCE for e, s in zip(expanded, samples)],
                       add_special_tokens=False)["input_ids"]
        self.ids, self.n_prompt = full_ids, [len(p) for p in prompt_ids]
        assert all(f[:k] == p for f, p, k in zip(full_ids[:50], prompt_ids, self.n_prompt))
        self.pad_id = tok.pad_token_id

    def __len__(self):
        return len(self.ids)

    def batch(self, index: list[int]) -> dict:
        width = max(len(self.ids[i]) for i in index)
        input_ids = torch.full((len(index), width), self.pad_id)
        labels = torch.full((len(index), width), -100)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            ids = torch.tensor(self.ids[i])
            input_ids[row, :len(ids)], mask[row, :len(ids)] = ids, 1
            labels[row, self.n_prompt[i]:len(ids)] = ids[self.n_prompt[i]:]
        pixels = self.pixels[index].float() / 127.5 - 1.0
        return dict(input_ids=input_ids, attention_mask=mask, labels=labels, pixel_values=pixels)


def lr_at(progress: float, step: int, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay over the time budget."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def fit(model, data: VlmData, *, seed: int, batch_size: int, peak_lr: float, warmup: int,
        minutes: float | None = None, steps: int | None = None, log=print,
        log_every: int = 20) -> tuple[list[float], int, float]:
    """AdamW on random batches of `data` for a time budget (`minutes`) or a step budget (`steps`,
    reproducible whatever the machine's load); cosine decay over the budget. Returns the losses,
    the number of steps and the seconds taken."""
    if (minutes is None) == (steps is None):
        raise ValueError("give exactly one of minutes and steps")
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(seed)
    losses, step, start = [], 0, time.time()
    model.train()
    while True:
        elapsed = time.time() - start
        progress = elapsed / (minutes * 60) if minutes is not None else step / steps
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, step, peak_lr, warmup)
        index = torch.randint(len(data), (batch_size,), generator=gen).tolist()
        loss = model(**data.batch(index)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        if step % log_every == 0:
            log(f"vlm step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} {elapsed:.0f}s")
        step += 1
    model.eval()
    return losses, step, round(time.time() - start, 1)


def train_vlm(out_dir, *, minutes: float, seed: int = 0, image_size: int = 64, n_train: int = 30000,
              batch_size: int = 64, peak_lr: float = 1.5e-3, warmup: int = 60, log=print) -> dict:
    """Build the scene VLM in `out_dir`, train it for `minutes`, save it; return the training record."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out_dir = Path(out_dir)
    build_tiny_vlm(out_dir, corpus=tokenizer_corpus(), image_size=image_size, seed=seed, **VLM_SIZE)
    processor = AutoProcessor.from_pretrained(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(out_dir)
    t0 = time.time()
    data = VlmData(processor, n_train, seed, image_size)
    log(f"vlm: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"{len(data)} samples prepared in {time.time() - t0:.0f}s")
    losses, step, seconds = fit(model, data, seed=seed, batch_size=batch_size, peak_lr=peak_lr, warmup=warmup,
                                minutes=minutes, log=log)
    model.save_pretrained(out_dir, safe_serialization=True)
    return {"model": "idefics3", "prompt_template": PROMPT_ID, "seed": seed, "steps": step,
            "batch_size": batch_size, "peak_lr": peak_lr, "warmup_steps": warmup,
            "train_samples": n_train, "image_size": image_size, "size": VLM_SIZE,
            "train_seconds": seconds, "loss_curve": losses[::10]}
