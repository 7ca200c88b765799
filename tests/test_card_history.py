"""The card, croissant.json and report.html describe every shard of an output, not the last command:
inputs of earlier runs, mixed configurations, dry runs and input shards that could not be read.
Real runs on real tars (dry runs need no model; the mixed configurations use the tiny models)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from helpers import make_shards, tiny_args
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]


def dry_run(inputs: list[Path], out: Path, *extra: str) -> None:
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", *map(str, inputs), "--output", str(out),
            "--no-progress", "--no-model", "--set", "report.semantic=false", *extra]
    assert main(argv) == 0


def card(out: Path) -> tuple[dict, str]:
    front, body = (out / "README.md").read_text()[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_two_runs_with_other_inputs_card_and_croissant_name_every_shards_input(tmp_path):
    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=4, broken=False)
    out = tmp_path / "out"
    dry_run([shards[0]], out, "--no-report")
    dry_run([shards[1]], out, "--no-report")
    stats = {p.name[: -len(".stats.json")]: json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")}
    assert len({s["run_id"] for s in stats.values()}) == 2  # each run wrote one shard
    meta, body = card(out)
    assert sorted(meta["source_datasets"]) == ["extended|in/000000.tar", "extended|in/000001.tar"]
    assert "Input shards: `in/000000.tar`, `in/000001.tar`" in body or \
        "Input shards: `in/000001.tar`, `in/000000.tar`" in body
    assert "written by 2 runs" in body and all(s["run_id"] in body for s in stats.values())
    doc = json.loads((out / "croissant.json").read_text())
    assert sorted(d["@id"] for d in doc["prov:wasDerivedFrom"]) == ["in/000000.tar", "in/000001.tar"]
    links = {m["@id"]: m for m in doc["prov:hadMember"]}
    assert set(links) == {"shards/000000.tar", "shards/000001.tar"}
    for name, shard_stats in stats.items():
        assert links[f"shards/{name}.tar"]["prov:wasDerivedFrom"]["@id"] == f"in/{name}.tar"
        assert links[f"shards/{name}.tar"]["prov:wasGeneratedBy"]["@id"] == f"run:{shard_stats['run_id']}"
    # every run a member names is an activity of the document
    activities = {a["@id"] for a in doc["prov:wasGeneratedBy"]}
    assert activities == {f"run:{s['run_id']}" for s in stats.values()}


def test_dry_run_card_croissant_and_report_say_it_is_a_dry_run(tmp_path):
    shards = make_shards(tmp_path / "in", n_shards=1, per_shard=4, broken=False)
    out = tmp_path / "out"
    dry_run(shards, out)
    _, body = card(out)
    assert "a dry run" in body and "`None`" not in body
    for claim in ("Policy `fallback`", "| rewrite (VLM) |", "Rewrites are machine-generated", "| max_new_tokens |",
                  "Template `dense_v1`", "| training caption (kept) |"):
        assert claim not in body, claim
    assert "the captions are the seed data's own, unchanged" in body
    doc = json.loads((out / "croissant.json").read_text())
    assert "dry run" in doc["description"] and "rewritten by" not in doc["description"]
    assert all(a["prov:used"] == [] for a in doc["prov:wasGeneratedBy"])
    page = (out / "report.html").read_text()
    summary = re.search(r'<section id="summary">(.*?)</section>', page, re.S).group(1)
    assert "a dry run" in summary and "VLM <code>" not in summary and "policy <code>" not in summary


def test_read_errors_are_in_the_card_and_the_report(tmp_path):
    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=6, broken=False)
    data = shards[1].read_bytes()
    cut = tmp_path / "in" / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # cut short inside a member
    shards[1].unlink()
    junk = tmp_path / "in" / "junk.tar"
    junk.write_bytes(b"this is not a tar file\n" * 40)
    out = tmp_path / "out"
    dry_run([shards[0], cut, junk], out)
    _, body = card(out)
    assert "Read errors: 2 input shard(s) could not be read to their end" in body
    assert re.search(r"\| `cut` \| `in/cut.tar` \| truncated", body)
    assert re.search(r"\| `junk` \| `in/junk.tar` \| \w*Error", body)
    page = (out / "report.html").read_text()
    note = re.search(r'<div class="note warn" id="read-errors">(.*?)</div>', page, re.S).group(1)
    assert "2 input shard(s) could not be read" in note and "<code>cut</code>" in note and "<code>junk</code>" in note
    # the kept-fraction plot leaves out the shard with no input sample, and the page says so
    empty = re.search(r'<p class="note" id="empty-shards">(.*?)</p>', page, re.S).group(1)
    assert "<code>junk</code>" in empty and "<code>cut</code>" not in empty


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    """Three runs into one output, each on its own input shard: fallback with 8 new tokens; then (appended
    with --allow-config-change) rewrite with 6 new tokens; then a dry run."""
    root = tmp_path_factory.mktemp("mixed")
    shards = make_shards(root / "in", n_shards=3, per_shard=4, broken=False)
    out = root / "out"
    base = ["run", str(REPO / "configs/preview.yaml"), "--output", str(out), "--no-progress", "--no-report"]
    assert main([*base, "--input", str(shards[0]), *tiny_args(tiny_vlm_dir, tiny_clip_dir)]) == 0
    assert main([*base, "--input", str(shards[1]), "--allow-config-change",
                 *tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "policy.name=rewrite",
                            "--set", "generation.max_new_tokens=6")]) == 0
    assert main([*base, "--input", str(shards[2]), "--allow-config-change", "--no-model",
                 *tiny_args(tiny_vlm_dir, tiny_clip_dir)]) == 0
    return out


def test_mixed_configurations_card_states_each_ones_settings(mixed):
    manifest = json.loads((mixed / "manifest.json").read_text())
    configs = {fp: c for fp, c in manifest["configurations"].items() if c["shards"]}
    assert len(configs) == 3
    by_policy = {c["settings"]["policy.name"]: fp[:12] for fp, c in configs.items() if not c["settings"]["dry_run"]}
    dry = next(fp[:12] for fp, c in configs.items() if c["settings"]["dry_run"])
    meta, body = card(mixed)
    assert sorted(meta["source_datasets"]) == [f"extended|in/{n:06d}.tar" for n in range(3)]
    filters = body.split("## Filters and thresholds", 1)[1].split("## Configurations", 1)[0]
    assert "Policy `" not in filters  # the last run's (a dry run's) policy is not stated as the dataset's
    assert (f"The policy differs between configurations: `fallback` (`{by_policy['fallback']}`); "
            f"`rewrite` (`{by_policy['rewrite']}`)") in filters
    assert f"The shards of configuration(s) `{dry}` are a dry run" in filters
    generation = body.split("## Generation parameters", 1)[1].split("## Filters", 1)[0]
    assert (f"| max_new_tokens | differs between configurations: `8` (`{by_policy['fallback']}`); "
            f"`6` (`{by_policy['rewrite']}`) |") in generation
    models = body.split("## Models", 1)[1].split("## Generation", 1)[0]
    assert "| rewrite (VLM) |" in models and "`None`" not in models
    assert f"The shards of configuration(s) `{dry}` are a dry run" in models
    assert "Rewrites are machine-generated" in body and "are a dry run: their captions are the seed data's" in body
    doc = json.loads((mixed / "croissant.json").read_text())
    assert "rewritten by" in doc["description"] and "dry run" in doc["description"]
    used = {a["@id"]: a["prov:used"] for a in doc["prov:wasGeneratedBy"]}
    assert len(used) == 3 and sum(1 for u in used.values() if u) == 2  # the dry run used no model


def test_mixed_output_croissant_validates_and_reads_every_row(mixed):
    mlc = pytest.importorskip("mlcroissant")
    records = list(mlc.Dataset(str(mixed / "croissant.json")).records("samples"))  # raises on validation errors
    assert len(records) == 12


def test_failed_input_shards_are_in_stats_and_the_card(tmp_path, capsys):
    """An input shard the run failed (here a folder named like a shard: reading it fails) has none of
    its samples in the output: `stats` and the card say which and why, as the manifest does."""
    make_shards(tmp_path / "in", n_shards=1, per_shard=4)
    (tmp_path / "in/000001.tar").mkdir()
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output",
            str(tmp_path / "out"), "--no-progress", "--no-report", "--no-model", "--set", "report.semantic=false"]
    assert main(argv) == 1
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "out"), "--no-semantic", "--no-per-shard"]) == 0
    printed = capsys.readouterr().out
    assert "1 input shard(s) failed in the last run" in printed and "000001.tar" in printed
    _, body = card(tmp_path / "out")
    assert "Failed: 1 input shard(s)" in body and "in/000001.tar" in body


def test_settings_left_out_at_their_default_show_their_value_in_the_card(tmp_path):
    """limits.max_caption_bytes and vlm.engine are recorded only off their default (so older outputs keep
    their fingerprint): the card said `max_caption_bytes` was `null` in the configuration at its default,
    showed '?' in the configurations table, and never listed it under the input limits of one run."""
    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=3, broken=False)
    out = tmp_path / "out"
    dry_run([shards[0]], out, "--no-report")
    _, body = card(out)
    assert "`max_caption_bytes=65536`" in body
    dry_run([shards[1]], out, "--no-report", "--allow-config-change", "--set", "limits.max_caption_bytes=100")
    _, body = card(out)
    line = next(x for x in body.splitlines() if "`max_caption_bytes` differs" in x)
    assert "`100`" in line and "`65536`" in line and "null" not in line
    table = [x for x in body.splitlines() if x.startswith("| `") and "`limits.max_caption_bytes`" not in x]
    assert sorted(x.split("|")[5].strip() for x in table if len(x.split("|")) > 6) == ["`100`", "`65536`"]
