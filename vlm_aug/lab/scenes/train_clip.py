"""Train the scene CLIP (open_clip, tiny custom config) contrastively with attribute hard negatives."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlm_aug.lab.scenes.shards import make_sample
from vlm_aug.lab.scenes.train_vlm import lr_at, pixels_of
from vlm_aug.lab.scenes.world import (
    ATTRIBUTES, absent_object, perturbed_description, terse_caption, wrong_terse_caption,
)
from vlm_aug.lab.tiny import save_open_clip, tiny_clip_config

# A small conv tower (open_clip's ModifiedResNet): shape binding was the weak part of a patch-8 ViT.
CLIP_VISION = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32}
CLIP_SIZE = dict(text_width=64, text_layers=3, heads=4, embed_dim=64, context_length=32)


def scene_clip_config(image_size: int = 64) -> dict:
    cfg = tiny_clip_config(image_size, **CLIP_SIZE)
    cfg["vision_cfg"] = {**CLIP_VISION, "image_size": image_size}
    return cfg


def step_texts(scenes, rng: random.Random) -> list[list[str]]:
    """Per image: dense, sentence, terse, 4 perturbed denses, absent sentence, wrong terse."""
    rows = []
    for scene in scenes:
        i = rng.randrange(len(scene.objects))
        row = [" ".join(o.sentence() for o in scene.objects), scene.objects[i].sentence(),
               terse_caption(scene, rng)]
        row += [perturbed_description(scene, attr, rng) for attr in ATTRIBUTES]
        row += [absent_object(scene, rng).sentence(), wrong_terse_caption(scene, rng)[0]]
        rows.append(row)
    return rows


class WordCachedTokenizer:
    """open_clip's SimpleTokenizer, memoised per word: its BPE never merges across whitespace."""

    def __init__(self, context_length: int):
        import open_clip

        self.tok = open_clip.SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.cache: dict[str, list[int]] = {}

    def _word(self, word: str) -> list[int]:
        if word not in self.cache:
            self.cache[word] = self.tok.encode(word)
        return self.cache[word]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.tok.sot_token_id] + [i for w in text.split() for i in self._word(w)]
            ids = ids[: self.context_length - 1] + [self.tok.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * img @ txt.T
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def hard_negative_loss(img: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor):
    """Cross-entropy of each image over its own candidate texts, the true one first."""
    logits = scale * torch.einsum("bd,bkd->bk", img, candidates)
    return F.cross_entropy(logits, torch.zeros(len(img), dtype=torch.long))


def batch_loss(model, tokenizer, pixels, scenes, rng) -> torch.Tensor:
    rows = step_texts(scenes, rng)
    b, k = len(rows), len(rows[0])
    img = model.encode_image(pixels, normalize=True)
    txt = model.encode_text(tokenizer([t for row in rows for t in row]), normalize=True)
    txt = txt.view(b, k, -1)
    scale = model.logit_scale.exp().clamp(max=100)
    loss = clip_loss(img, txt[:, 0], scale)
    loss = loss + 0.5 * clip_loss(img, txt[:, 1], scale) + 0.5 * clip_loss(img, txt[:, 2], scale)
    loss = loss + hard_negative_loss(img, txt[:, [0, 3, 4, 5, 6]], scale)
    loss = loss + hard_negative_loss(img, txt[:, [1, 7]], scale)
    return loss + 0.5 * hard_negative_loss(img, txt[:, [2, 8]], scale)


def train_clip(out_dir, *, minutes: float, seed: int = 0, image_size: int = 64,
               n_train: int = 20000, batch_size: int = 64, peak_lr: float = 1e-3, warmup: int = 50,
               log=print) -> dict:
    """Train the scene CLIP for `minutes`, save it (fp16) to `out_dir`; return the training record."""
    import open_clip

    model_cfg = scene_clip_config(image_size)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    tokenizer = WordCachedTokenizer(model_cfg["text_cfg"]["context_length"])
    rng = random.Random(f"scene-clip-train/{seed}")
    t0 = time.time()
    samples = [make_sample(rng, image_size) for _ in range(n_train)]
    scenes = [s.scene for s in samples]
    pixels = pixels_of([s.image for s in samples]).squeeze(1)
    del samples
    log(f"clip: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"{n_train} samples prepared in {time.time() - t0:.0f}s")
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.05)
    losses, step, start = [], 0, time.time()
    model.train()
    while (elapsed := time.time() - start) < minutes * 60:
        for group in opt.param_groups:
            group["lr"] = lr_at(elapsed / (minutes * 60), step, peak_lr, warmup)
        index = [rng.randrange(n_train) for _ in range(batch_size)]
        loss = batch_loss(model, tokenizer, pixels[index], [scenes[i] for i in index], rng)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        if step % 20 == 0:
            log(f"clip step {step} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                f"{elapsed:.0f}s")
        step += 1
    model.eval()
    save_open_clip(model, model_cfg, Path(out_dir), fp16=True)
    return {"model": "open_clip", "model_cfg": model_cfg, "seed": seed, "steps": step,
            "batch_size": batch_size, "peak_lr": peak_lr, "warmup_steps": warmup,
            "train_samples": n_train, "image_size": image_size, "storage_dtype": "float16",
            "train_seconds": round(time.time() - start, 1), "loss_curve": losses[::10]}
