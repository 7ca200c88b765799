"""The dataset card and croissant.json that every run writes, read back by real parsers."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from output_helpers import run_pipeline


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("card"), tiny_vlm_dir, tiny_clip_dir, "policy.name=both")


def card(out):
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_card_metadata(out):
    meta, _ = card(out)
    assert meta["license"] == "other" and "set-me" in meta["license_name"]
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["task_categories"] == ["image-to-text", "text-to-image"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["source_datasets"] == ["extended|in/*.tar"]  # named by folder and pattern, not by path
    assert meta["configs"][0]["data_files"][0]["path"] == "shards/*.tar"


def test_card_body_documents_the_run(out):
    _, body = card(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert f"````text\n{manifest['prompt']['text']}\n````" in body  # the template verbatim
    assert manifest["prompt"]["sha256"] in body
    for stage in ("rewrite", "score"):
        assert manifest["models"][stage]["revision"] in body
    assert "| max_new_tokens | `8` |" in body
    assert "Policy `both`" in body and "`min_clip_rewrite=-1.0`" in body and "KEY.orig.txt" in body
    assert "| 16 | 15 | 0 | 1 |" in body and "| error:decode_error | 1 |" in body
    assert "| rewrite (after) | 15 |" in body and "## Known limitations" in body
    # each score row holds its own column's figures (computed here from the parquet)
    rows = [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    for label, column in (("original caption (before)", "clip_orig"), ("rewrite (after)", "clip_rewrite")):
        values = [r[column] for r in rows if r[column] is not None]
        [line] = [line for line in body.splitlines() if line.startswith(f"| {label} |")]
        n, mean, p0, *_, p100 = [float(c) for c in line.strip("|").split("|")[1:]]
        assert (n, mean, p0, p100) == pytest.approx((len(values), sum(values) / len(values), min(values),
                                                      max(values)), abs=1e-3), (label, line)
    assert [r["clip_orig"] for r in rows] != [r["clip_rewrite"] for r in rows]  # so the rows can tell them apart


def test_croissant_validates_and_reads_every_row_with_mlcroissant(out):
    mlc = pytest.importorskip("mlcroissant")
    dataset = mlc.Dataset(str(out / "croissant.json"))  # raises on validation errors
    records = list(dataset.records("samples"))
    rows = [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(records) == len(rows) == 16
    assert sorted(r["samples/key"].decode() for r in records) == sorted(r["key"] for r in rows)
    assert {r["samples/status"].decode() for r in records} == {"kept", "error"}


def test_croissant_prov_links(out):
    doc = json.loads((out / "croissant.json").read_text())
    stats = {p.name[: -len(".stats.json")]: json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")}
    inputs = sorted(f"in/{p.name}" for p in (out.parent / "in").glob("*.tar"))  # public names, no local path
    assert sorted(d["@id"] for d in doc["prov:wasDerivedFrom"]) == inputs
    [activity] = doc["prov:wasGeneratedBy"]  # one activity per run that wrote a shard: here one run
    assert activity["@type"] == "prov:Activity" and activity["@id"] == f"run:{next(iter(stats.values()))['run_id']}"
    links = {m["@id"]: m for m in doc["prov:hadMember"]}
    assert set(links) == {f"shards/{name}.tar" for name in stats}
    for name, shard_stats in stats.items():
        link = links[f"shards/{name}.tar"]
        assert link["prov:wasDerivedFrom"]["@id"] == f"in/{name}.tar"
        assert link["prov:wasGeneratedBy"]["@id"] == f"run:{shard_stats['run_id']}"
    models = json.loads((out / "manifest.json").read_text())["models"]
    used = {u["@id"] for u in activity["prov:used"]}
    public = {f"model:{Path(models[s]['model']).parent.name}/{Path(models[s]['model']).name}" for s in ("rewrite", "score")}
    assert used == public


def test_card_configs_let_datasets_load_the_directory(out, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 15 and set(ds.features) >= {"jpg", "txt", "orig.txt", "json"}


def test_card_and_croissant_hold_no_absolute_local_path(out, tiny_vlm_dir, tiny_clip_dir):
    """The card is meant for publication: the user's machine's paths (inputs, local models) stay out."""
    for name in ("README.md", "croissant.json"):
        text = (out / name).read_text()
        for private in (str(out.parent), str(tiny_vlm_dir), str(tiny_clip_dir), "/tmp/"):
            assert private not in text, (name, private)
    assert "in/000000.tar" in (out / "croissant.json").read_text()  # the derivation link still names its input
