"""`vlm-aug eval-downstream` on tiny data: real tars, a real pipeline run with tiny models, real
open_clip_train subprocesses; the table and downstream.json must agree with the trainer's own logs."""

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from helpers import make_shards, sample_members, tiny_args, write_tar
from vlm_aug.cli import main
from vlm_aug.lab.downstream.aggregate import paired_gain, summarize_arm
from vlm_aug.lab.downstream.evaluate import retrieval_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH = 4, 4
TRAIN_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .* Loss: ([\d.]+) \(")



def noise_png(seed: int, size: int = 40) -> bytes:
    """A distinct image per seed (no two held-out images embed alike, so no tied scores)."""
    buffer = io.BytesIO()
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def write_heldout(path: Path, n: int = 12) -> Path:
    """n samples with unique captions and distinct images; json labels of two classes (zero-shot)."""
    members = []
    for i in range(n):
        colour = "red" if i % 2 else "blue"
        members += sample_members(f"h{i:04d}", f"a {colour} square number {i}", noise_png(i),
                                  {"label": colour}, ext="png")
    return write_tar(path, members)


@pytest.fixture(scope="module")
def ab(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir, consumer_python):
    root = tmp_path_factory.mktemp("downstream")
    make_shards(root / "in", n_shards=2, per_shard=8)  # sample 3 of shard 0 is not an image
    out = root / "out"
    run = ["run", str(REPO / "configs/preview.yaml"), "--input", str(root / "in/*.tar"), "--output", str(out),
           "--no-progress", "--no-report", *tiny_args(tiny_vlm_dir, tiny_clip_dir)]
    assert main(run) == 0
    held = write_heldout(root / "held" / "000000.tar")
    argv = ["eval-downstream", str(out), "--heldout", str(held), "--model", "tiny", "--seeds", "1",
            "--steps", str(STEPS), "--batch-size", str(BATCH), "--threads", "1",
            "--trainer-python", consumer_python, "--unfiltered"]
    return out, argv


@pytest.fixture(scope="module")
def result(ab):
    out, argv = ab
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return json.loads((out / "downstream.json").read_text()), printed.getvalue()


def read_log(path):
    lines = [TRAIN_LINE.search(line) for line in Path(path).read_text().splitlines()]
    lines = [m for m in lines if m]
    return int(lines[-1].group(1)) // BATCH, float(lines[-1].group(2))


def test_arms_are_original_and_output(result, ab):
    data, _ = result
    arms = {a["name"]: a for a in data["arms"]}
    assert list(arms) == ["original", "recaptioned", "unfiltered"]
    assert arms["original"]["samples"] == 15 and arms["original"]["skipped"] == {"decode_error": 1}
    sizes = json.loads((ab[0] / "shards/sizes.json").read_text())
    assert arms["recaptioned"]["samples"] == sum(sizes.values())
    rows = [r for p in sorted((ab[0] / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    rewrites = {r["key"]: r["caption_rewrite"] for r in rows if r["caption_rewrite"]}
    assert arms["unfiltered"]["samples"] == len(rewrites)
    written = {}
    for path in sorted((ab[0] / "downstream/arms/unfiltered").glob("*.tar")):
        with tarfile.open(path) as tar:
            written.update({m.name[:-4]: tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")})
    assert written == rewrites  # every rewrite the run made, whatever the policy decided
    assert data["comparisons"] == [["original", "recaptioned"], ["original", "unfiltered"]]


def test_json_agrees_with_training_logs(result):
    data, _ = result
    assert len(data["runs"]) == 3
    for run in data["runs"]:
        steps, loss = read_log(run["train"]["log"])
        assert steps == run["train"]["steps"] == STEPS  # same steps for both arms
        assert loss == pytest.approx(run["metrics"]["final_loss"], abs=1e-4)
        results = Path(run["train"]["log"]).parent / "checkpoints" / "results.jsonl"
        trainer = json.loads(results.read_text().splitlines()[-1])  # open_clip_train's own evaluation
        for key in ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"):
            assert run["metrics"][key] == pytest.approx(trainer[key], abs=1e-6), key
        assert run["metrics"]["zero_shot_classes"] == 2 and run["metrics"]["zero_shot_samples"] == 12
        assert run["train"]["checkpoint"] is None  # removed after evaluation


def test_table_matches_json(result):
    data, printed = result
    assert data["table"] in printed
    arms = list(data["summary"])
    width = max(14, *(len(a) + 2 for a in arms))  # each arm's column, right-aligned after a 12-wide label
    row = [line for line in data["table"].splitlines() if line.startswith("mean R@1")][0]
    header = [line for line in data["table"].splitlines() if line.startswith("metric")][0]
    for i, (arm, summary) in enumerate(data["summary"].items()):
        assert summary["mean_R@1"]["n"] == 1
        assert header[12 + i * width: 12 + (i + 1) * width].strip() == arm
        assert row[12 + i * width: 12 + (i + 1) * width].strip().startswith(f"{summary['mean_R@1']['mean']:.3f}"), arm
        assert summary["final_loss"]["values"] == [r["metrics"]["final_loss"] for r in data["runs"] if r["arm"] == arm]
    gain = data["gains"]["recaptioned_vs_original"]["mean_R@1"]
    runs = {r["arm"]: r["metrics"]["mean_R@1"] for r in data["runs"]}
    assert gain["mean"] == pytest.approx(runs["recaptioned"] - runs["original"], abs=1e-6)
    assert f"gain recaptioned_vs_original (mean_R@1): {gain['mean']:+.3f}" in data["table"]


def test_report_shows_the_ab(result, ab):
    data, _ = result
    out = ab[0]
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    section = html[html.index('<section id="downstream">'):]
    section = section[:section.index("</section>")]
    assert "<th>original</th><th>recaptioned</th><th>unfiltered</th>" in section
    assert f"{data['summary']['original']['mean_R@1']['mean']:.3f}" in section
    assert "recaptioned_vs_original" in section


def test_retrieval_equals_open_clip_train_metrics_on_unique_captions():
    from open_clip_train.train import get_clip_metrics

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(40, 16), dim=1)
    ours = retrieval_metrics(img, txt, torch.arange(40))
    theirs = get_clip_metrics(img, txt, torch.tensor(10.0))
    for key in ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@10",
                "image_to_text_mean_rank", "text_to_image_mean_rank"):
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-4), key


def test_retrieval_counts_identical_captions_as_one_text():
    img = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    txt = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # text 0 "B" for image 2, text 1 "A" for images 0, 1
    m = retrieval_metrics(img, txt, torch.tensor([1, 1, 0]))
    # image 1 (0.8, 0.6) prefers text "A" (0.8 > 0.6): right; all three images are right at R@1
    assert m["image_to_text_R@1"] == 1.0
    # text "A": best image is image 0 (score 1.0) -> right; text "B": image 2 (1.0) -> right
    assert m["text_to_image_R@1"] == 1.0
    m = retrieval_metrics(img, txt, torch.tensor([1, 0, 0]))  # image 1 now labelled "B"
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)  # image 1 ranks "A" first
    assert m["text_to_image_R@1"] == 1.0  # "A" -> image 0; "B" -> image 2 (one of its two images)


def test_collapsed_model_scores_zero_not_one():
    same = torch.nn.functional.normalize(torch.ones(5, 4), dim=1)
    m = retrieval_metrics(same, same, torch.arange(5))  # every score ties
    assert m["image_to_text_R@1"] == 0.0 and m["text_to_image_R@1"] == 0.0
    assert m["image_to_text_R@5"] == 1.0  # 4 wrong texts tie: the right one is still in the top 5


def test_paired_gain_and_summary_by_hand():
    a = [{"m": 0.10}, {"m": 0.20}, {"m": 0.30}]
    b = [{"m": 0.15}, {"m": 0.27}, {"m": 0.36}]
    g = paired_gain(a, b, "m")  # differences 0.05, 0.07, 0.06: mean 0.06, std 0.01
    assert g["mean"] == pytest.approx(0.06) and g["std"] == pytest.approx(0.01)
    assert g["mean_minus_2std"] == pytest.approx(0.04) and g["significant"]
    assert g["verdict"] == "real gain"
    noisy = paired_gain(a, [{"m": 0.3}, {"m": 0.1}, {"m": 0.3}], "m")
    assert not noisy["significant"] and noisy["verdict"] == "not significant"
    assert paired_gain(b, a, "m")["verdict"] == "real loss"
    assert paired_gain(a[:1], b[:1], "m")["verdict"] == "one seed: no verdict"
    assert summarize_arm(a)["m"]["std"] == pytest.approx(0.1)


def test_clear_errors(tmp_path, ab, capsys):
    out, argv = ab
    assert main(["eval-downstream", str(tmp_path), *argv[2:]]) == 2
    assert "manifest.json" in capsys.readouterr().err
    bad_held = argv[:3] + [str(tmp_path / "missing-*.tar")] + argv[4:]
    assert main(bad_held) == 2
    assert "matches no file" in capsys.readouterr().err
    bad_model = [*argv, "--model", "no-such-model"]
    assert main(bad_model) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main([*argv, "--compare", "original:nope"]) == 2
    assert "unknown arm" in capsys.readouterr().err
    assert main([*argv, "--parallel", "0"]) == 2
    assert "--parallel must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_scene_world_mode_with_tiny_models(tmp_path, tiny_vlm_dir, tiny_clip_dir, consumer_python):
    root = tmp_path / "scenes"
    overrides = tiny_args(tiny_vlm_dir, tiny_clip_dir, "--set", "output.report=false")
    argv = ["eval-downstream", "--scenes", str(root), "--scene-shards", "2", "--scene-per-shard", "12",
            "--scene-heldout", "16", "--model", "tiny", "--seeds", "2", "--steps", "2", "--batch-size", "4",
            "--credulous-steps", "2", "--trainer-python", consumer_python, *overrides]
    assert main(argv) == 0
    data = json.loads((root / "downstream.json").read_text())
    world = data["scene_world"]
    assert world["rewriter"] == "credulous" and world["credulous_vlm"]["fine_tune"]["steps"] == 2
    assert world["credulous_vlm"]["path"] == str(root / "credulous_vlm")
    manifest = json.loads((root / "filtered/manifest.json").read_text())
    assert manifest["models"]["rewrite"]["model"] == str(root / "credulous_vlm")  # fine-tuned from the tiny VLM
    assert manifest["config"]["policy"]["reject_misaligned_orig"] is True
    assert data == json.loads((root / "filtered" / "downstream.json").read_text())
    assert manifest["config"]["policy"]["repair"]["drop_sentences_below"] is None  # the filter arm: no repair
    repaired = json.loads((root / "repaired/manifest.json").read_text())["config"]["policy"]
    assert repaired["repair"]["drop_sentences_below"] == 0.5 and repaired["reject_misaligned_orig"] is False
    assert [a["name"] for a in data["arms"]] == ["original", "filtered", "unfiltered", "repaired"]
    quality = data["scene_world"]["caption_quality"]
    assert quality["original"]["samples"] == 24
    assert quality["original"]["terse_wrong"] == pytest.approx(round(0.2 * 12) * 2 / 24, abs=1e-3)
    assert quality["unfiltered"]["terse_right"] + quality["unfiltered"]["terse_wrong"] == 0  # all rewrites
    assert set(data["gains"]) == {"filtered_vs_original", "filtered_vs_unfiltered", "unfiltered_vs_original",
                                  "repaired_vs_original", "repaired_vs_filtered"}
    assert len(data["runs"]) == 8 and {r["seed"] for r in data["runs"]} == {0, 1}
    assert [(r["seed"], r["arm"]) for r in data["runs"]] == [(s, a) for s in (0, 1) for a in
                                                            ("original", "filtered", "unfiltered", "repaired")]
    assert data["parallel"] == max(1, (os.cpu_count() or 1))  # cores // 1 thread: runs trained at once
    with tarfile.open(root / "heldout" / "000000.tar") as tar:
        held_captions = [tar.extractfile(m).read() for m in tar if m.name.endswith(".txt")]
    assert data["heldout"]["samples"] == 16 and data["heldout"]["unique_captions"] == len(set(held_captions))


def test_same_seed_same_training_different_seed_not(ab, result, tmp_path, consumer_python):
    """The runner seeds open_clip_train's sample shuffle from --seed (webdataset seeds it from the
    clock otherwise): the same arm and seed give the same loss curve twice, so arms are paired."""
    from vlm_aug.lab.downstream.arms import output_arm
    from vlm_aug.lab.downstream.models import resolve_model
    from vlm_aug.lab.downstream.train import TrainSpec, run_training

    out, _ = ab
    spec = TrainSpec(steps=6, batch_size=BATCH, threads=1, log_every=1)
    model, arm = resolve_model("tiny", tmp_path), output_arm("recaptioned", out)
    curves = [run_training(spec, model, arm, seed, tmp_path / f"logs{i}", consumer_python)["loss_curve"]
              for i, seed in enumerate([5, 5, 6])]
    assert len(curves[0]) == 6
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]
