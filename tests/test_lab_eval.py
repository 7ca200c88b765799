"""The lab's evaluation commands: `vlm-aug eval-scenes` on small samples (real shipped scene models, a real
pipeline run) and eval-downstream's zero-shot accuracy on a real tiny open_clip model with tied scores."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_aug.cli import main
from vlm_aug.paths import ASSETS_DIR

REPO = Path(__file__).resolve().parents[1]
scene_models = pytest.mark.skipif(not (ASSETS_DIR / "scene_clip").is_dir(), reason="scene models not shipped")


# ---------------------------------------------------------------- eval-scenes


@pytest.mark.parametrize("flag", ["--n", "--pipeline-samples"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_eval_scenes_refuses_counts_below_one(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval-scenes", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: must be at least 1, got {int(value)}" in capsys.readouterr().err


def test_shard_layout_holds_exactly_the_samples_asked_for():
    from vlm_aug.lab.scenes.pipeline_eval import shard_layout

    assert shard_layout(300) == (4, 75)  # the default: the layout (and so the samples) of before
    assert shard_layout(10) == (2, 5) and shard_layout(2) == (2, 1) and shard_layout(7) == (1, 7)
    assert shard_layout(9) == (3, 3) and shard_layout(1) == (1, 1)
    for n in range(1, 50):
        shards, per_shard = shard_layout(n)
        assert shards * per_shard == n and 1 <= shards <= 4
    with pytest.raises(ValueError):
        shard_layout(0)


def _doc_rows() -> list[str]:
    """First column of the "Measured quality" table of docs/scenes.md, backticks dropped."""
    text = (REPO / "docs/scenes.md").read_text()
    section = text[text.index("## Measured quality"):]
    section = section[:section.index("\n## ", 4)]
    rows = [line.split("|")[1].strip().replace("`", "") for line in section.splitlines() if line.startswith("| ")]
    assert rows[0] == "figure"
    return rows[1:]


def _report(wrong: int, caught_wrong: int, caught: int) -> dict:
    vlm = {"n": 5, "seed": 1, "objects_colour_shape_accuracy": 1.0, "exact_accuracy": 0.8}
    clip = {"pair_accuracy_colour": 1.0, "pair_accuracy_shape": 0.9, "pair_accuracy_size": 0.7,
            "pair_accuracy_position": 0.6, "terse_true_over_wrong": 0.4, "planted_sentence_lowest": 0.5}
    precision = caught_wrong / caught if caught else None
    recall = caught_wrong / wrong if wrong else None
    pipe = {"samples": 10, "wrong": wrong, "caught": caught, "caught_wrong": caught_wrong,
            "precision": precision, "recall": recall, "errors": 0}
    return {"vlm": vlm, "clip": clip, "pipeline": pipe}


def test_summary_prints_every_row_of_the_docs_table():
    from vlm_aug.commands.eval_scenes import summary_lines

    text = "\n".join(summary_lines(_report(wrong=2, caught_wrong=1, caught=2)))
    for row in _doc_rows():
        assert row in text, row
    assert "exact descriptions 0.800" in text
    assert re.search(r"CLIP: true terse caption above a wrong one +0\.400", text)
    assert "precision 0.500, recall 0.500 (1 of 2)" in text


def test_summary_of_a_sample_without_wrong_captions():
    from vlm_aug.commands.eval_scenes import summary_lines

    text = "\n".join(summary_lines(_report(wrong=0, caught_wrong=0, caught=0)))
    assert "precision n/a (nothing caught), recall n/a (no wrong captions in the sample)" in text


@scene_models
@pytest.mark.parametrize("samples,wrong", [(2, 0), (10, 2)])
def test_eval_scenes_on_a_small_sample(tmp_path, capsys, samples, wrong):
    """2 and 10 pipeline samples (seed 987655) hold 0 and 2 wrong captions: exactly that many samples,
    the JSON written, the workdir used, stdout only the summary."""
    out, work = tmp_path / "figures.json", tmp_path / "work"
    argv = ["eval-scenes", "--n", "2", "--pipeline-samples", str(samples), "--json", str(out),
            "--workdir", str(work), "--best-of"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(out.read_text())
    pipe = report["pipeline"]
    assert pipe["samples"] == samples and pipe["wrong"] == wrong and pipe["errors"] == 0
    assert report["vlm"]["n"] == 2 and report["clip"]["n"] == 2
    assert pipe["workdir"] == str(work) and (work / "output/shards/000000.parquet").is_file()
    assert len(list((work / "input").glob("*.tar"))) == {2: 2, 10: 2}[samples]  # 2 x 1, 2 x 5
    stdout = captured.out
    assert not stdout.lstrip().startswith("{") and '"vlm"' not in stdout  # no partial JSON dump
    assert stdout.lstrip().startswith("scene-world quality:")
    for row in _doc_rows():
        assert row in stdout, row
    assert f"pipeline on {samples} fresh samples, {wrong} with a wrong terse caption" in stdout
    if wrong:
        assert pipe["recall"] is not None and f"({pipe['caught_wrong']} of {wrong})" in stdout
    else:
        assert pipe["recall"] is None and "recall n/a (no wrong captions in the sample)" in stdout
    assert str(work) in stdout and str(out) in stdout
    assert "--best-of is only used with --policies" in captured.err


def test_eval_scenes_help_names_the_exact_count_and_workdir(capsys):
    with pytest.raises(SystemExit):
        main(["eval-scenes", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exactly this many" in text and "10 -> 2 x 5" in text
    assert "where the pipeline's scene shards and run go" in text


# ---------------------------------------------------------------- eval-downstream zero-shot

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """The `tiny` preset of eval-downstream, built by open_clip itself (random init, seeded)."""
    import open_clip

    from vlm_aug.lab.downstream.models import register, resolve_model

    choice = resolve_model("tiny", tmp_path_factory.mktemp("tiny_model"))
    register(choice)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(choice.name, pretrained=None)
    return choice, model.eval(), preprocess, open_clip.get_tokenizer(choice.name)


def _images(n: int) -> list:
    gen = torch.Generator().manual_seed(1)
    return [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=gen).to(torch.uint8).numpy())
            for _ in range(n)]


def test_zero_shot_of_a_collapsed_model_scores_zero(tiny_clip, tmp_path):
    """A real checkpoint that collapsed (each tower's final LayerNorm weight 0: every image embeds alike,
    every text too), through `evaluate` as eval-downstream calls it: every class ties, so zero-shot
    scores 0 like retrieval does, not the 0.5 share of the class that sorts first."""
    from vlm_aug.lab.downstream.evaluate import HeldOut, evaluate

    choice, model, _, _ = tiny_clip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    for norm in ("ln_final", "visual.ln_post"):  # the last LayerNorm of each tower: a constant output
        state[f"{norm}.weight"].zero_()
        state[f"{norm}.bias"].copy_(torch.randn(state[f"{norm}.bias"].shape, generator=gen))
    checkpoint = tmp_path / "collapsed.pt"
    torch.save({"state_dict": state}, checkpoint)
    labels = ["blue circle"] * 5 + ["red square"] * 3 + ["green triangle"] * 2
    held = HeldOut(images=_images(10), captions=[f"{label} number {i}" for i, label in enumerate(labels)],
                   labels=labels)
    metrics = evaluate(choice, str(checkpoint), held, ["a {}.", "a photo of a {}."])
    assert metrics["mean_R@1"] == 0.0  # retrieval: tie-safe already
    assert metrics["zero_shot_top1"] == 0.0
    assert metrics["zero_shot_classes"] == 3 and metrics["zero_shot_samples"] == 10


def test_zero_shot_counts_a_tie_for_the_top_as_a_miss(tiny_clip):
    """Real ties from the real tokenizer: two class names past the model's 32-token context truncate to the
    same tokens, so their class embeddings are identical. Each sample's 'image' is its own class's real
    text embedding (cosine 1 with it): the two tied classes tie for the top (misses), the third wins."""
    from vlm_aug.lab.downstream.evaluate import embed_texts, zero_shot

    _, model, _, tokenizer = tiny_clip
    prefix = "a " * 40  # longer than the context: what follows is cut off
    tied_a, tied_b, alone = f"{prefix}blue", f"{prefix}red", "green triangle"
    templates = ["{}"]
    heads = embed_texts(model, tokenizer, [tied_a, tied_b, alone])
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])  # a real, exact tie
    assert (heads[2] @ heads[0]).item() < 0.999
    labels = [tied_a] * 5 + [tied_b] * 3 + [alone] * 2
    img = torch.stack([heads[0]] * 8 + [heads[2]] * 2)
    result = zero_shot(model, tokenizer, img, labels, templates)
    # argmax-first scored the 5 of tied_a (it sorts first) too: 0.7
    assert result["zero_shot_top1"] == pytest.approx(2 / 10)
    assert result["zero_shot_classes"] == 3 and result["zero_shot_samples"] == 10
    # without the tie the same model and prompts score every sample right
    untied = [tied_a] * 8 + [alone] * 2
    heads_untied = embed_texts(model, tokenizer, [tied_a, alone])
    img = torch.stack([heads_untied[0]] * 8 + [heads_untied[1]] * 2)
    assert zero_shot(model, tokenizer, img, untied, templates)["zero_shot_top1"] == 1.0


@scene_models
def test_a_reused_workdir_scores_only_the_shards_of_this_run(tmp_path):
    """A first run of 4 shards, then one of 2 in the same workdir: the second scores its own 2 samples,
    not the earlier run's shards 000002 and 000003 that are still there."""
    from vlm_aug.lab.scenes.pipeline_eval import pipeline_catch_rate

    first = pipeline_catch_rate(n_shards=4, per_shard=1, seed=31, workdir=str(tmp_path))
    second = pipeline_catch_rate(n_shards=2, per_shard=1, seed=32, workdir=str(tmp_path))
    assert first["samples"] == 4 and second["samples"] == 2
    assert (tmp_path / "output/shards/000003.parquet").is_file()  # left alone, and not counted
