"""What a user gets wrong at the command line ends in `error: ...` naming the input and the fix
(exit 2), never a traceback, and never in someone else's files replaced. Cases from a hostile pass
over the CLI: each crashed, said nothing, or overwrote before."""

import hashlib
import json
from pathlib import Path

import pytest

from helpers import make_shards
from vlm_aug.cli import main

REPO = Path(__file__).resolve().parents[1]
PREVIEW = str(REPO / "configs/preview.yaml")


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dry_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    make_shards(root / "in", n_shards=2, per_shard=3)
    assert main(["run", PREVIEW, "--no-model", "--input", str(root / "in"), "--output", str(root / "out"),
                 "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    return root


def error_of(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_config_files_and_no_input(tmp_path, capsys):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    assert "is not UTF-8 text" in error_of(capsys, ["run", str(binary)])
    assert "is a folder: give a YAML file" in error_of(capsys, ["run", str(tmp_path)])
    assert "no input shards: give --input" in error_of(capsys, ["run", PREVIEW, "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_an_output_folder_of_someone_elses_files_is_left_alone(dry_out, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    (theirs / "shards").mkdir(parents=True)
    (theirs / "README.md").write_text("my notes")
    (theirs / "shards/000000.tar").write_bytes((dry_out / "in/000000.tar").read_bytes())
    before = digest(theirs)
    err = error_of(capsys, ["run", PREVIEW, "--no-model", "--input", str(dry_out / "in"), "--output", str(theirs),
                            "--no-progress"])
    assert "holds files that vlm-aug did not write" in err and "README.md" in err
    assert digest(theirs) == before
    # an output of vlm-aug is one (a rerun goes on), and so is an empty folder
    (tmp_path / "empty").mkdir()
    assert main(["run", PREVIEW, "--no-model", "--input", str(dry_out / "in"), "--output", str(tmp_path / "empty"),
                 "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0
    assert main(["run", PREVIEW, "--no-model", "--input", str(dry_out / "in"), "--output", str(tmp_path / "empty"),
                 "--no-progress", "--no-report", "--set", "report.semantic=false"]) == 0


def test_commands_on_an_output_name_what_is_wrong(dry_out, tmp_path, capsys):
    out = str(dry_out / "out")
    assert "is a file: give a new or empty directory" in error_of(
        capsys, ["export", out, str(dry_out / "in/000000.tar"), "--format", "llava"])
    assert "has no complete shard '999'; its shards: 000000, 000001" in error_of(
        capsys, ["trace", out, "000000_000001", "--shard", "999"])
    assert "--models-dir /no/such/dir is not a folder" in error_of(
        capsys, ["models", "--models-dir", "/no/such/dir"])
    assert "its folder /no/such does not exist" in error_of(
        capsys, ["report", out, "--html", "/no/such/page.html", "--no-semantic"])
    assert main(["report", out, "--html", str(tmp_path), "--no-semantic"]) == 0  # a folder: the page goes in it
    assert (tmp_path / "report.html").stat().st_size > 1000 and not list(tmp_path.glob("*.tmp"))


def test_demo_arguments_and_folders(tmp_path, capsys, monkeypatch):
    for argv, words in ((["--wrong-fraction", "2"], "must be between 0 and 1"),
                        (["--shards", "0"], "must be at least 1"), (["--per-shard", "-1"], "must be at least 1")):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--output", str(tmp_path / "d"), *argv])
        assert exit_.value.code == 2 and words in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "is a file: give a folder" in error_of(capsys, ["demo", "--output", str(afile)])
    mine = tmp_path / "mine"
    (mine / "input").mkdir(parents=True)
    (mine / "input/notes.md").write_text("keep me")
    assert "holds files the demo did not write" in error_of(capsys, ["demo", "--output", str(mine)])
    (mine / "input/notes.md").unlink()
    (mine / "output").mkdir()
    (mine / "output/keep.txt").write_text("keep me")
    assert "holds files vlm-aug did not write" in error_of(capsys, ["demo", "--output", str(mine)])
    assert (mine / "output/keep.txt").read_text() == "keep me"
    # a URL was taken for the local folder ./s3:/bucket/demo, and the demo ran there
    monkeypatch.chdir(tmp_path)
    assert "the demo writes to a local folder, and s3://bucket/demo is a URL" in error_of(
        capsys, ["demo", "--output", "s3://bucket/demo"])
    assert not (tmp_path / "s3:").exists()


def test_a_second_demo_on_a_folder_in_use_stops_before_removing_anything(tmp_path, capsys):
    """A second `vlm-aug demo` on the folder of a running one removed its input/ and output/ (the
    running demo's lease with them) and both went on, mixing their shards. It stops, naming the first."""
    import os
    import subprocess
    import sys
    import time

    root = tmp_path / "d"
    first = subprocess.Popen([sys.executable, "-m", "vlm_aug", "demo", "--output", str(root), "--shards", "2",
                              "--per-shard", "16", "--no-progress", "--no-report", "--set", "report.semantic=false"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not (root / "output/.vlm_aug.lease").exists() and first.poll() is None:
        assert time.monotonic() < deadline, "the first demo never started its run"
        time.sleep(0.05)
    error = error_of(capsys, ["demo", "--output", str(root), "--shards", "1", "--per-shard", "4"])
    log, _ = first.communicate(timeout=300)
    assert first.returncode == 0, log[-3000:]
    assert "is in use by run demo-" in error, error
    assert sorted(p.name for p in (root / "input").iterdir()) == ["000000.tar", "000001.tar"]  # the first's, whole
    assert len(list((root / "output/shards").glob("*.stats.json"))) == 2


def test_a_model_folder_that_is_not_a_checkpoint(dry_out, tmp_path, capsys):
    empty = tmp_path / "model"
    empty.mkdir()
    args = ["run", PREVIEW, "--input", str(dry_out / "in"), "--output", str(tmp_path / "o"), "--no-progress",
            "--set", f"vlm.model={empty}"]
    assert "is not a transformers checkpoint (no config.json)" in error_of(capsys, args)
    (empty / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    # (the CLIP one that is there: preview.yaml's is not cached here, and both are checked before any load)
    args += ["--set", "clip.model=vlm_aug:scene_clip", "--set", "clip.pretrained=null"]
    assert "transformers cannot load its processor" in error_of(capsys, args)


def test_a_damaged_parquet_is_named_with_the_way_to_redo_it(tmp_path, capsys):
    """A complete shard whose parquet was damaged (a disk fault, an edit): stats, trace and a rerun
    ended in a pyarrow traceback; they name the file and the fix, and the fix works."""
    make_shards(tmp_path / "in", n_shards=2, per_shard=4)
    argv = ["run", PREVIEW, "--no-model", "--input", str(tmp_path / "in/*.tar"), "--output", str(tmp_path / "out"),
            "--no-progress", "--no-report", "--set", "report.semantic=false"]
    assert main(argv) == 0
    parquet = tmp_path / "out/shards/000001.parquet"
    parquet.write_bytes(parquet.read_bytes()[:100])
    capsys.readouterr()
    for command in (["stats", str(tmp_path / "out")], ["trace", str(tmp_path / "out"), "s00_0000"],
                    ["report", str(tmp_path / "out"), "--no-semantic"], argv):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{parquet} cannot be read" in err and "remove" in err and "000001.stats.json" in err, command
    (tmp_path / "out/shards/000001.stats.json").unlink()
    assert main(argv) == 0
    assert main(["stats", str(tmp_path / "out")]) == 0
