"""An output stays true to what it says across reruns, config changes and two runs at once: a run
with other settings is refused (and each of the three ways on works), a changed input shard is
redone, a second concurrent run stops at once, a SIGKILLed run's lease is taken over."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from helpers import make_shards, tiny_args
from ray_helpers import REPO, wait_for
from vlm_aug.cli import main
from vlm_aug.stages.prompts import load_template
from vlm_aug.shards.lease import LEASE_FILE

pytestmark = pytest.mark.timeout(400)


def argv(vlm, clip, inputs, out, *extra):
    return ["run", str(REPO / "configs/preview.yaml"), "--input", str(inputs), "--output", str(out),
            "--no-progress", "--no-report", *tiny_args(vlm, clip), *extra]


def stats(out) -> dict:
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in (out / "shards").glob("*.stats.json")}


def rows(out) -> list[dict]:
    found = []
    for path in sorted((out / "shards").glob("*.parquet")):
        found += [{k: r[k] for k in ("key", "status", "reason", "caption", "caption_rewrite")}
                  for r in pq.read_table(path).to_pylist()]
    return found


@pytest.fixture()
def first_run(tmp_path, tiny_vlm_dir, tiny_clip_dir):
    make_shards(tmp_path / "in", n_shards=3, per_shard=3)
    out = tmp_path / "out"
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, tmp_path / "in/{000000..000001}.tar", out)) == 0
    return tmp_path, out


def test_other_settings_are_refused_before_any_model_loads(first_run, tiny_clip_dir, capsys):
    root, out = first_run
    before = {name: s["run_id"] for name, s in stats(out).items()}
    unloadable = root / "unloadable_vlm"  # found by run.check's model check, but no model can load from it:
    unloadable.mkdir(exist_ok=True)      # the refusal comes first
    (unloadable / "config.json").write_text('{"model_type": "idefics3"}')
    changed = argv(str(unloadable), tiny_clip_dir, root / "in/*.tar", out, "--set", "policy.name=rewrite",
                   "--set", "generation.max_new_tokens=4")
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "generation.max_new_tokens: 8 -> 4" in err and 'policy.name: "fallback" -> "rewrite"' in err
    assert "2 shard(s) with settings" in err
    assert all(way in err for way in ("--overwrite", "--output NEW_DIR", "--allow-config-change"))
    assert {name: s["run_id"] for name, s in stats(out).items()} == before  # nothing written


def test_a_rerun_that_would_make_the_same_samples_is_not_refused(first_run, tiny_vlm_dir, tiny_clip_dir, capsys):
    """The prompt named by its path instead of its id, and mix_rewrite_fraction changed under a policy that
    does not use it, were refused as other settings, though they make the same samples."""
    root, out = first_run
    prompt = REPO / "configs/prompts/dense_v1.yaml"
    assert load_template(str(prompt)).id == json.loads((out / "manifest.json").read_text())["prompt"]["id"]
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", f"generation.prompt={prompt}",
                     "--set", "policy.mix_rewrite_fraction=0.3")) == 0
    assert "2 already complete" in capsys.readouterr().out
    assert len({s["fingerprint"] for s in stats(out).values()}) == 1 and len(stats(out)) == 3
    other = root / "other_text.yaml"  # the same id with other text is another prompt
    other.write_text("id: dense_v1\ntext: 'Describe this image ({caption}) in one sentence.'\n")
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", f"generation.prompt={other}")) == 2
    assert "generation.prompt_sha256" in capsys.readouterr().err


def test_outputs_recorded_before_the_settings_normal_form_are_still_resumed(first_run, tiny_vlm_dir, tiny_clip_dir,
                                                                             capsys):
    """Before a prompt counted by its id, a template given by path was recorded as that path (and
    mix_rewrite_fraction as given under any policy): such an output's shards, their stats rewritten as
    that code wrote them, are resumed as the same settings, not refused."""
    from vlm_aug.record import fingerprint

    root, out = first_run
    prompt = str(REPO / "configs/prompts/dense_v1.yaml")
    for path in (out / "shards").glob("*.stats.json"):  # as written by a run given the path, before
        recorded = json.loads(path.read_text())
        recorded["settings"] = {**recorded["settings"], "generation.prompt": prompt,
                                "policy.mix_rewrite_fraction": 0.3}
        recorded["fingerprint"] = fingerprint(dict(sorted(recorded["settings"].items())))
        path.write_text(json.dumps(recorded))
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", f"generation.prompt={prompt}",
                     "--set", "policy.mix_rewrite_fraction=0.3")) == 0
    assert "2 already complete" in capsys.readouterr().out and len(stats(out)) == 3


def test_overwrite_redoes_everything_with_the_new_settings(first_run, tiny_vlm_dir, tiny_clip_dir):
    root, out = first_run
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", "generation.max_new_tokens=4",
                     "--overwrite")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["fingerprint"] for s in stats(out).values()} == {manifest["fingerprint"]} and len(stats(out)) == 3
    assert [c["shards"] for c in manifest["configurations"].values() if c["shards"]] == [3]


def test_a_new_output_leaves_the_old_one_alone(first_run, tiny_vlm_dir, tiny_clip_dir):
    root, out = first_run
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", root / "other",
                     "--set", "generation.max_new_tokens=4")) == 0
    assert len(stats(root / "other")) == 3 and len(stats(out)) == 2


def test_allow_config_change_appends_and_every_reader_says_so(first_run, tiny_vlm_dir, tiny_clip_dir, capsys):
    root, out = first_run
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", "generation.max_new_tokens=4",
                     "--allow-config-change")) == 0
    fingerprints = {name: s["fingerprint"] for name, s in stats(out).items()}
    assert fingerprints["000000"] == fingerprints["000001"] != fingerprints["000002"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["processed"] for r in manifest["runs"]] == [["000000", "000001"], ["000002"]]
    configs = manifest["configurations"]
    assert sorted(c["shards"] for c in configs.values()) == [1, 2]
    assert configs[fingerprints["000002"]]["settings"]["generation.max_new_tokens"] == 4
    card = (out / "README.md").read_text()
    assert "| settings | shards | inputs | kept | `generation.max_new_tokens` |" in card
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["configurations"]) == 2


def test_a_changed_input_shard_is_redone(first_run, tiny_vlm_dir, tiny_clip_dir, capsys):
    root, out = first_run
    make_shards(root / "new", n_shards=2, per_shard=4)
    os.replace(root / "new/000001.tar", root / "in/000001.tar")  # other samples under the same name
    before = stats(out)
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/{000000..000001}.tar", out)) == 0
    assert "input in/000001.tar changed since its shard was made" in capsys.readouterr().err
    after = stats(out)
    assert after["000000"]["run_id"] == before["000000"]["run_id"]  # untouched
    assert after["000001"]["run_id"] != before["000001"]["run_id"] and after["000001"]["counts"]["inputs"] == 4


def start(cmd, log):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlm_aug", *cmd], stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.fixture()
def slow_inputs(tmp_path):
    make_shards(tmp_path / "in", n_shards=8, per_shard=6)
    return tmp_path


def test_a_second_run_on_a_held_output_stops_at_once(slow_inputs, tiny_vlm_dir, tiny_clip_dir):
    root, out = slow_inputs, slow_inputs / "out"
    cmd = argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out)
    with open(root / "first.log", "w") as log:
        first = start(cmd, log)
        wait_for(lambda: (out / LEASE_FILE).exists(), 120, "the first run's lease")
        holder = json.loads((out / LEASE_FILE).read_text())
        began = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "vlm_aug", *cmd], capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - began
        assert first.wait(timeout=300) == 0, (root / "first.log").read_text()[-2000:]
    assert second.returncode == 2 and elapsed < 10, (elapsed, second.stderr[-1500:])
    assert f"in use by run {holder['run_id']}" in second.stderr and f"pid {first.pid}" in second.stderr
    assert len(stats(out)) == 8 and not list((out / "shards").glob("*.tmp-*"))
    assert not (out / LEASE_FILE).exists()  # released at the end


def test_a_killed_runs_lease_is_taken_over_with_exact_output(slow_inputs, tiny_vlm_dir, tiny_clip_dir):
    root, out = slow_inputs, slow_inputs / "out"
    cmd = argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out)
    with open(root / "killed.log", "w") as log:
        victim = start(cmd, log)
        wait_for(lambda: len(stats(out)) >= 1 if (out / "shards").exists() else False, 180, "a first shard")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    assert (out / LEASE_FILE).exists() and len(stats(out)) < 8  # it died holding the lease, mid-run
    done = subprocess.run([sys.executable, "-m", "vlm_aug", *cmd], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "taking over the lease" in done.stderr and "is gone or silent" in done.stderr
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", root / "clean")) == 0
    assert rows(out) == rows(root / "clean") and len(stats(out)) == 8
    assert not list((out / "shards").glob("*.tmp-*"))


def test_engine_auto_records_the_engine_it_picked_and_resumes_an_explicit_one(first_run, tiny_vlm_dir,
                                                                             tiny_clip_dir):
    """`vlm.engine: auto` is settled where the model runs: its shards carry the settings of the engine
    it picked (here hf: no CUDA), the same as an explicit `vlm.engine: hf`, so a rerun with auto keeps
    the explicit run's shards and the output holds one configuration."""
    root, out = first_run
    before = {name: s["run_id"] for name, s in stats(out).items()}
    assert main(argv(tiny_vlm_dir, tiny_clip_dir, root / "in/*.tar", out, "--set", "vlm.engine=auto")) == 0
    after = stats(out)
    assert {name: after[name]["run_id"] for name in before} == before  # kept, not redone
    assert after["000002"]["run_id"] not in before.values()
    assert len({s["fingerprint"] for s in after.values()}) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    (fp, entry), = manifest["configurations"].items()
    assert fp == manifest["fingerprint"] == after["000002"]["fingerprint"] and entry["shards"] == 3
    assert "vlm.engine" not in entry["settings"] and "vlm.vllm" not in entry["settings"]


