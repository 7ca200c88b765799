"""Score: CLIP cosine of the image with the original caption, the rewrite, and
each sentence of the rewrite (dense rewrites exceed CLIP's context). Decides nothing."""

from __future__ import annotations

import torch

from vlm_aug.config import CLIPConfig, RepairConfig
from vlm_aug.sample import Repair, Sample
from vlm_aug.stages.base import Resources
from vlm_aug.stages.models import locate_clip, resolve_device
from vlm_aug.text import join_sentences, split_sentences


class ScoreStage:
    name = "score"
    section = "scoring"  # the record section its description fills
    uses_model = True

    def __init__(self, clip: CLIPConfig, repair: RepairConfig | None = None):
        self.clip = clip
        self.repair = repair if repair is not None and repair.drop_sentences_below is not None else None
        self.resources = Resources.for_device(clip.device)  # shares the worker's GPU with the VLM
        self.model = None

    def setup(self) -> None:
        import open_clip

        name, pretrained, self.revision = locate_clip(self.clip.model, self.clip.pretrained)
        self.device = resolve_device(self.clip.device)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    def describe(self) -> dict:
        # device and batch size: where and how scores were computed (a batch of another size may move a
        # cosine in its 6th decimal, so the record names them; neither is in the settings' fingerprint)
        described = {"model": self.clip.model, "pretrained": self.clip.pretrained, "revision": self.revision,
                     "context_length": int(getattr(self.tokenizer, "context_length", 77)),
                     "device": str(self.device), "batch_size": self.clip.batch_size}
        if self.repair is not None:  # only when on: records of runs without it keep their exact keys
            described["repair"] = {"drop_sentences_below": self.repair.drop_sentences_below,
                                   "min_sentences": self.repair.min_sentences}
        return described

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.clip.batch_size * 4):
            tokens = self.tokenizer(texts[start:start + self.clip.batch_size * 4]).to(self.device)
            chunks.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(chunks) if chunks else torch.empty(0)

    def prepare(self, samples: list[Sample], pool=None) -> None:
        """CLIP's preprocessing of each active sample's image (resize, crop, normalise), made ahead."""
        todo = [s for s in samples if s.active and s.image is not None]
        for sample, pixels in zip(todo, (pool.map if pool else map)(self.preprocess, [s.image for s in todo])):
            sample.prepared[self.name] = pixels

    @torch.inference_mode()
    def encode_images(self, images, pixels: list | None = None) -> torch.Tensor:
        """Normalised image embeddings; `pixels[i]`: image i already preprocessed (or None)."""
        pixels = pixels or [None] * len(images)
        chunks = []
        for start in range(0, len(images), self.clip.batch_size):
            stop = start + self.clip.batch_size
            batch = torch.stack([p if p is not None else self.preprocess(im)
                                 for im, p in zip(images[start:stop], pixels[start:stop])])
            chunks.append(self.model.encode_image(batch.to(self.device), normalize=True).float())
        return torch.cat(chunks)

    def _score_texts(self, active: list[Sample], image_emb: torch.Tensor, items: list[tuple[int, str]]) -> list[float]:
        """Cosines of (sample index, text) pairs."""
        if not items:
            return []
        text_emb = self.encode_texts([text for _, text in items])
        return [round(float(v), 6) for v in (text_emb * image_emb[[i for i, _ in items]]).sum(-1).tolist()]

    def _best_of_n(self, active: list[Sample], image_emb: torch.Tensor) -> None:
        """generation.n > 1: score every candidate; the rewrite is the best one the guards let through."""
        items = [(i, c["text"]) for i, s in enumerate(active) for c in s.generation.candidates if c["text"]]
        cosines = iter(self._score_texts(active, image_emb, items))
        for sample in active:
            candidates = sample.generation.candidates
            if not candidates:
                continue
            for c in candidates:
                c["clip"] = next(cosines) if c["text"] else None
            usable = [c for c in candidates if c["clip"] is not None and not c["problem"]] or candidates
            best = max(usable, key=lambda c: -2.0 if c["clip"] is None else c["clip"])
            sample.caption_rewrite = best["text"]
            g = sample.generation
            g.new_tokens, g.guards, g.stripped, g.guard_problem = (best["new_tokens"], best["guards"],
                                                                   best["stripped"], best["problem"])

    def _extra_captions(self, active: list[Sample], image_emb: torch.Tensor) -> None:
        items = [(i, c["text"]) for i, s in enumerate(active) for c in s.generation.captions.values() if c["text"]]
        cosines = iter(self._score_texts(active, image_emb, items))
        for sample in active:
            for c in sample.generation.captions.values():
                c["clip"] = next(cosines) if c["text"] else None

    def process_batch(self, samples: list[Sample]) -> None:
        active = [s for s in samples if s.active]
        if not active:
            return
        image_emb = self.encode_images([s.image for s in active], [s.prepared.pop(self.name, None) for s in active])
        self._best_of_n(active, image_emb)
        self._extra_captions(active, image_emb)
        texts, owners = [], []  # owners[i] = (sample index, slot) for texts[i]
        for i, sample in enumerate(active):
            texts.append(sample.caption_orig)
            owners.append((i, "orig"))
            if sample.caption_rewrite:
                texts.append(sample.caption_rewrite)
                owners.append((i, "rewrite"))
                for sentence in split_sentences(sample.caption_rewrite):
                    texts.append(sentence)
                    owners.append((i, "sentence"))
        text_emb = self.encode_texts(texts)
        cosines = (text_emb * image_emb[[i for i, _ in owners]]).sum(-1).tolist()
        for sample in active:
            sample.scores = {"clip_orig": None, "clip_rewrite": None, "clip_sentences": []}
        for (i, slot), cos in zip(owners, cosines):
            scores = active[i].scores
            if slot == "sentence":
                scores["clip_sentences"].append(round(cos, 6))
            else:
                scores[f"clip_{slot}"] = round(cos, 6)
        if self.repair is not None:
            self._repair(active, image_emb)

    def _repair(self, active: list[Sample], image_emb: torch.Tensor) -> None:
        """Drop the sentences under policy.repair.drop_sentences_below; score what is left as a whole."""
        threshold, todo = self.repair.drop_sentences_below, []
        for i, sample in enumerate(active):
            sample.repair = Repair()
            if not sample.caption_rewrite:
                continue
            sentences = split_sentences(sample.caption_rewrite)
            cosines = sample.scores["clip_sentences"]
            keep = [s for s, c in zip(sentences, cosines) if c >= threshold]
            if len(keep) == len(sentences):
                continue
            sample.repair.dropped = [{"sentence": s, "cosine": c} for s, c in zip(sentences, cosines) if c < threshold]
            if len(keep) < self.repair.min_sentences:
                sample.repair.problem = "low_clip_sentences"
                continue
            sample.repair.text = join_sentences(keep)
            todo.append(i)
        if todo:
            text_emb = self.encode_texts([active[i].repair.text for i in todo])
            for row, i in enumerate(todo):
                active[i].scores["clip_repaired"] = round(float(text_emb[row] @ image_emb[i]), 6)
