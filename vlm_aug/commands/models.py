"""`vlm-aug models`: the model presets, their sizes, expected memory, and whether each is here offline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("models", help="list model presets (configs/models/) and which are available offline")
    p.add_argument("--kind", choices=["vlm", "clip"], help="only VLM or only CLIP presets")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="also look for VLMs in DIR/<org>/<name> or DIR/<name> (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per preset instead of a table")
    p.set_defaults(func=cmd_models)


def _run_dtype(dtype: str, kind: str, device: str) -> str:
    """The dtype a preset would run at on `device`: the stages' own rule (`resolve_dtype`)."""
    from vlm_aug.stages.models import resolve_dtype

    if kind == "clip":
        return "float32"  # open_clip loads fp32 unless told otherwise
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def preset_rows(kind=None, search_dirs=(), device: str = "cpu") -> list[dict]:
    """One row per preset: what it is, how big, where it is (or None); memory at the dtype it runs at on
    `device`."""
    from vlm_aug.config.presets import list_presets, offline_location

    rows = []
    for p in list_presets(kind):
        dtype = _run_dtype(p.fields.get("dtype", "auto"), p.kind, device)
        rows.append({
            "preset": p.name, "kind": p.kind, "target": p.target, "model": p.hub_id,
            "pretrained": p.fields.get("pretrained"), "revision": p.fields.get("revision"),
            "params_b": p.params_b, "download_gb": round(p.weights_gb("bfloat16" if p.kind == "vlm" else "float32"), 2),
            "dtype": dtype, "memory_gb": p.memory_gb(dtype), "max_image_tokens": p.max_image_tokens,
            "batch_size": p.fields.get("batch_size"), "batch_size_guidance": p.batch_size_guidance,
            "offline": offline_location(p, search_dirs),
        })
    return rows


def _table(rows: list[dict]) -> str:
    head = ["preset", "kind", "target", "model", "params", "download", "memory (dtype)", "img tok", "batch", "offline"]
    body = [[r["preset"], r["kind"], r["target"],
             r["model"] + (f" / {r['pretrained']}" if r["pretrained"] else ""),
             f"{r['params_b']:.2f} B", f"{r['download_gb']:.1f} GB", f"{r['memory_gb']:.1f} GB ({r['dtype']})",
             str(r["max_image_tokens"] or "-"), r["batch_size_guidance"], r["offline"] or "no"] for r in rows]
    widths = [max(len(str(line[i])) for line in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def cmd_models(args) -> int:
    from vlm_aug.stages.models import resolve_device

    missing = [d for d in args.models_dir if not Path(d).is_dir()]
    if missing:
        print(f"error: --models-dir {missing[0]} is not a folder", file=sys.stderr)
        return 2
    rows = preset_rows(args.kind, args.models_dir, resolve_device("auto"))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(_table(rows))
    here = sum(1 for r in rows if r["offline"])
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    print(f"\n{here} of {len(rows)} presets available offline here. Use one with "
          "`--set vlm.preset=NAME` / `--set clip.preset=NAME` (it replaces the config file's model fields); "
          "memory = weights x 1.25 at the dtype shown"
          + ("; HF_HUB_OFFLINE is set." if offline else "."), file=sys.stdout)
    print("\nEngines here (vlm.engine; docs/engines.md):")
    for name, what in engines_here().items():
        print(f"  {name:<7} {what}")
    return 0


def engines_here() -> dict[str, str]:
    from vlm_aug.stages.engines import available_engines, serve_command

    found = available_engines()
    venv = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
    if venv.exists() and "not installed" in found["vllm"]:
        found["vllm"] = (f"in the engine environment {venv.parents[1].name}, which holds no CLIP (open_clip) on a "
                         f"CPU machine: serve the model from it (`{serve_command(str(venv))}`) and run here "
                         "with vlm.engine: openai (docs/engines.md)")
    import importlib.util

    if importlib.util.find_spec("open_clip") is None:  # .venv-vllm itself: vLLM, but no CLIP to score with
        found["vllm"] += ("; this environment has no open_clip, so `vlm-aug run` cannot score here: serve the model "
                          f"from it (`{serve_command(sys.executable)}`) and run from the main environment with "
                          "vlm.engine: openai")
    return found
