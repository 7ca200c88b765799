"""`vlm-aug eval-downstream`: does a CLIP trained on vlm_aug's output beat one trained on the originals?

Trains the same small CLIP with open_clip's own trainer on each arm (the run's input with its
original captions, the run's output, any other run's output), same seeds and steps, evaluates
each on held-out shards, prints a side-by-side table and writes OUT/downstream.json.
`--scenes DIR` does the whole offline scene-world A/B (shards, pipeline runs, training).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vlm_aug.config.sections import caption_key


def add_training_args(p) -> None:
    g = p.add_argument_group("training (the same for every arm and seed)")
    from vlm_aug.lab.downstream.models import PRESET_NOTES

    presets = "; ".join(f"{name}: {note}" for name, note in PRESET_NOTES.items())
    g.add_argument("--model", default="scene",
                   help=f"a preset ({presets}), an open_clip model name, or a model config .json (default scene)")
    g.add_argument("--pretrained", help="open_clip pretrained tag to fine-tune from (default: from scratch)")
    g.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    g.add_argument("--seed-base", type=int, default=0, help="first seed (default 0)")
    g.add_argument("--steps", type=int, help="optimizer steps per run (default 300)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    g.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10%% of --steps)")
    g.add_argument("--wd", type=float, default=0.1)
    g.add_argument("--threads", type=int, default=1,
                   help="torch threads of the trainer (default 1: on a shared 2-core CPU, 2 threads ran 3x slower)")
    g.add_argument("--parallel", type=int, default=None,
                   help="trainings at once (default: on the CPU, cores // --threads; on a GPU, 1)")
    g.add_argument("--workers", type=int, default=0, help="dataloader workers (default 0)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--precision", default="fp32", help="open_clip_train --precision (amp on a GPU)")
    g.add_argument("--trainer-python", help="Python with webdataset<=0.2.86 (default .venv/consumer)")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoint")
    e = p.add_argument_group("held-out evaluation")
    e.add_argument("--heldout", nargs="+", action="extend", help="held-out image-caption shards (never trained on)")
    e.add_argument("--heldout-caption-key", default="txt", type=caption_key,
                   help="caption member or json:FIELD (default txt)")
    e.add_argument("--label-field", default="label", help="json field with a class name, for zero-shot")
    e.add_argument("--template", action="append", dest="templates",
                   help="zero-shot prompt with {} for the class name (repeatable)")
    e.add_argument("--max-heldout", type=int, help="use at most this many held-out samples")
    e.add_argument("--no-trainer-val", action="store_true",
                   help="do not also let open_clip_train evaluate the held-out set itself")


def register(sub) -> None:
    p = sub.add_parser("eval-downstream", help="A/B: train a small CLIP on original vs recaptioned captions")
    p.add_argument("output", nargs="?", help="output directory of a finished `vlm-aug run`")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=OUTDIR",
                   help="another run's output as an extra arm, e.g. unfiltered=out_rewrite (repeatable)")
    p.add_argument("--name", default="recaptioned", help="arm name of OUTPUT (default recaptioned)")
    p.add_argument("--no-original", action="store_true", help="no arm on the input's original captions")
    p.add_argument("--unfiltered", action="store_true",
                   help="add an arm with every rewrite OUTPUT's run made, kept whatever its policy decided")
    p.add_argument("--compare", action="append", default=[], metavar="A:B",
                   help="report the gain of arm B over arm A (default: every arm over original)")
    p.add_argument("--work-dir", help="arms, logs, model configs (default OUTPUT/downstream)")
    p.add_argument("--scenes", metavar="DIR", help="run the offline scene-world A/B in DIR instead")
    p.add_argument("--scene-shards", type=int, default=8, help="scene world: training shards (default 8)")
    p.add_argument("--scene-per-shard", type=int, default=256, help="scene world: samples per shard")
    p.add_argument("--scene-heldout", type=int, default=1000, help="scene world: held-out scenes (default 1000)")
    p.add_argument("--with-mix", action="store_true", help="scene world: add the 50/50 mix arm (5 arms, ~1/4 longer)")
    p.add_argument("--rewriter", choices=["credulous", "shipped"], default="credulous",
                   help="scene world: the VLM of the pipeline runs: 'credulous' (default) is the shipped scene "
                        "VLM fine-tuned to copy a wrong caption's colour or shape (built in DIR/credulous_vlm, "
                        "~5 min, then reused), so the filter has errors to remove; 'shipped' ignores wrong captions")
    p.add_argument("--credulous-steps", type=int, default=None,
                   help="scene world: fine-tuning steps of the credulous rewriter (default: its recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scene world: override a pipeline config value")
    add_training_args(p)
    p.set_defaults(func=cmd_eval_downstream)


def run_on_output(args) -> dict:
    from vlm_aug.lab.downstream import DOWNSTREAM_JSON, DownstreamError
    from vlm_aug.lab.downstream.arms import original_arm, output_arm, unfiltered_arm
    from vlm_aug.lab.downstream.experiment import run_experiment
    from vlm_aug.lab.downstream.from_args import build_experiment, parse_pairs

    if not args.output or not args.heldout:
        raise DownstreamError("give OUTPUT (a finished run's directory) and --heldout SHARDS, or --scenes DIR")
    from vlm_aug.lab.downstream.models import resolve_model
    from vlm_aug.lab.downstream.train import trainer_python
    from vlm_aug.shards.read import expand_inputs

    out = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out / "downstream"
    # fail fast, before copying the arms
    expand_inputs(args.heldout), resolve_model(args.model, work), trainer_python(args.trainer_python)
    arms = [] if args.no_original else [original_arm(out, work)]
    arms.append(output_arm(args.name, out))
    if args.unfiltered:
        arms.append(unfiltered_arm(out, work))
    arms += [output_arm(name, Path(path)) for name, path in parse_pairs(args.arm, "=", "--arm")]
    if len({a.name for a in arms}) != len(arms):
        raise DownstreamError(f"arm names must differ: {[a.name for a in arms]}")
    exp = build_experiment(args, work, arms)
    print(f"eval-downstream: {len(arms)} arm(s) x {len(exp.seeds)} seed(s), {exp.spec.steps} steps each, "
          f"model {exp.model.name}")
    return run_experiment(exp, out / DOWNSTREAM_JSON)


def cmd_eval_downstream(args) -> int:
    from vlm_aug.lab.downstream import DOWNSTREAM_JSON, DownstreamError
    from vlm_aug.lab.downstream.from_args import parallel_of

    try:
        parallel_of(args)  # a bad value fails before minutes of work
        if args.scenes:
            from vlm_aug.lab.downstream.scene_ab import run_scene_ab

            result, where = run_scene_ab(args), Path(args.scenes) / DOWNSTREAM_JSON
        else:
            result, where = run_on_output(args), Path(args.output) / DOWNSTREAM_JSON
    except DownstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + result["table"])
    print(f"\nwrote {where} ({result['wall_s']:.0f} s)")
    run_dir = Path(args.scenes) / "filtered" if args.scenes else Path(args.output)
    if args.scenes or (run_dir / "report.html").exists():  # the report shows downstream.json
        from vlm_aug.commands.report import write_run_report

        write_run_report(str(run_dir))
    return 0
