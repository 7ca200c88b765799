"""The whole pipeline through `main([...])` on real tars and tiny real models."""

import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import make_shards, tiny_args
from vlm_aug import SCHEMA_VERSION
from vlm_aug.cli import main
from vlm_aug.stages.models import weights_sha256
from vlm_aug.stages.prompts import load_template

REPO = Path(__file__).resolve().parents[1]


def read_tar(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(scope="module")
def run_once(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("e2e")
    inputs = make_shards(root / "in", n_shards=2, per_shard=8)
    out = root / "out"
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in/{000000..000001}.tar"),
            "--output", str(out), "--no-progress", *tiny_args(tiny_vlm_dir, tiny_clip_dir)]
    assert main(argv) == 0
    return inputs, out, argv


def test_keys_and_image_bytes_preserved(run_once):
    inputs, out, _ = run_once
    for src in inputs:
        original = read_tar(src)
        written = read_tar(out / "shards" / src.name)
        for name, data in written.items():
            if name.endswith(".jpg"):
                assert data == original[name], f"{name} was re-encoded"
        in_keys = {n.split(".")[0] for n in original}
        out_keys = {n.split(".")[0] for n in written}
        rows = pq.read_table(out / "shards" / src.name.replace(".tar", ".parquet")).to_pylist()
        assert {r["key"] for r in rows} == in_keys  # every input sample has a row
        assert out_keys == {r["key"] for r in rows if r["status"] == "kept"}
        assert len(rows) == 8


def test_counts_invariant_and_broken_sample_recorded(run_once):
    _, out, _ = run_once
    stats = json.loads((out / "shards/000000.stats.json").read_text())
    c = stats["counts"]
    assert c["inputs"] == 8 == c["kept"] + c["rejected"] + c["error"]
    assert c["error"] == 1 and stats["reasons"]["error:decode_error"] == 1
    rows = pq.read_table(out / "shards/000000.parquet").to_pylist()
    broken = [r for r in rows if r["key"] == "s00_0003"][0]
    assert broken["status"] == "error" and broken["reason"] == "decode_error"
    assert json.loads((out / "shards/sizes.json").read_text()) == {"000000.tar": 7, "000001.tar": 8}


def test_json_schema_identical_and_provenance_correct(run_once, tiny_vlm_dir):
    inputs, out, _ = run_once
    template = load_template("dense_v1")
    records = []
    for src in inputs:
        written = read_tar(out / "shards" / src.name)
        records += [json.loads(v) for k, v in written.items() if k.endswith(".json")]
        original = read_tar(src)
        for rec in records:
            image_name = f"{rec['key']}.jpg"
            if image_name in original:
                assert rec["source"]["image_sha256"] == hashlib.sha256(original[image_name]).hexdigest()

    def shape(obj):
        return {k: shape(v) for k, v in obj.items()} if isinstance(obj, dict) else None

    assert all(shape(r) == shape(records[0]) for r in records)
    rec = records[0]
    assert rec["schema"] == SCHEMA_VERSION
    assert rec["generation"]["prompt_sha256"] == hashlib.sha256(template.text.encode()).hexdigest()
    rendered = template.render(rec["caption_orig"])
    assert rec["generation"]["rendered_prompt_sha256"] == hashlib.sha256(rendered.encode()).hexdigest()
    assert rec["generation"]["revision"] == weights_sha256(Path(tiny_vlm_dir))  # what it covers: the test below
    assert rec["generation"]["params"]["max_new_tokens"] == 8
    assert rec["generation"]["trust_remote_code"] is False
    assert rec["decision"]["policy"] == "fallback" and rec["decision"]["outcome"] in ("rewrite", "original")
    assert isinstance(rec["scoring"]["clip_orig"], float) and rec["scoring"]["clip_sentences"]
    assert rec["pipeline"]["run_id"] and len(rec["pipeline"]["config_sha256"]) == 64
    assert rec["source"]["shard"].endswith(".tar") and json.loads(rec["source"]["orig_json"])["key"] == rec["key"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompt"]["sha256"] == template.sha256 and manifest["prompt"]["text"] == template.text
    assert manifest["totals"]["inputs"] == 16
    # where and how the scores were computed (a batch of another size may move a cosine's last digits)
    assert (rec["scoring"]["device"], rec["scoring"]["batch_size"]) == ("cpu", manifest["config"]["clip"]["batch_size"])


def test_recorded_clip_scores_are_the_models_cosines(run_once, tiny_clip_dir):
    """Each kept record's clip_orig, clip_rewrite and clip_sentences are the tiny CLIP's own cosines of
    its image with the original caption, the rewrite and each of the rewrite's sentences (recomputed
    here outside the stage's batching); a record holding one score in another's place was not caught."""
    import io

    import torch
    from PIL import Image

    from vlm_aug.config import CLIPConfig
    from vlm_aug.stages.score import ScoreStage
    from vlm_aug.text import split_sentences

    inputs, out, _ = run_once
    stage = ScoreStage(CLIPConfig(model=str(tiny_clip_dir), pretrained=None, device="cpu"))
    stage.setup()
    checked = 0
    for src in inputs:
        written = read_tar(out / "shards" / src.name)
        rows = {r["key"]: r for r in pq.read_table(out / "shards" / src.name.replace(".tar", ".parquet")).to_pylist()}
        for name, data in written.items():
            if not name.endswith(".json"):
                continue
            rec = json.loads(data)
            row = rows[rec["key"]]  # the parquet's columns hold the record's scores
            assert (row["clip_orig"], row["clip_rewrite"]) == (rec["scoring"]["clip_orig"], rec["scoring"]["clip_rewrite"])
            image = Image.open(io.BytesIO(written[f"{rec['key']}.jpg"])).convert("RGB")
            sentences = split_sentences(rec["caption_rewrite"])
            with torch.no_grad():
                image_emb = stage.model.encode_image(stage.preprocess(image)[None], normalize=True)
                texts = stage.model.encode_text(stage.tokenizer([rec["caption_orig"], rec["caption_rewrite"],
                                                                 *sentences]), normalize=True)
            orig, rewrite, *each = (texts @ image_emb.T).squeeze(1).tolist()
            scoring = rec["scoring"]
            assert scoring["clip_orig"] == pytest.approx(orig, abs=1e-4), rec["key"]
            assert scoring["clip_rewrite"] == pytest.approx(rewrite, abs=1e-4), rec["key"]
            assert scoring["clip_sentences"] == pytest.approx(each, abs=1e-4), rec["key"]
            checked += 1
    assert checked == 15  # every kept sample (one of 16 is a broken image)


def test_a_local_models_revision_covers_what_loading_reads(tiny_vlm_dir, tmp_path):
    """A local checkpoint's recorded revision hashed its weights only: a generation_config.json with
    no_repeat_ngram_size changed every rewrite of a shard while the revision stayed. It now covers the
    config, generation config, tokenizer, processor and chat-template files too, not a README."""
    import shutil

    model = shutil.copytree(tiny_vlm_dir, tmp_path / "model")
    assert {p.suffix for p in model.iterdir()} >= {".json", ".safetensors"}
    before = weights_sha256(model)
    (model / "README.md").write_text("# notes\n")
    assert weights_sha256(model) == before
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "no_repeat_ngram_size": 2}))
    changed = weights_sha256(model)
    assert changed != before
    (model / "chat_template.jinja").write_text("{{ messages }}")
    assert weights_sha256(model) not in (before, changed)


def test_rerun_skips_done_and_overwrite_reproduces(run_once, capsys):
    _, out, argv = run_once
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    captions = pq.read_table(out / "shards/000001.parquet").column("caption_rewrite").to_pylist()
    assert main(argv) == 0
    assert "2 already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == before
    assert main(argv + ["--overwrite"]) == 0
    assert pq.read_table(out / "shards/000001.parquet").column("caption_rewrite").to_pylist() == captions
    assert not list((out / "shards").glob("*.tmp-*"))


def test_missing_hub_model_fails_fast_with_remedy(tmp_path, capsys):
    import time

    make_shards(tmp_path / "in", n_shards=1, per_shard=2)
    start = time.monotonic()
    code = main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 30
    assert "HuggingFaceTB/SmolVLM-256M-Instruct" in err and "local directory" in err
