"""`vlm-aug eval-scenes`: the scene models' quality and the pipeline's catch rate, on fresh scenes."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("eval-scenes", help="measure the shipped scene models and the pipeline on fresh scenes")
    p.add_argument("--n", type=int, default=300, help="fresh scenes for the model metrics (default 300)")
    p.add_argument("--seed", type=int, default=987654, help="seed of the fresh scenes (never used in training)")
    p.add_argument("--pipeline-samples", type=int, default=300, help="samples for the catch rate (default 300)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--policies", action="store_true",
                   help="instead: filter vs sentence repair (vs best of n with --best-of) with the credulous "
                        "rewriter, against each scene's truth (docs/repair.md; trains the rewriter once, ~3 min)")
    p.add_argument("--best-of", action="store_true", help="with --policies: also best of 4 at temperature 0.7")
    p.add_argument("--workdir", help="with --policies: where the credulous rewriter and runs go")
    p.set_defaults(func=cmd_eval_scenes)


def cmd_eval_scenes(args) -> int:
    if args.policies:
        from vlm_aug.lab.scenes.repair_eval import main as policies

        argv = ["--n", str(args.pipeline_samples), "--seed", str(args.seed)]  # the acceptance: 2048
        argv += (["--best-of"] if args.best_of else []) + (["--workdir", args.workdir] if args.workdir else [])
        argv += ["--out", args.json] if args.json else []
        return policies(argv)
    from vlm_aug.lab.scenes.evaluate import eval_models
    from vlm_aug.lab.scenes.pipeline_eval import pipeline_catch_rate
    from vlm_aug.paths import resolve_builtin

    report = eval_models(resolve_builtin("vlm_aug:scene_vlm"), resolve_builtin("vlm_aug:scene_clip"),
                         n=args.n, seed=args.seed)
    per_shard = max(args.pipeline_samples // 4, 1)
    report["pipeline"] = pipeline_catch_rate(n_shards=4, per_shard=per_shard, seed=args.seed + 1)
    vlm, clip, pipe = report["vlm"], report["clip"], report["pipeline"]
    print("\nscene-world quality (fresh scenes)")
    print(f"  VLM: every object right (colour+shape)   {vlm['objects_colour_shape_accuracy']:.3f}  (floor 0.90)")
    print(f"  CLIP: true > one attribute changed  colour {clip['pair_accuracy_colour']:.3f}  shape "
          f"{clip['pair_accuracy_shape']:.3f}  size {clip['pair_accuracy_size']:.3f}  position "
          f"{clip['pair_accuracy_position']:.3f}  colour-or-shape {clip['pair_accuracy_colour_or_shape']:.3f}"
          "  (floor 0.95)")
    print(f"  per-sentence: planted wrong sentence scored lowest {clip['planted_sentence_lowest']:.3f}  (floor 0.90)")
    print(f"  pipeline on {pipe['samples']} samples, {pipe['wrong']} wrong terse captions: caught {pipe['caught']}, "
          f"precision {pipe['precision']:.3f}, recall {pipe['recall']:.3f}  (floor 0.90 each)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1, default=str)
    return 0
