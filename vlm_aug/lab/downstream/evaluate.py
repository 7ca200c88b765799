"""Held-out evaluation of a trained checkpoint: image-text retrieval both ways, zero-shot accuracy.

Retrieval treats identical captions as one text: an image is right when its caption's text is in
the top k, a text when any image with that caption is. With unique captions and no tied scores
this is exactly open_clip_train's own `get_clip_metrics` (the tests check it against the
trainer's log); open_clip_train breaks ties by position, we count them as misses. Zero-shot
counts a tie for the top score as a miss too.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Optional

import torch
from PIL import Image

from vlm_aug.lab.downstream import DownstreamError
from vlm_aug.lab.downstream.models import ModelChoice, register

KS = (1, 5, 10)


@dataclass
class HeldOut:
    images: list = field(default_factory=list)  # PIL images
    captions: list[str] = field(default_factory=list)
    labels: list[Optional[str]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict:
        labelled = [x for x in self.labels if x is not None]
        return {"samples": len(self.captions), "unique_captions": len(set(self.captions)),
                "labelled": len(labelled), "classes": len(set(labelled)), "skipped": self.skipped}


def _label(meta: Optional[str], label_field: Optional[str]) -> Optional[str]:
    if not label_field or not meta:
        return None
    value = json.loads(meta).get(label_field) if meta.lstrip().startswith("{") else None
    return None if value is None else str(value)


def load_heldout(urls: list[str], caption_key: str = "txt", label_field: Optional[str] = None,
                 max_samples: Optional[int] = None) -> HeldOut:
    """Images, captions and optional class labels (`label_field` of each sample's json)."""
    from vlm_aug.formats import IMAGE_EXTS
    from vlm_aug.shards.read import ShardReader

    held = HeldOut()
    for url in urls:
        reader = ShardReader(url, caption_key, list(IMAGE_EXTS), 64 * 1024 * 1024)
        for sample in reader:
            reason = sample.reason if not sample.active else None
            if reason is None:
                try:
                    image = Image.open(io.BytesIO(sample.image_bytes)).convert("RGB")
                except Exception:  # a broken held-out image is skipped and counted, never fatal
                    reason = "undecodable_image"
            if reason:
                held.skipped[reason] = held.skipped.get(reason, 0) + 1
                continue
            held.images.append(image)
            held.captions.append(sample.caption_orig)
            held.labels.append(_label(sample.orig_json, label_field))
            if max_samples and len(held.captions) >= max_samples:
                return held
        if reader.report.error:
            held.skipped["shard_read_error"] = held.skipped.get("shard_read_error", 0) + 1
    if len(held.captions) < 2:
        raise DownstreamError(f"held-out shards {urls[:3]} give {len(held.captions)} usable samples "
                              f"(skipped: {held.skipped}); retrieval needs at least 2")
    return held


def load_checkpoint(choice: ModelChoice, checkpoint: str):
    """The trained open_clip model (eval mode) and its validation preprocessing and tokenizer."""
    import open_clip

    register(choice)
    model, _, preprocess = open_clip.create_model_and_transforms(choice.name, pretrained=None)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval(), preprocess, open_clip.get_tokenizer(choice.name)


@torch.inference_mode()
def embed_images(model, preprocess, images, batch_size: int = 256) -> torch.Tensor:
    chunks = [torch.stack([preprocess(im) for im in images[i:i + batch_size]])
              for i in range(0, len(images), batch_size)]
    return torch.cat([model.encode_image(c, normalize=True) for c in chunks])


@torch.inference_mode()
def embed_texts(model, tokenizer, texts, batch_size: int = 512) -> torch.Tensor:
    chunks = [tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat([model.encode_text(c, normalize=True) for c in chunks])


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, caption_index: torch.Tensor) -> dict:
    """R@k both ways; `txt` holds unique texts, `caption_index[i]` is image i's text. A tie
    counts against the right answer, so a collapsed model (all embeddings equal) scores 0."""
    sims = img @ txt.T  # (images, texts)
    positives = torch.zeros_like(sims, dtype=torch.bool)
    positives[torch.arange(len(img)), caption_index] = True
    own = sims.gather(1, caption_index[:, None])
    i2t_rank = ((sims >= own) & ~positives).sum(1)  # wrong texts scoring at least the right one
    best_pos = sims.masked_fill(~positives, float("-inf")).max(0).values  # per text
    t2i_rank = ((sims >= best_pos[None, :]) & ~positives).sum(0)
    out = {}
    for name, rank in (("image_to_text", i2t_rank), ("text_to_image", t2i_rank)):
        for k in KS:
            out[f"{name}_R@{k}"] = round((rank < k).float().mean().item(), 6)
        out[f"{name}_mean_rank"] = round(rank.float().mean().item() + 1, 4)
    out["mean_R@1"] = round((out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2, 6)
    out["mean_R@5"] = round((out["image_to_text_R@5"] + out["text_to_image_R@5"]) / 2, 6)
    return out


def zero_shot(model, tokenizer, img: torch.Tensor, labels, templates: list[str]) -> Optional[dict]:
    """Top-1 accuracy over the distinct labels, each class text an average over `templates`. A sample
    is right only when its class scores strictly above every other class: a tie for the top counts as
    a miss (as in `retrieval_metrics`), so a collapsed model scores 0, not its first class's share."""
    index = [i for i, label in enumerate(labels) if label is not None]
    classes = sorted({labels[i] for i in index})
    if len(classes) < 2:
        return None
    heads = []
    for name in classes:
        emb = embed_texts(model, tokenizer, [t.format(name) for t in templates]).mean(0)
        heads.append(emb / emb.norm())
    scores = img[index] @ torch.stack(heads).T  # (samples, classes)
    truth = torch.tensor([classes.index(labels[i]) for i in index])
    own = scores.gather(1, truth[:, None])
    others = torch.ones_like(scores, dtype=torch.bool)
    others[torch.arange(len(index)), truth] = False
    right = ~((scores >= own) & others).any(1)  # no other class scores at least the true one
    return {"zero_shot_top1": round(right.float().mean().item(), 6),
            "zero_shot_classes": len(classes), "zero_shot_samples": len(index)}


def evaluate(choice: ModelChoice, checkpoint: str, held: HeldOut, templates: list[str]) -> dict:
    """All held-out metrics of one trained checkpoint."""
    model, preprocess, tokenizer = load_checkpoint(choice, checkpoint)
    texts = sorted(set(held.captions))
    position = {t: i for i, t in enumerate(texts)}
    img = embed_images(model, preprocess, held.images)
    txt = embed_texts(model, tokenizer, texts)
    metrics = retrieval_metrics(img, txt, torch.tensor([position[c] for c in held.captions]))
    metrics.update(zero_shot(model, tokenizer, img, held.labels, templates) or {})
    return metrics