def test_engine_auto_that_picks_another_engine_than_the_outputs_is_refused():
    """A worker whose `auto` picks vllm (a CUDA node with vLLM) beside an output made with hf is refused
    at its setup, before any shard; picking the output's engine is not. Its settings are then exactly
    those of the explicit engine."""
    from vlm_aug.config import load_config
    from vlm_aug.record import EngineChanged, RunContext
    from vlm_aug.resume import fingerprint, resolutions, run_settings

    preview = REPO / "configs/preview.yaml"
    explicit = {e: run_settings(load_config(preview, [f"vlm.engine={e}"])) for e in ("hf", "vllm")}
    auto = run_settings(load_config(preview, ["vlm.engine=auto"]))
    assert set(resolutions(auto)) == {fingerprint(s) for s in explicit.values()}
    for engine in ("hf", "vllm"):
        run = RunContext("sha", settings=auto, fingerprint=fingerprint(auto), held=(fingerprint(explicit["hf"]),))
        if engine == "hf":
            run.settle_engine(engine)
        else:
            with pytest.raises(EngineChanged) as err:
                run.settle_engine(engine)
            assert "auto picked 'vllm'" in str(err.value)
            assert all(way in str(err.value) for way in ("--set vlm.engine=", "--overwrite", "--allow-config-change"))
        assert run.settings == explicit[engine] and run.fingerprint == fingerprint(explicit[engine])
    run = RunContext("sha", settings=auto, fingerprint=fingerprint(auto))
    run.settle_engine(None)  # the dry run: no engine, nothing to settle
    assert run.settings == auto
