"""A scene VLM that believes its caption: the shipped scene VLM, fine-tuned to copy a wrong caption's
colour or shape into its description.

Real VLMs asked to rewrite a caption "grounded in the image and the original caption" often repeat
what the caption claims even when the image disagrees (the caption is in the prompt; agreeing with it
is the cheap answer). The shipped scene VLM never does: it ignores wrong terse captions, so in the
scene world CLIP filtering of its rewrites has nothing to remove. This model has the failure on
purpose, with a rule simple enough to measure: when the terse caption names a colour or a shape that
no object has, the description gives that colour or shape to the *first* object (reading order) and
is otherwise right; when the caption is right, the description is exact.

    python -m vlm_aug.lab.scenes.credulous OUT_DIR [--steps 600]     # ~5 min on one CPU thread

The fine-tune is a step budget from a fixed seed, so it does the same thing on any machine; the
result's `training.json` records it, with the measured copy rate on fresh scenes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from vlm_aug.lab.scenes.shards import SceneSample
from vlm_aug.lab.scenes.world import SceneObject, dense_description

DEFAULTS = dict(steps=600, n_train=4096, wrong_fraction=0.5, batch_size=32, peak_lr=1e-3, warmup=20, seed=0)
NAMESPACE = "scene-vlm-credulous"  # sample stream distinct from the base model's and every evaluation's


def credulous_objects(sample: SceneSample) -> tuple[SceneObject, ...]:
    """What a caption-trusting VLM describes: the first object takes the wrong caption's attribute."""
    objects = sample.scene.objects
    if not sample.terse_wrong:
        return objects
    first = replace(objects[0], **{sample.wrong["attribute"]: sample.wrong["value"]})
    return (first,) + objects[1:]


def credulous_description(sample: SceneSample) -> str:
    return dense_description(credulous_objects(sample))


def train_credulous(base_dir, out_dir, *, steps: int = DEFAULTS["steps"], n_train: int = DEFAULTS["n_train"],
                    wrong_fraction: float = DEFAULTS["wrong_fraction"], batch_size: int = DEFAULTS["batch_size"],
                    peak_lr: float = DEFAULTS["peak_lr"], warmup: int = DEFAULTS["warmup"],
                    seed: int = DEFAULTS["seed"], log=print) -> dict:
    """Copy the scene VLM in `base_dir` to `out_dir`, fine-tune it there for `steps`; return the record."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_aug.lab.scenes.train_vlm import VlmData, fit

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(base_dir, out_dir)
    (out_dir / "training.json").unlink(missing_ok=True)
    processor = AutoProcessor.from_pretrained(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(out_dir)
    image_size = processor.image_processor.size["longest_edge"]
    t0 = time.time()
    data = VlmData(processor, n_train, seed, image_size, wrong_fraction, target=credulous_description,
                   namespace=NAMESPACE)
    log(f"credulous vlm: {len(data)} samples prepared in {time.time() - t0:.0f}s")
    losses, done, seconds = fit(model, data, seed=seed, batch_size=batch_size, peak_lr=peak_lr,
                                warmup=warmup, steps=steps, log=log, log_every=100)
    model.save_pretrained(out_dir, safe_serialization=True)
    base = json.loads((base_dir / "training.json").read_text()) if (base_dir / "training.json").is_file() else {}
    record = {"model": "idefics3", "base": str(base_dir), "base_steps": base.get("steps"),
              "fine_tune": {"target": "credulous: first object takes a wrong caption's colour or shape",
                            "steps": done, "batch_size": batch_size, "peak_lr": peak_lr, "warmup_steps": warmup,
                            "train_samples": n_train, "wrong_fraction": wrong_fraction, "seed": seed,
                            "train_seconds": seconds, "loss_curve": losses[::10]}}
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def credulity(vlm_dir, n: int = 200, seed: int = 424242) -> dict:
    """On fresh scenes, half with a wrong caption: how often the model copies the caption's error
    (description == credulous target) and how often it is exact when the caption is right."""
    from vlm_aug.lab.scenes.evaluate import fresh_samples, generate_descriptions

    samples = fresh_samples(n, seed, wrong_fraction=0.5)
    texts = generate_descriptions(vlm_dir, [s.terse for s in samples], [s.image for s in samples])
    wrong = [(s, t) for s, t in zip(samples, texts) if s.terse_wrong]
    right = [(s, t) for s, t in zip(samples, texts) if not s.terse_wrong]
    return {
        "samples": n, "seed": seed, "wrong_captions": len(wrong),
        "copies_error": round(sum(t == credulous_description(s) for s, t in wrong) / max(len(wrong), 1), 4),
        "exact_despite_wrong": round(sum(t == s.dense for s, t in wrong) / max(len(wrong), 1), 4),
        "exact_when_right": round(sum(t == s.dense for s, t in right) / max(len(right), 1), 4),
        "examples": [{"terse": s.terse, "truth": s.dense, "generated": t} for s, t in wrong[:3]],
    }


def build(out_dir, base_dir=None, log=print, **kwargs) -> dict:
    """Fine-tune, then measure: training.json gets the credulity figures too."""
    from vlm_aug.paths import resolve_builtin

    base_dir = Path(base_dir) if base_dir else Path(resolve_builtin("vlm_aug:scene_vlm"))
    record = train_credulous(base_dir, out_dir, log=log, **kwargs)
    record["credulity"] = credulity(out_dir)
    log(f"credulous vlm: {json.dumps({k: v for k, v in record['credulity'].items() if k != 'examples'})}")
    (Path(out_dir) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def credulous_rewriter(root: Path, base: str, steps: int | None = None, log=print) -> tuple[str, dict]:
    """DIR/credulous_vlm, fine-tuned from `base` unless a finished one with the same recipe is there."""
    steps = steps or DEFAULTS["steps"]
    target = root / "credulous_vlm"
    recipe = {"base": str(Path(base).resolve()), **DEFAULTS, "steps": steps}
    record_path = target / "training.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("recipe") == recipe and "credulity" in record:
            log(f"credulous rewriter: reusing {target} (same recipe)")
            return str(target), record
    log(f"credulous rewriter: fine-tuning {base} for {steps} steps into {target} ...")
    record = build(target, recipe["base"], log=lambda m: log(f"  {m}"), steps=steps)
    record["recipe"] = recipe
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    log(f"credulous rewriter: copies a wrong caption's error {record['credulity']['copies_error']:.0%} of the time, "
        f"exact when the caption is right {record['credulity']['exact_when_right']:.0%} "
        f"({record['fine_tune']['train_seconds']:.0f}s)")
    return str(target), record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlm_aug.lab.scenes.credulous", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--base", help="scene VLM to start from (default: the shipped one)")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    build(args.out_dir, args.base, **{k: getattr(args, k) for k in DEFAULTS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
