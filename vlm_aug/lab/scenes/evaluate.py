"""Quality of the scene models on fresh scenes, measured through the pipeline's own entry points.

    python -m vlm_aug.lab.scenes.evaluate --vlm vlm_aug/assets/scene_vlm --clip vlm_aug/assets/scene_clip
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from pathlib import Path

import torch

from vlm_aug.lab.scenes.shards import make_sample
from vlm_aug.lab.scenes.world import (
    ATTRIBUTES, parse_description, perturbed_description, plant_wrong_sentence, wrong_terse_caption,
)

PROMPT_ID = "scene_v1"


def fresh_samples(n: int, seed: int, wrong_fraction: float = 0.0, image_size: int = 64):
    """`n` scenes from a seed namespace that training never draws from."""
    rng = random.Random(f"scene-eval/{seed}")
    return [make_sample(rng, image_size, wrong=rng.random() < wrong_fraction) for _ in range(n)]


def generate_descriptions(vlm_dir, captions, images, batch_size: int = 64,
                          max_new_tokens: int = 72) -> list[str]:
    """Greedy rewrites via AutoProcessor + generate, prompted exactly as the pipeline does."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_aug.stages.prompts import chat_messages, load_template

    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir).eval()
    template = load_template(PROMPT_ID)
    prompts = [processor.apply_chat_template(chat_messages(template.render(c)),
                                             add_generation_prompt=True) for c in captions]
    out = []
    for i in range(0, len(prompts), batch_size):
        inputs = processor(text=prompts[i:i + batch_size],
                           images=[[im] for im in images[i:i + batch_size]],
                           padding=True, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1]:]
        out += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return out


def vlm_accuracy(vlm_dir, n: int = 300, seed: int = 987654, wrong_fraction: float = 0.25) -> dict:
    """Share of fresh scenes whose every object is named with the right colour and shape."""
    samples = fresh_samples(n, seed, wrong_fraction)
    texts = generate_descriptions(vlm_dir, [s.terse for s in samples], [s.image for s in samples])
    hits = Counter()
    for sample, text in zip(samples, texts):
        named = parse_description(text)
        truth = sample.scene.objects
        ok_cs = named is not None and (Counter((o.colour, o.shape) for o in named)
                                       == Counter((o.colour, o.shape) for o in truth))
        hits["colour_shape"] += ok_cs
        hits["exact"] += named is not None and tuple(named) == truth
        hits["unparsed"] += named is None
        if sample.terse_wrong:
            hits["wrong_total"] += 1
            hits["wrong_colour_shape"] += ok_cs
    return {
        "n": n, "seed": seed,
        "objects_colour_shape_accuracy": round(hits["colour_shape"] / n, 4),
        "exact_accuracy": round(hits["exact"] / n, 4),
        "unparsed_rate": round(hits["unparsed"] / n, 4),
        # None, not 0, when the sample holds no wrong caption: there is nothing to score
        "wrong_terse_colour_shape_accuracy": round(hits["wrong_colour_shape"] / hits["wrong_total"], 4)
        if hits["wrong_total"] else None,
        "examples": [{"terse": s.terse, "truth": s.dense, "generated": t}
                     for s, t in list(zip(samples, texts))[:3]],
    }


def _clip_scorer(clip_dir):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    model.eval()

    def score(image, texts: list[str]) -> list[float]:
        with torch.no_grad():
            img = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)
            txt = model.encode_text(tokenizer(texts), normalize=True)
        return (img @ txt.T)[0].tolist()

    return score


def clip_metrics(clip_dir, n: int = 300, seed: int = 987654) -> dict:
    """Pair accuracy by attribute, terse true-vs-wrong, and per-sentence flagging of a planted lie."""
    score = _clip_scorer(clip_dir)
    rng = random.Random(f"scene-eval-clip/{seed}")
    wins = Counter()
    for sample in fresh_samples(n, seed):
        scene = sample.scene
        negatives = [perturbed_description(scene, attr, rng) for attr in ATTRIBUTES]
        wrong_terse = wrong_terse_caption(scene, rng)[0]
        sentences, planted = plant_wrong_sentence(scene, rng)
        s = score(sample.image, [sample.dense, *negatives, sample.terse, wrong_terse, *sentences])
        for k, attr in enumerate(ATTRIBUTES):
            wins[attr] += s[0] > s[1 + k]
        wins["terse"] += s[5] > s[6]
        per_sentence = s[7:]
        wins["flagged"] += min(range(len(per_sentence)), key=per_sentence.__getitem__) == planted
    result = {"n": n, "seed": seed}
    result.update({f"pair_accuracy_{a}": round(wins[a] / n, 4) for a in ATTRIBUTES})
    result["pair_accuracy_colour_or_shape"] = round((wins["colour"] + wins["shape"]) / (2 * n), 4)
    result["terse_true_over_wrong"] = round(wins["terse"] / n, 4)
    result["planted_sentence_lowest"] = round(wins["flagged"] / n, 4)
    return result


def eval_models(vlm_dir=None, clip_dir=None, n: int = 300, seed: int = 987654) -> dict:
    """Evaluate whichever of the two scene models is given; return the metrics (printing is the caller's)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    report = {}
    if vlm_dir:
        report["vlm"] = vlm_accuracy(vlm_dir, n=n, seed=seed)
    if clip_dir:
        report["clip"] = clip_metrics(clip_dir, n=n, seed=seed)
    return report


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description="Evaluate the scene VLM and CLIP on fresh scenes.")
    parser.add_argument("--vlm", type=Path)
    parser.add_argument("--clip", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=987654)
    args = parser.parse_args(argv)
    if args.n < 1:  # (the lab does not import the commands: vlm-aug eval-scenes has the same check)
        parser.error(f"argument --n: must be at least 1, got {args.n}")
    print(json.dumps(eval_models(args.vlm, args.clip, n=args.n, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
