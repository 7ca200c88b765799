"""report.html from a real run (real tars, tiny real models): cards, thumbnails taken from
the right tar, placeholders, sampling, self-containment, and the run's summary table."""

import base64
import io
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageStat

from helpers import make_shards, tiny_args
from vlm_aug.cli import main
from vlm_aug.report.collect import _rank
from vlm_aug.report.diversity import words

REPO = Path(__file__).resolve().parents[1]
COLORS = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30)]  # helpers.make_shards, by index % 4
CARD = re.compile(r'<article class="card (\w+)" ([^>]*)>(.*?)</article>', re.S)


def run_argv(root: Path, shard: str, *extra: str) -> list[str]:
    return ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in" / shard),
            "--output", str(root / "out"), "--no-progress", *extra]


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    """Shard 0 kept (one broken image: error), shard 1 all rejected (threshold 0.99), one output dir
    (two configurations in it: the second run appends with --allow-config-change)."""
    root = tmp_path_factory.mktemp("report")
    make_shards(root / "in", n_shards=2, per_shard=6)
    tiny = tiny_args(tiny_vlm_dir, tiny_clip_dir)
    assert main(run_argv(root, "000000.tar", *tiny, "--no-report")) == 0
    assert not (root / "out/report.html").exists()  # --no-report honoured
    assert main(run_argv(root, "000001.tar", *tiny, "--set", "policy.name=rewrite",
                         "--set", "policy.min_clip_rewrite=0.99", "--allow-config-change")) == 0
    rows = [r for p in sorted((root / "out/shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return root, rows


def cards(html: str) -> list[dict]:
    found = []
    for status, attrs, body in CARD.findall(html):
        data = dict(re.findall(r'data-([\w-]+)="([^"]*)"', attrs))
        src = re.search(r'<img src="data:image/jpeg;base64,([^"]+)"', body)
        found.append({"status": status, **data, "body": body, "img": base64.b64decode(src.group(1)) if src else None})
    return found


def mean_color(jpeg: bytes) -> tuple:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    return tuple(ImageStat.Stat(image).mean)


def test_run_writes_report_with_one_card_per_sample_of_a_small_run(report_run, capsys):
    root, rows = report_run
    html = (root / "out/report.html").read_text()
    assert "<strong>2 configurations</strong>" in html  # the two runs' settings, each with its shards
    found = cards(html)
    assert sorted(c["key"] for c in found) == sorted(r["key"] for r in rows)
    by_key = {r["key"]: r for r in rows}
    for card in found:
        row = by_key[card["key"]]
        assert card["status"] == row["status"] and card["reason"] == (row["reason"] or "")
        assert f"sample:{row['status']}" in card["views"].split()
    statuses = {r["status"] for r in rows}
    assert statuses == {"kept", "rejected", "error"}, "the fixture must produce all three statuses"


def test_thumbnails_come_from_output_tar_or_input_shard_and_show_the_real_image(report_run):
    root, rows = report_run
    found = cards((root / "out/report.html").read_text())
    for card in found:
        if card["status"] == "error":  # the broken image of shard 0
            assert card["img"] is None and "image unreadable" in card["body"]
            continue
        assert card["img"] is not None, f"{card['key']} has no thumbnail"
        expected = COLORS[int(card["key"].split("_")[1]) % 4]
        assert all(abs(a - b) < 25 for a, b in zip(mean_color(card["img"]), expected)), card["key"]
    assert any(c["status"] == "rejected" and c["img"] for c in found)  # read from the input shard


def test_added_words_are_marked_and_scores_shown(report_run):
    root, rows = report_run
    by_key = {r["key"]: r for r in rows}
    for card in cards((root / "out/report.html").read_text()):
        row = by_key[card["key"]]
        rewrite = re.search(r'<dd class="rewrite">(.*?)</dd>', card["body"], re.S).group(1)
        marked = [w.lower() for w in re.findall(r"<mark>(.*?)</mark>", rewrite)]
        assert set(marked) <= set(words(row["caption_rewrite"])) - set(words(row["caption_orig"]))
        assert len(marked) == len([w for w in words(row["caption_rewrite"]) if w not in words(row["caption_orig"])])
        if row["clip_rewrite"] is not None:
            assert f"{row['clip_rewrite']:.3f}" in card["body"] and f"{row['clip_orig']:.3f}" in card["body"]
            assert card["body"].count('<li') == len(row["clip_sentences"])
    # each card uses the threshold of its own decision: 0.99 for shard 1 (all low), -1 for shard 0 (none)
    found = cards((root / "out/report.html").read_text())
    rejected = [c for c in found if c["status"] == "rejected"]
    assert rejected and all('class="low"' in c["body"] for c in rejected)
    assert all('class="low"' not in c["body"] for c in found if c["key"].startswith("s00_"))


def test_page_is_self_contained(report_run):
    root, _ = report_run
    html = (root / "out/report.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', html), "only data: URIs and anchors may be referenced"
    assert "<link" not in html and "@import" not in html and "<script src" not in html
    assert not re.search(r"url\((?!data:)", html)
    assert html.count("data:image/png;base64,") == 4  # the four plots


def test_sampling_is_bounded_seeded_and_sorted_views_hold_the_extremes(report_run):
    root, rows = report_run
    out = root / "out"
    pages = []
    for seed in ("1", "1", "2"):
        path = root / f"sampled-{seed}-{len(pages)}.html"
        assert main(["report", str(out), "--html", str(path), "--per-status", "2", "--per-view", "1",
                     "--seed", seed]) == 0
        pages.append(cards(path.read_text()))
    first = pages[0]

    def drawn(page: list[dict]) -> dict:
        return {s: sorted(c["key"] for c in page if f"sample:{s}" in c["views"].split()) for s in ("kept", "rejected")}

    def expected(seed: int) -> dict:  # each status's 2 samples of least rank under that seed
        ranked = {"kept": [], "rejected": []}
        for path in sorted((out / "shards").glob("*.parquet")):
            for r in pq.read_table(path).to_pylist():
                if r["status"] in ranked:
                    ranked[r["status"]].append((_rank(seed, path.stem, r["key"]), r["key"]))
        return {s: sorted(key for _, key in sorted(found)[:2]) for s, found in ranked.items()}

    assert drawn(first) == expected(1) and drawn(pages[2]) == expected(2)
    assert drawn(pages[2]) != drawn(first)  # another seed, other samples
    for status in ("kept", "rejected", "error"):
        n = sum(r["status"] == status for r in rows)
        assert sum(f"sample:{status}" in c["views"].split() for c in first) == min(2, n)
    scored = [r for r in rows if r["clip_rewrite"] is not None]
    lowest = min(r["clip_rewrite"] for r in scored)
    best = max(r["clip_rewrite"] - r["clip_orig"] for r in scored)
    [low_card] = [c for c in first if "lowest" in c["views"].split()]
    [gain_card] = [c for c in first if "gain" in c["views"].split()]
    assert float(low_card["clip-rewrite"]) == pytest.approx(lowest, abs=1e-6)  # ties: any of the lowest
    assert float(gain_card["gain"]) == pytest.approx(best, abs=1e-6)
    assert [c["key"] for c in pages[1]] == [c["key"] for c in first]  # same seed, same page
    assert "seed 1" in (root / "sampled-1-0.html").read_text()


def test_missing_input_shard_gives_placeholders_not_a_failure(report_run, tmp_path):
    root, _ = report_run
    moved = tmp_path / "000001.tar"
    shutil.move(root / "in/000001.tar", moved)
    try:
        path = tmp_path / "r.html"
        assert main(["report", str(root / "out"), "--html", str(path)]) == 0
        found = cards(path.read_text())
    finally:
        shutil.move(moved, root / "in/000001.tar")
    rejected = [c for c in found if c["status"] == "rejected"]
    assert rejected and all(c["img"] is None and "shard no longer exists" in c["body"] for c in rejected)
    assert all(c["img"] for c in found if c["status"] == "kept")  # kept images come from the output tar


def test_report_command_errors_name_the_input(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "nothing holds no shards/*.parquet" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--per-status", "0"]) == 2
    assert "--per-status must be at least 1" in capsys.readouterr().err


def test_run_prints_summary_table_with_throughput(report_run, capsys, tiny_vlm_dir, tiny_clip_dir):
    root, rows = report_run
    argv = run_argv(root, "000001.tar", *tiny_args(tiny_vlm_dir, tiny_clip_dir), "--overwrite", "--set",
                    "policy.name=rewrite", "--set", "policy.min_clip_rewrite=0.99",
                    "--allow-config-change")  # shard 000000 keeps its own settings
    assert main(argv) == 0
    out = capsys.readouterr().out
    kept = sum(r["status"] == "kept" for r in rows)
    assert re.search(rf"kept\s+{kept}\s+\d+\.\d%", out) and re.search(rf"total\s+{len(rows)}\b", out)
    assert re.search(r"throughput [\d.]+ samples/s, \d+ new tokens/s \(6 samples processed", out)
    assert "report   " in out and str(root / "out/report.html") in out


def test_diversity_figures_use_a_bounded_seeded_text_sample(report_run, tmp_path):
    root, rows = report_run
    path = tmp_path / "capped.html"
    assert main(["report", str(root / "out"), "--html", str(path), "--text-limit", "4"]) == 0
    html = path.read_text()
    match = re.search(r"Computed over a seeded sample of (\d+) of (\d+) samples \(seed 0\)", html)
    assert match and int(match.group(2)) == len(rows) and 0 < int(match.group(1)) < len(rows)
    analysed = re.search(r"<td>captions analysed</td><td>(\d+)</td>", html)
    assert analysed and int(analysed.group(1)) == int(match.group(1))  # every drawn row has an original
