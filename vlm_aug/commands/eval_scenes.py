"""`vlm-aug eval-scenes`: the scene models' quality and the pipeline's catch rate, on fresh scenes."""

from __future__ import annotations

import argparse
import json
import sys


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a share of 0 scenes is no measurement)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser("eval-scenes", help="measure the shipped scene models and the pipeline on fresh scenes",
                       description="Prints a summary (the rows of docs/scenes.md's table); --json FILE "
                                   "holds every figure.")
    p.add_argument("--n", type=positive_int, default=300, help="fresh scenes for the model metrics (default 300)")
    p.add_argument("--seed", type=int, default=987654, help="seed of the fresh scenes (never used in training)")
    p.add_argument("--pipeline-samples", type=positive_int, default=300,
                   help="samples for the catch rate, exactly this many (written as up to 4 equal shards: "
                        "300 -> 4 x 75, 10 -> 2 x 5; default 300); with --policies, the scenes compared")
    p.add_argument("--json", help="also write every figure (the summary prints a selection) to this file")
    p.add_argument("--policies", action="store_true",
                   help="instead: filter vs sentence repair (vs best of n with --best-of) with the credulous "
                        "rewriter, against each scene's truth (docs/repair.md; trains the rewriter once, ~3 min)")
    p.add_argument("--best-of", action="store_true", help="with --policies: also best of 4 at temperature 0.7")
    p.add_argument("--workdir", help="where the pipeline's scene shards and run go (default: a new temporary "
                                     "directory); with --policies, where the credulous rewriter and runs go")
    p.set_defaults(func=cmd_eval_scenes)


def _share(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_lines(report: dict) -> list[str]:
    """The summary, one line per row of docs/scenes.md's "Measured quality" table, in its order."""
    vlm, clip, pipe = report["vlm"], report["clip"], report["pipeline"]
    rows = [
        ("VLM: every object named with the right colour and shape",
         f"{_share(vlm['objects_colour_shape_accuracy'])} (exact descriptions {_share(vlm['exact_accuracy'])})",
         "0.90"),
        ("CLIP: true description above one with a colour changed", _share(clip["pair_accuracy_colour"]), "0.95"),
        ("... shape changed", _share(clip["pair_accuracy_shape"]), "0.95"),
        ("... size changed", _share(clip["pair_accuracy_size"]), "-"),
        ("... position changed", _share(clip["pair_accuracy_position"]), "-"),
        ("CLIP: true terse caption above a wrong one", _share(clip["terse_true_over_wrong"]), "-"),
        ("per-sentence: a planted wrong sentence has the lowest sentence cosine",
         _share(clip["planted_sentence_lowest"]), "0.90"),
    ]
    precision = ("n/a (nothing caught)" if pipe["precision"] is None else f"{pipe['precision']:.3f}")
    recall = ("n/a (no wrong captions in the sample)" if pipe["recall"] is None
              else f"{pipe['recall']:.3f} ({pipe['caught_wrong']} of {pipe['wrong']})")
    lines = [f"\nscene-world quality: models on {vlm['n']} fresh scenes (seed {vlm['seed']}), pipeline on "
             f"{pipe['samples']} fresh samples, {pipe['wrong']} with a wrong terse caption"]
    width = max(len(label) for label, _, _ in rows)
    lines += [f"  {label:<{width}}  {value}  (floor {floor})" if floor != "-" else f"  {label:<{width}}  {value}"
              for label, value, floor in rows]
    lines.append("  pipeline (configs/demo.yaml): wrong terse captions caught (rejected, or replaced by a rewrite "
                 f"while CLIP judged the original wrong): precision {precision}, recall {recall}  (floor 0.90 each)")
    if pipe.get("errors"):
        lines.append(f"  pipeline: {pipe['errors']} sample(s) ended in error")
    return lines


def cmd_eval_scenes(args) -> int:
    if args.policies:
        from vlm_aug.lab.scenes.repair_eval import main as policies

        argv = ["--n", str(args.pipeline_samples), "--seed", str(args.seed)]  # the acceptance: 2048
        argv += (["--best-of"] if args.best_of else []) + (["--workdir", args.workdir] if args.workdir else [])
        argv += ["--out", args.json] if args.json else []
        return policies(argv)
    if args.best_of:
        print("eval-scenes: --best-of is only used with --policies; ignored", file=sys.stderr)
    from vlm_aug.lab.scenes.evaluate import eval_models
    from vlm_aug.lab.scenes.pipeline_eval import pipeline_catch_rate, shard_layout
    from vlm_aug.paths import resolve_builtin

    report = eval_models(resolve_builtin("vlm_aug:scene_vlm"), resolve_builtin("vlm_aug:scene_clip"),
                         n=args.n, seed=args.seed)
    n_shards, per_shard = shard_layout(args.pipeline_samples)
    report["pipeline"] = pipeline_catch_rate(n_shards=n_shards, per_shard=per_shard, seed=args.seed + 1,
                                             workdir=args.workdir)
    if args.json:  # before printing: the figures are kept whatever the summary makes of them
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=str)
    print("\n".join(summary_lines(report)))
    print(f"  pipeline input and run: {report['pipeline']['workdir']}"
          + (f"; every figure: {args.json}" if args.json else "; every figure: rerun with --json FILE"))
    return 0
