"""Several captions per image (generation.captions) and best of n (generation.n), through the real
pipeline with the shipped scene models; the extra members load in the consumers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_helpers import read_tar
from vlm_aug.cli import main
from vlm_aug.config import ConfigError, load_config
from vlm_aug.lab.scenes.shards import write_scene_shards
from vlm_aug.stages.base import derive_seed

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo.yaml")


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="do_sample"):
        load_config(DEMO, ["generation.n=4"])
    with pytest.raises(ConfigError, match="identifier other than"):
        load_config(DEMO, ["generation.captions=[{name: orig, prompt: short_v1}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(DEMO, ["generation.captions=[{name: a, prompt: short_v1}, {name: a, prompt: scene_v1}]"])


@pytest.fixture(scope="module")
def best_of_4(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    write_scene_shards(root / "in", 2, 24, seed=808, wrong_fraction=0.2)
    out = root / "out"
    assert main(["run", DEMO, "--input", str(root / "in/*.tar"), "--output", str(out), "--no-progress", "--no-report",
                 "--executor", "local", "--set", "report.semantic=false", "--set", "generation.do_sample=true",
                 "--set", "generation.temperature=2.0", "--set", "generation.n=4",
                 "--set", "generation.captions=[{name: short, prompt: short_v1}]"]) == 0
    return out


def records(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {row["key"]: json.loads(row["provenance"]) for path in sorted((out / "shards").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()}


def test_best_of_n_keeps_the_highest_cosine_and_records_every_candidate(best_of_4):
    found = records(best_of_4)
    differed = 0
    for record in found.values():
        g = record["generation"]
        candidates = g["candidates"]
        assert len(candidates) == 4 and g["params"]["n"] == 4
        assert candidates[0]["seed"] == g["seed"] and len({c["seed"] for c in candidates}) == 4
        shard = record["source"]["shard"].rsplit("/", 1)[-1]
        assert candidates[1]["seed"] == derive_seed(0, shard, record["source"]["key"], "candidate:1")
        usable = [c for c in candidates if c["clip"] is not None and not c["problem"]]
        best = max(usable, key=lambda c: c["clip"])
        assert record["caption_rewrite"] == best["text"] and record["scoring"]["clip_rewrite"] == pytest.approx(
            best["clip"], abs=1e-5)
        differed += len({c["text"] for c in candidates}) > 1
    assert differed >= len(found) // 2  # at temperature 2 the candidates differ: the choice is real


def test_extra_caption_is_made_with_its_own_prompt_and_scored_on_its_own_text(tmp_path):
    """Greedy, an extra caption is what the main caption would be under the extra's prompt (a run with
    generation.prompt: short_v1 makes the same texts), and its clip is the scene CLIP's cosine of that text."""
    import io

    import torch
    from PIL import Image

    from vlm_aug.config import CLIPConfig
    from vlm_aug.stages.score import ScoreStage

    write_scene_shards(tmp_path / "in", 1, 16, seed=809, wrong_fraction=0.2)
    common = ["--input", str(tmp_path / "in/*.tar"), "--no-progress", "--no-report", "--executor", "local",
              "--set", "report.semantic=false"]
    assert main(["run", DEMO, "--output", str(tmp_path / "both"), *common,
                 "--set", "generation.captions=[{name: short, prompt: short_v1}]"]) == 0
    assert main(["run", DEMO, "--output", str(tmp_path / "short"), *common, "--set", "generation.prompt=short_v1"]) == 0
    both, short = records(tmp_path / "both"), records(tmp_path / "short")
    extra = {k: r["generation"]["captions"]["short"] for k, r in both.items() if r["status"] != "error"}
    assert extra and {k: e["text"] for k, e in extra.items()} == {k: short[k]["caption_rewrite"] for k in extra}
    assert sum(e["text"] != both[k]["caption_rewrite"] for k, e in extra.items()) >= len(extra) // 2  # another prompt
    members = read_tar(tmp_path / "both/shards/000000.tar")
    stage = ScoreStage(CLIPConfig(model="vlm_aug:scene_clip", pretrained=None, device="cpu"))
    stage.setup()
    scored = 0
    for key, e in extra.items():
        if not e["text"] or f"{key}.png" not in members:
            continue
        image = Image.open(io.BytesIO(members[f"{key}.png"])).convert("RGB")
        with torch.no_grad():
            image_emb = stage.model.encode_image(stage.preprocess(image)[None], normalize=True)
            text_emb = stage.model.encode_text(stage.tokenizer([e["text"]]), normalize=True)
        assert e["clip"] == pytest.approx((text_emb @ image_emb.T).item(), abs=1e-5), key
        scored += 1
    assert scored >= len(extra) // 2


def test_extra_caption_is_its_own_member_and_consumers_load_it(best_of_4, tmp_path):
    found = records(best_of_4)
    members = {}
    for tar in sorted((best_of_4 / "shards").glob("*.tar")):
        members.update(read_tar(tar))
    kept = [k for k, r in found.items() if r["status"] == "kept"]
    assert kept
    for key in kept:
        extra = found[key]["generation"]["captions"]["short"]
        assert extra["prompt_id"] == "short_v1" and (extra["clip"] is not None) == bool(extra["text"])
        usable = extra["text"] if extra["text"] and not extra["problem"] else ""
        assert members[f"{key}.short.txt"].decode() == usable
        assert members[f"{key}.txt"].decode() == found[key]["caption"]  # KEY.txt stays the training caption
    import datasets
    import webdataset as wds

    from itertools import islice

    from vlm_aug.output.schema import hf_features
    from vlm_aug.shards.layout import OutputDir

    # the documented way (docs/output.md): record fields that are empty in the first samples typed from the schema
    first = list(islice(OutputDir(str(best_of_4)).iter_tar_samples("000000"), 5))
    loaded = datasets.load_dataset("webdataset", data_files={"train": str(best_of_4 / "shards" / "*.tar")},
                                   split="train", cache_dir=str(tmp_path / "hf"), features=hf_features(first))
    assert "short.txt" in loaded.column_names and len(loaded) == len(kept)
    seen = list(wds.WebDataset([str(p) for p in sorted((best_of_4 / "shards").glob("*.tar"))], shardshuffle=False))
    assert all("short.txt" in s and "txt" in s for s in seen)
