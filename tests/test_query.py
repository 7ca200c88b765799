"""`vlm-aug trace` and `vlm-aug stats` on a real output (mix policy, one broken sample)."""

import json
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from output_helpers import REPO, run_pipeline
from vlm_aug.cli import main
from vlm_aug.output.query import stats
from vlm_aug.shards.layout import OutputDir
from vlm_aug.stages.base import derive_seed


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("query"), tiny_vlm_dir, tiny_clip_dir,
                        "policy.name=mix", "policy.mix_rewrite_fraction=0.5")


def rows(out):
    return [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_trace_prints_full_history(out, capsys):
    assert main(["trace", str(out), "s01_0002"]) == 0
    text = capsys.readouterr().out
    record = json.loads(next(r["provenance"] for r in rows(out) if r["key"] == "s01_0002"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert "sample s01_0002 in shard 000001: kept" in text
    assert record["source"]["shard"] in text and record["source"]["image_sha256"] in text
    assert record["generation"]["revision"] in text and record["generation"]["prompt_sha256"] in text
    assert f"seed: {record['generation']['seed']}" in text and "max_new_tokens: 8" in text
    assert f"clip_rewrite: {record['scoring']['clip_rewrite']}" in text
    assert f"mix_draw: {record['decision']['mix_draw']}" in text and 'policy: "mix"' in text
    assert "      | " + manifest["prompt"]["text"].splitlines()[0] in text  # the template, verbatim


def test_trace_json_and_failed_sample(out, capsys):
    assert main(["trace", str(out), "s00_0003", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["status"] == "error" and record["reason"] == "decode_error"
    assert record["source"]["error_detail"] and record["out_shard"] == "000000"


def test_trace_unknown_key_and_bad_directory(out, tmp_path, capsys):
    assert main(["trace", str(out), "nope_0001"]) == 1
    assert "no sample with key 'nope_0001'" in capsys.readouterr().err
    assert main(["stats", str(tmp_path)]) == 2
    assert "not a vlm_aug output directory" in capsys.readouterr().err


def test_mix_draw_recorded_and_decides(out):
    seed = json.loads((out / "manifest.json").read_text())["config"]["generation"]["seed"]
    for r in rows(out):
        if r["status"] != "kept":
            continue
        record = json.loads(r["provenance"])
        decision = record["decision"]
        assert 0 <= decision["mix_draw"] < 1
        # the draw is the sample's own: seeded by the run's generation.seed and the sample's identity
        shard = record["source"]["shard"].rsplit("/", 1)[-1]
        assert decision["mix_draw"] == round(derive_seed(seed, "mix", shard, record["key"]) / 2**31, 6)
        assert r["outcome"] == ("rewrite" if decision["mix_draw"] < 0.5 else "original")
        assert r["caption"] == (r["caption_rewrite"] if r["outcome"] == "rewrite" else r["caption_orig"])
    outcomes = {r["outcome"] for r in rows(out) if r["status"] == "kept"}
    assert outcomes == {"rewrite", "original"}  # 15 seeded draws at 50/50 give both


def test_stats_match_the_rows(out, capsys):
    assert main(["stats", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    all_rows = rows(out)
    overall = result["overall"]
    assert overall["counts"] == {"inputs": 16, "kept": 15, "rejected": 0, "error": 1}
    originals = sum(1 for r in all_rows if r["reason"] == "mix_draw")
    assert overall["reasons"] == {"error:decode_error": 1, "kept:mix_draw": originals}
    for name in ("clip_orig", "clip_rewrite"):
        values = [r[name] for r in all_rows if r[name] is not None]
        expected = np.quantile(values, [0, 0.1, 0.5, 0.9, 1])
        got = overall["scores"][name]["quantiles"]
        assert [got[q] for q in ("p0", "p10", "p50", "p90", "p100")] == pytest.approx(expected, abs=1e-6)
    final = [r["clip_rewrite"] if r["outcome"] == "rewrite" else r["clip_orig"] for r in all_rows if r["status"] == "kept"]
    assert overall["scores"]["clip_final"]["mean"] == pytest.approx(np.mean(final), abs=1e-6)
    assert result["per_shard"]["000000"]["counts"]["error"] == 1
    assert result["per_shard"]["000001"]["counts"] == {"inputs": 8, "kept": 8, "rejected": 0, "error": 0}


def test_stats_text(out, capsys):
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "overall (2 shard(s)): inputs 16  kept 15  rejected 0  error 1" in text
    assert "error:decode_error" in text and "shard 000001: inputs 8" in text and "rewrite (after)" in text


@pytest.mark.slow
def test_stats_fast_on_thousands_of_shards(out, tmp_path):
    """2000 shards (copies of a real sidecar) are summarised from parquet in seconds."""
    big = tmp_path / "big"
    (big / "shards").mkdir(parents=True)
    for i in range(2000):
        for suffix in ("tar", "parquet", "stats.json"):  # a complete shard has all three
            shutil.copyfile(out / "shards" / f"000000.{suffix}", big / "shards" / f"{i:06d}.{suffix}")
    start = time.monotonic()
    result = stats(OutputDir(str(big)))
    elapsed = time.monotonic() - start
    print(f"stats over 2000 shards / 16000 rows: {elapsed:.2f} s")
    assert result["overall"]["counts"]["inputs"] == 16000 and len(result["per_shard"]) == 2000
    assert elapsed < 60, elapsed


def test_training_caption_scores_of_repaired_samples_are_the_repaired_captions(tmp_path, capsys):
    """Sentence repair on: the "training caption" figures count `scoring.clip_repaired` for a repaired
    sample (the caption it trains on), not its original's cosine. The scene world's real models."""
    from vlm_aug.lab.scenes.shards import write_scene_shards

    write_scene_shards(tmp_path / "in", 1, 24, seed=123, wrong_fraction=0.2)
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/demo.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output", str(out),
                 "--no-progress", "--no-report", "--executor", "local", "--set", "report.semantic=false",
                 "--set", "policy.repair.drop_sentences_below=0.6"]) == 0
    expected, repaired = [], 0
    for r in rows(out):
        if r["status"] != "kept":
            continue
        record = json.loads(r["provenance"])
        if r["outcome"] == "repaired":
            repaired += 1
            expected.append(record["scoring"]["clip_repaired"])
            assert record["scoring"]["clip_repaired"] != r["clip_orig"]
        else:
            expected.append(r["clip_rewrite"] if r["outcome"] == "rewrite" else r["clip_orig"])
    assert repaired >= 1, "the fixture must repair a caption"
    capsys.readouterr()
    assert main(["stats", str(out), "--json", "--no-semantic"]) == 0
    final = json.loads(capsys.readouterr().out)["overall"]["scores"]["clip_final"]
    assert final["n"] == len(expected) and final["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert final["quantiles"]["p0"] == pytest.approx(min(expected), abs=1e-6)
    card_row = next(line for line in (out / "README.md").read_text().splitlines()
                    if line.startswith("| training caption (kept) |"))
    assert f"| {final['mean']} |" in card_row


@pytest.mark.parametrize("name", ["out", "out sp $(id)"])
def test_trace_of_an_input_key_with_dots_names_the_written_key(tmp_path, capsys, name):
    """The hint is a command to paste: the output folder is quoted for a shell (`out sp $(id)`)."""
    import shlex

    from helpers import image_bytes, sample_members, write_tar

    write_tar(tmp_path / "in" / "000000.tar", sample_members("img.v2", "a red square", image_bytes())
              + sample_members("plain", "a blue square", image_bytes(color=(0, 0, 200))))
    out = tmp_path / name
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/000000.tar"),
                 "--output", str(out), "--no-progress", "--no-model", "--no-report",
                 "--set", "report.semantic=false"]) == 0
    capsys.readouterr()
    assert main(["trace", str(out), "img.v2"]) == 1
    err = capsys.readouterr().err
    assert "no sample with key 'img.v2'" in err and "dots in keys are written as '_'" in err
    assert "sample 'img_v2' in shard 000000" in err and f"vlm-aug trace {shlex.quote(str(out))} img_v2 --shard 000000" in err
    assert shlex.split(f"vlm-aug trace {shlex.quote(str(out))} img_v2")[2] == str(out)
    assert main(["trace", str(out), "img_v2"]) == 0
    assert main(["trace", str(out), "other.key"]) == 1
    assert "dots in keys are written as '_'" in capsys.readouterr().err


def test_stats_and_trace_read_the_parquets_in_groups(out, monkeypatch, capsys):
    """The sidecars are read a group of files at a time (OutputDir.TABLE_GROUP): in groups of one the
    figures are those of one read."""
    from vlm_aug.shards.layout import OutputDir

    assert main(["stats", str(out), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(OutputDir, "TABLE_GROUP", 1)
    assert main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == whole
    key = rows(out)[-1]["key"]
    table = OutputDir(str(out)).table(["key"])
    assert table.num_rows == 16 and table["out_shard"].to_pylist() == ["000000"] * 8 + ["000001"] * 8
    assert main(["trace", str(out), key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["out_shard"] == "000001"


def test_a_damaged_parquet_in_a_later_group_is_named(out, tmp_path, monkeypatch):
    from vlm_aug.shards.layout import OutputDir, OutputError

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "shards/000001.parquet").write_bytes(b"not a parquet")
    monkeypatch.setattr(OutputDir, "TABLE_GROUP", 1)
    with pytest.raises(OutputError, match="000001.parquet"):
        OutputDir(str(copy)).table(["key"])
