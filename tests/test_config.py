"""Bad configs are refused before any model loads, naming the field and the fix."""

import time
from pathlib import Path

import pytest

from helpers import make_shards
from vlm_aug.cli import main
from vlm_aug.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,words", [
    ("vlm:\n  modle: x\n", ["vlm.modle", "unknown key", "did you mean 'model'?", "allowed here: ", "batch_size"]),
    ("generation:\n  captions:\n    - name: a\n      prompt: p\n      promt: x\n",
     ["generation.captions.0.promt", "did you mean 'prompt'?", "allowed here: name, prompt"]),
    ("colour: red\n", ["colour: unknown key (allowed here: clip, dry_run"]),
    ("vlm:\n  batch_size: many\n", ["vlm.batch_size", "integer"]),
    ("policy:\n  min_clip_rewrite: 3\n", ["policy.min_clip_rewrite", "less than or equal to 1"]),
    ("policy:\n  name: best\n", ["policy.name", "'rewrite', 'fallback', 'both' or 'mix'"]),
    ("executor: spark\n", ["executor", "'auto', 'local' or 'ray'"]),
    ("input:\n  caption_key: 'json caption'\n", ["input.caption_key", "json:FIELD"]),
    ("- just\n- a list\n", ["must be a mapping"]),
])
def test_config_errors_name_the_field(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    for word in words:
        assert word in str(err.value)


def test_every_shipped_config_is_valid():
    for path in (REPO / "configs").glob("*.yaml"):
        load_config(path)


def test_output_that_is_the_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="would overwrite the input"):
        load_config(None, [f"input.paths=['{tmp_path}/out/shards/*.tar']", f"output.path={tmp_path}/out"])


def test_cli_refuses_before_loading_models(tmp_path, capsys):
    make_shards(tmp_path / "in", n_shards=1, per_shard=2)
    bad_prompt = tmp_path / "noplaceholder.yaml"
    bad_prompt.write_text("id: bad\ntext: Describe the image.\n")
    start = time.monotonic()
    code = main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(tmp_path / "out"), "--set", f"generation.prompt={bad_prompt}", "--no-progress"])
    assert code == 2 and time.monotonic() - start < 10
    assert "generation.prompt" in capsys.readouterr().err
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "nothing*.tar")]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["run", str(REPO / "configs/preview.yaml"), "--set", "policy=3"]) == 2


def test_pickle_only_weights_refused_unless_opted_in(tmp_path, tiny_vlm_dir, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    model_dir = tmp_path / "pickled_vlm"
    shutil.copytree(tiny_vlm_dir, model_dir)
    weights = model_dir / "model.safetensors"
    torch.save(load_file(weights), model_dir / "pytorch_model.bin")
    weights.unlink()
    make_shards(tmp_path / "in", n_shards=1, per_shard=2)
    code = main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(tmp_path / "out"), "--set", f"vlm.model={model_dir}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "pickle-format weights" in err and "allow_pickle_weights" in err
