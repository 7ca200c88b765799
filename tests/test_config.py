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


def test_caption_key_is_an_extension_as_members_are_read():
    """Member extensions are read in lower case, so `TXT` is `txt` (it matched nothing: every sample a
    missing caption); two parts name `KEY.orig.txt`."""
    assert load_config(None, ["input.caption_key=TXT"]).input.caption_key == "txt"
    assert load_config(None, ["input.caption_key=orig.txt"]).input.caption_key == "orig.txt"
    assert load_config(None, ["input.caption_key=json:Caption"]).input.caption_key == "json:Caption"
    with pytest.raises(ConfigError, match="input.caption_key"):
        load_config(None, ["input.caption_key=orig..txt"])
    import argparse

    from vlm_aug.commands.eval_downstream import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval-downstream", "--heldout", "h.tar", "--heldout-caption-key", "TXT"])
    assert args.heldout_caption_key == "txt"


def test_the_config_reference_is_current_and_says_what_every_key_does():
    """docs/config.md is made from the config classes (their comments); regenerate it when they change."""
    from vlm_aug.config.reference import reference_markdown

    text = reference_markdown()
    assert (REPO / "docs/config.md").read_text() == text, "run: python -m vlm_aug.config.reference > docs/config.md"
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) > 90 and not [r for r in rows if r.rstrip().endswith("|  |")]  # none without words
    for key in ("output.overwrite", "output.allow_config_change", "dry_run", "generation.top_p", "torch_threads",
                "vlm.vllm.max_model_len", "policy.repair.min_sentences", "ray.num_actors"):
        assert f"| `{key}` |" in text


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
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"),
                 "--output", str(tmp_path / "out2"), "--set", "policy=3"]) == 2
    assert "policy: Input should be a valid dictionary" in capsys.readouterr().err


def test_models_not_found_offline_are_all_named_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Offline and uncached, preview.yaml's run named SmolVLM only; once it was downloaded, the rerun
    loaded it and then failed on the CLIP; an unknown CLIP name or tag also waited for the VLM's load;
    and the failed run left OUT/shards/sizes.json behind."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_shards(tmp_path / "in", n_shards=1, per_shard=2)
    base = ["run", str(REPO / "configs/preview.yaml"), "--input", str(tmp_path / "in/*.tar"), "--no-progress",
            "--set", "executor=local"]
    assert main([*base, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model 'HuggingFaceTB/SmolVLM-256M-Instruct' is not in the local Hugging Face cache" in err
    assert "CLIP weights 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K' is not in the local Hugging Face cache" in err
    assert not (tmp_path / "out").exists()
    start = time.monotonic()
    demo = ["run", str(REPO / "configs/demo.yaml"), "--input", str(tmp_path / "in/*.tar"), "--output",
            str(tmp_path / "out2"), "--no-progress", "--set", "executor=local"]
    for sets, says in ((["clip.model=ViT-B-33", "clip.pretrained=null"], "unknown open_clip model 'ViT-B-33'"),
                       (["clip.model=ViT-B-32", "clip.pretrained=laion2b"], "no pretrained tag 'laion2b' for ViT-B-32")):
        assert main([*demo, *[x for s in sets for x in ("--set", s)]]) == 2
        assert says in capsys.readouterr().err
    assert time.monotonic() - start < 10 and not (tmp_path / "out2").exists()  # no model was loaded


def test_inputs_are_what_the_user_named_and_never_the_outputs_own_shards(tmp_path, capsys):
    """A folder stands for its shards; a brace pattern's names must all exist (a run on fewer shards
    than spelled out said nothing before); a name with glob characters that exists is taken as it is;
    an input in the output's shards/ folder is refused before anything is written (a glob such as
    OUT/*/*.tar got past the check of the pattern's text and the run overwrote the input in place)."""
    import hashlib
    import shutil

    from vlm_aug.shards.read import expand_inputs

    shards = make_shards(tmp_path / "in", n_shards=2, per_shard=2)
    assert expand_inputs([str(tmp_path / "in")]) == [str(s) for s in sorted(shards)]
    assert expand_inputs([str(tmp_path / "in/{000000..000001}.tar")]) == [str(s) for s in sorted(shards)]
    with pytest.raises(FileNotFoundError, match=r"2 of the 4 names it spells out match no file: .*000002.tar"):
        expand_inputs([str(tmp_path / "in/{000000..000003}.tar")])
    odd = tmp_path / "in/shard[1].tar"
    shutil.copy(shards[0], odd)
    assert expand_inputs([str(odd)]) == [str(odd)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="a folder with no shards"):
        expand_inputs([str(tmp_path / "empty")])

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    inside = out / "shards/000000.tar"
    shutil.copy(shards[0], inside)
    before = hashlib.sha256(inside.read_bytes()).hexdigest()
    assert main(["run", str(REPO / "configs/preview.yaml"), "--input", str(out / "*/*.tar"), "--output", str(out),
                 "--no-progress"]) == 2
    assert "lies in the output's shards folder" in capsys.readouterr().err
    assert hashlib.sha256(inside.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000.tar"]


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


def test_set_errors_say_they_came_from_set_and_how_to_write_the_value():
    from vlm_aug.config import ConfigError, load_config

    with pytest.raises(ConfigError) as digits:
        load_config(REPO / "configs/demo.yaml", ["vlm.revision=1234567"])  # a short sha of digits
    assert "with its --set values" in str(digits.value) and "(from --set vlm.revision)" in str(digits.value)
    assert "--set 'vlm.revision=\"1234567\"'" in str(digits.value)
    with pytest.raises(ConfigError, match=r"write a list, e\.g\. --set 'input\.image_exts=\[png\]'"):
        load_config(REPO / "configs/demo.yaml", ["input.image_exts=png"])
    with pytest.raises(ConfigError, match=r"vlm\.procesor_kwargs: .*\(from --set vlm\.procesor_kwargs\.max_pixels\)"):
        load_config(REPO / "configs/demo.yaml", ["vlm.procesor_kwargs.max_pixels=5"])  # a typo above the key set
    assert load_config(REPO / "configs/demo.yaml", ["vlm.revision='1234567'"]).vlm.revision == "1234567"


@pytest.mark.parametrize("key", ["vlm.device", "clip.device"])
def test_a_device_torch_does_not_know_is_a_config_error(key, capsys):
    """`vlm.device=gpu` was a torch traceback at the model load (RuntimeError: Expected one of cpu, cuda, ...)."""
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        load_config(None, [f"{key}={good}"])
    assert main(["run", str(REPO / "configs/demo.yaml"), "--set", f"{key}=gpu"]) == 2
    assert f"{key}: Value error, 'gpu' is not a device: use auto, cpu, cuda, cuda:N" in capsys.readouterr().err
