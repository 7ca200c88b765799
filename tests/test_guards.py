"""The text guards (stages/guards.py): every case on crafted strings, and on text from real model runs:
the shipped scene VLM cut short by a small max_new_tokens, and the tiny random VLM, which rambles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_shards, tiny_args
from ray_helpers import read_tar
from vlm_aug.cli import main
from vlm_aug.lab.scenes.shards import write_scene_shards
from vlm_aug.stages.guards import guard

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a dog on a bench"
PROMPT = f"Caption: {CAPTION}\nDescribe the image in detail."
CLEAN = "A brown dog sits on a wooden bench. The park behind it is green."


@pytest.mark.parametrize("text, hit_limit, problem, flags, result", [
    ("Sure! Here is a detailed description of the image: " + CLEAN, False, None, ["preamble_stripped"], CLEAN),
    ("Certainly. " + CLEAN, False, None, ["preamble_stripped"], CLEAN),
    ("Here's a description of the image: " + CLEAN, False, None, ["preamble_stripped"], CLEAN),
    (CLEAN + " I hope this helps!", False, None, ["signoff_stripped"], CLEAN),
    (CLEAN + " Let me know if you need anything else.", False, None, ["signoff_stripped"], CLEAN),
    (CLEAN + " A squirrel climbs the", True, None, ["truncated_rewrite"], CLEAN),
    ("A brown dog sits on a wooden", True, "truncated_rewrite", ["truncated_rewrite"], ""),
    ("A dog on a bench in the park. A dog on a bench in the park.", False, "repetitive_rewrite", [], None),
    ("a red dog a red dog a red dog a red dog a red dog a red dog", False, "repetitive_rewrite", [], None),
    ("I'm sorry, but I can't describe this image.", False, "refusal", [], None),
    ("As an AI, I cannot see images.", False, "refusal", [], None),
    ("A dog on a bench.", False, "echo_rewrite", [], None),
    ("Describe the image in detail.", False, "echo_rewrite", [], None),
    (CLEAN, True, None, [], CLEAN),  # at the limit but finished: left alone
    (CLEAN, False, None, [], CLEAN),
])
def test_every_guard_on_crafted_text(text, hit_limit, problem, flags, result):
    guarded = guard(text, CAPTION, PROMPT, hit_limit)
    assert guarded.problem == problem and guarded.flags == flags
    if result is not None:
        assert guarded.text == result
    if flags:
        assert guarded.stripped and all(part in text for part in guarded.stripped)


def test_true_scene_descriptions_pass_untouched():
    from vlm_aug.lab.scenes.evaluate import fresh_samples

    for sample in fresh_samples(2000, seed=17):
        guarded = guard(sample.dense, sample.terse, PROMPT, hit_limit=False)
        assert guarded.problem is None and guarded.flags == [] and guarded.text == sample.dense


def records(out: Path) -> list[dict]:
    """Every sample's record, kept or not (the parquet's provenance column)."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted((out / "shards").glob("*.parquet")):
        found += [json.loads(row["provenance"]) for row in pq.read_table(path).to_pylist()]
    return found


def scene_records(tmp_path: Path, shards: int, seed: int, *sets: str) -> list[dict]:
    """Every record of a demo.yaml run (the shipped scene models) on fresh scene shards, with `sets`."""
    write_scene_shards(tmp_path / "in", shards, 32, seed=seed)
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/demo.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output", str(out),
                 "--no-progress", "--no-report", "--executor", "local", "--set", "report.semantic=false",
                 *[x for kv in sets for x in ("--set", kv)]]) == 0
    return records(out)


def test_scene_vlm_cut_short_keeps_complete_sentences(tmp_path, capsys):
    found = scene_records(tmp_path, 2, 99, "generation.max_new_tokens=14", "policy.name=rewrite")
    out = tmp_path / "out"
    cut = [r for r in found if "truncated_rewrite" in r["generation"]["guards"]]
    assert len(cut) >= 10, "a 14-token budget cuts the scene VLM's multi-object descriptions"
    for r in cut:
        assert r["caption_rewrite"].endswith(".") and r["generation"]["stripped"]
        assert r["generation"]["new_tokens"] >= 14
    kept = [json.loads(v) for tar in (out / "shards").glob("*.tar") for k, v in read_tar(tar).items()
            if k.endswith(".json")]
    assert kept and all(r["caption"].endswith(".") for r in kept)
    stats = [json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")]
    assert sum(s["guards"].get("truncated_rewrite", 0) for s in stats) == len(cut)
    capsys.readouterr()
    assert main(["stats", str(out), "--no-per-shard", "--no-semantic"]) == 0
    assert f"truncated_rewrite {len(cut)}" in capsys.readouterr().out


def test_tiny_random_vlm_rambles_and_the_guards_say_so(tmp_path, tiny_vlm_dir, tiny_clip_dir, capsys):
    """The share flagged per reason on a run of the tiny random VLM (printed: the issue's figure)."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=16, broken=False)
    out = tmp_path / "out"
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output", str(out),
            "--no-progress", "--no-report",
            *tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "generation.guards=true",
                       "--set", "generation.max_new_tokens=24", "--set", "policy.name=rewrite")]
    assert main(argv) == 0
    rows = []
    import pyarrow.parquet as pq

    for path in sorted((out / "shards").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    reasons = {}
    for r in rows:
        reasons[r["reason"] or "kept"] = reasons.get(r["reason"] or "kept", 0) + 1
    shares = {k: round(v / len(rows), 3) for k, v in sorted(reasons.items())}
    print(f"tiny random VLM, {len(rows)} samples, 24 new tokens: {shares}")
    flagged = sum(v for k, v in reasons.items() if k in ("truncated_rewrite", "repetitive_rewrite", "echo_rewrite",
                                                          "refusal"))
    assert flagged >= len(rows) // 2, shares  # random weights: mostly unfinished or looping text


def test_a_rewrite_cut_by_max_time_has_its_unfinished_sentence_dropped(tmp_path):
    """generation.max_time_s stops `generate` mid-sentence, but only `new_tokens >= max_new_tokens` counted as
    a cut: such rewrites were kept with an unfinished last sentence and `guards: []`. A row that ended
    without an end-of-sequence token is now cut, whatever stopped it."""
    found = scene_records(tmp_path, 1, 77, "generation.max_time_s=0.02", "generation.max_new_tokens=256")
    cut = [r for r in found if "truncated_rewrite" in r["generation"]["guards"]]
    assert cut and all(r["generation"]["new_tokens"] < 256 for r in cut)  # cut by time, not by tokens
    for r in found:
        if r["caption_rewrite"]:  # what is left of a rewrite ends a sentence
            assert r["caption_rewrite"].rstrip()[-1] in ".!?\"'", r["caption_rewrite"]
