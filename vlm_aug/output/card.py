"""The dataset card (`README.md` with Hugging Face card metadata) and `croissant.json`,
written from the manifest and the parquet sidecars at the end of every run."""

from __future__ import annotations

import json

import yaml

from vlm_aug.formats import ORIG_CAPTION_EXT
from vlm_aug.output.croissant import croissant
from vlm_aug.output.query import differing_settings, stats
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import public_name

LICENSE_PLACEHOLDER = "other"  # placeholder: set to the seed data's license before publishing
SIZE_BOUNDS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
               (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
LIMITATIONS = (
    "Rewrites are machine-generated: they can state things that are not in the image. CLIP agreement "
    "(the scores below) is a weak check: CLIP favours salient objects and misses counts, positions and text.",
    "CLIP's text encoder reads at most `context_length` tokens, so long rewrites are scored on their beginning; "
    "the per-sentence scores (`scoring.clip_sentences`) cover the rest.",
    "Thresholds are absolute cosines and depend on the CLIP model; they do not transfer between models.",
    "The original captions and images are copied from the seed data with their biases and licenses.",
    "Rejected and failed samples are absent from the tars; the parquet sidecars list them with their reason.",
)


def size_category(n: int) -> str:
    return next((label for bound, label in SIZE_BOUNDS if n < bound), "n>1B")


def card_metadata(manifest: dict, kept: int) -> dict:
    inputs = manifest.get("config", {}).get("input", {}).get("paths", [])
    return {"license": LICENSE_PLACEHOLDER, "license_name": "set-me-to-the-seed-data-license",
            "language": ["en"], "pretty_name": "vlm_aug recaptioned image-text pairs",
            "task_categories": ["image-to-text", "text-to-image"], "size_categories": [size_category(kept)],
            "source_datasets": [f"extended|{public_name(p)}" for p in inputs] or ["original"],
            "annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
            "multilinguality": ["monolingual"], "tags": ["webdataset", "synthetic-captions", "vlm_aug"],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.tar"}]}]}


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join("-" if v is None else str(v) for v in row) + " |" for row in rows]


def _scores_table(overall: dict) -> list[str]:
    names = {"clip_orig": "original caption (before)", "clip_rewrite": "rewrite (after)",
             "clip_final": "training caption (kept)"}
    qs = ["p0", "p10", "p25", "p50", "p75", "p90", "p100"]
    rows = [[label, overall["scores"][k]["n"], overall["scores"][k]["mean"],
             *[overall["scores"][k]["quantiles"].get(q) for q in qs]] for k, label in names.items()]
    return _table(["CLIP cosine", "n", "mean", *qs], rows)


def _models(manifest: dict) -> list[str]:
    models = manifest.get("models", {})
    rows = [[stage, f"`{public_name(str(m.get('model')))}`", f"`{m.get('revision')}`", m.get("dtype", m.get("pretrained"))]
            for stage, m in (("rewrite (VLM)", models.get("rewrite", {})), ("score (CLIP)", models.get("score", {})))]
    return _table(["stage", "model", "revision", "dtype / pretrained"], rows)


def _policy_section(config: dict) -> list[str]:
    policy, limits = config.get("policy", {}), config.get("limits", {})
    lines = [f"Policy `{policy.get('name')}` with " + ", ".join(f"`{k}={v}`" for k, v in policy.items()
                                                                 if k != "name") + "."]
    notes = {"rewrite": "keep the rewrite when it passes the thresholds, else reject.",
             "fallback": "keep the rewrite when it passes and is not worse than the original by more than "
                         "`max_drop`, else keep the original when it passes `min_clip_orig`, else reject.",
             "mix": "per sample, a seeded draw (`decision.mix_draw` in the provenance) below "
                    "`mix_rewrite_fraction` prefers the rewrite, otherwise the original (reason `mix_draw`); "
                    "thresholds as in `fallback`.",
             "both": f"as `rewrite`, and the original caption is written beside it as `KEY.{ORIG_CAPTION_EXT}`."}
    note = notes.get(policy.get("name"), "")
    lines.append(note[:1].upper() + note[1:])
    if policy.get("reject_misaligned_orig"):
        lines.append("Samples whose original caption fails `min_clip_orig` are rejected even when the rewrite "
                     "passes (reason `orig_misaligned`): the rewrite may repeat the original's error.")
    lines.append("Input limits: " + ", ".join(f"`{k}={v}`" for k, v in limits.items()) + ".")
    return lines


def _intro(manifest: dict, summary: dict, n_shards: int) -> list[str]:
    config, c = manifest.get("config", {}), summary["counts"]
    inputs = ", ".join(f"`{public_name(p)}`" for p in config.get("input", {}).get("paths", []))
    return ["# vlm_aug recaptioned dataset", "",
            f"Written by vlm-aug {manifest.get('versions', {}).get('vlm-aug')} (run `{manifest.get('run_id')}`, "
            f"config sha256 `{manifest.get('config_sha256')}`). Full details: `manifest.json`; per-sample "
            "history: `vlm-aug trace . KEY`; Croissant metadata: `croissant.json`.", "",
            "## Seed data", "", f"Input shards: {inputs}",
            f"({n_shards} shard(s), {c['inputs']} input samples, caption from "
            f"`{config.get('input', {}).get('caption_key')}`).", ""]


def _prompt(manifest: dict) -> list[str]:
    prompt = manifest.get("prompt", {})
    return ["## Prompt template", "",
            f"Template `{prompt.get('id')}` (sha256 `{prompt.get('sha256')}`), verbatim; "
            "`{caption}` is replaced by the original caption:", "",
            "````text", prompt.get("text", ""), "````", ""]


def _layout() -> list[str]:
    return ["## Layout", "",
            "`shards/NAME.tar`: `KEY.<image ext>` (one format per output, `output.normalize_image_format`: "
            "input bytes when already in it, else re-encoded, recorded in `source.image_reencoded_to`), `KEY.txt` (training caption), `KEY.json` (provenance, "
            f"schema `vlm_aug.sample/1`); with policy `both` also `KEY.{ORIG_CAPTION_EXT}` (the original "
            "caption). `shards/NAME.parquet`: one row per input sample. `shards/sizes.json`: kept samples per tar.",
            ""]


def _configurations(configs: dict) -> list[str]:
    """Every configuration present, with its share of the data; the settings that differ between them."""
    if len(configs) <= 1:
        return ["All shards were made with one configuration (its settings fingerprint is in each shard's "
                "stats and in `manifest.json`).", ""]
    keys = differing_settings(configs)
    rows = [[f"`{fp[:12]}`", c["shards"], c["inputs"], c["kept"],
             *[f"`{json.dumps((c.get('settings') or {}).get(k, '?'))}`" for k in keys]] for fp, c in configs.items()]
    return ["This dataset mixes configurations (runs appended with `--allow-config-change`); each shard's "
            "stats name its own (`fingerprint`), and `manifest.json` lists each one's settings under "
            "`configurations`.", "", *_table(["settings", "shards", "inputs", "kept", *keys], rows), ""]


def _semantic(semantic: dict | None) -> list[str]:
    """The semantic figures of the caption sets (docs/semantic.md), when the run computed them."""
    if not semantic:
        return []
    head = ["## Semantic figures", ""]
    if "skipped" in semantic:
        return [*head, "Not computed for this run (the reason is in `manifest.json`, `semantic.skipped`).", ""]
    sets = [s for s in ("original", "rewrite", "training", "reference") if s in semantic]

    def num(value, fmt):
        return "-" if value is None else fmt.format(value)

    rows = [[s, semantic[s]["n"], num(semantic[s]["diversity"]["vendi"], "{:.2f}"),
             num(semantic[s]["diversity"].get("distinct_meanings"), "{:.1f}"),
             num(semantic[s]["diversity"]["mean_cosine"], "{:.3f}"), num(semantic[s]["near_duplicate_share"], "{:.1%}"),
             num(semantic[s]["redundant_share"], "{:.1%}"),
             num((semantic[s].get("alignment") or {}).get("mauve"), "{:.3f}"),
             num((semantic[s].get("alignment") or {}).get("frechet"), "{:.4f}")] for s in sets]
    emb, st = semantic.get("embedder") or {}, semantic.get("settings") or {}
    return [*head, f"Sentence embeddings of {emb.get('name')} ({emb.get('source')}, weights sha256 "
            f"`{emb.get('sha256')}`), on a seeded sample of at most {st.get('sample')} samples. Vendi score (cosine kernel) and distinct "
            "meanings (Vendi of cos^16): higher = more diverse. Near-duplicates: captions of other images "
            f"at cosine >= {st.get('near_duplicate_cosine')}. Redundant: a caption with two sentences at cosine >= "
            f"{st.get('redundant_sentence_cosine')}. MAUVE (higher) and Fréchet distance (lower): closeness to the "
            "reference captions, when one was given.", "",
            *_table(["captions", "n", "Vendi", "distinct meanings", "mean cosine", "near-duplicates", "redundant", "MAUVE", "Fréchet"], rows),
            ""]


def _repairs_and_guards(totals: dict) -> list[str]:
    lines = []
    if totals.get("repaired"):
        lines.append(f"Sentence repair: {totals['repaired']} kept caption(s) are rewrites without "
                     f"{totals['sentences_dropped']} sentence(s) whose CLIP cosine fell under "
                     "`policy.repair.drop_sentences_below` (`decision.outcome` = `repaired`; the dropped sentences "
                     "and their cosines are in `decision.repair`).")
    if totals.get("guards"):
        lines.append("Text guards (before scoring): " + ", ".join(f"`{k}` {n}" for k, n in totals["guards"].items())
                     + " (`generation.guards`, `generation.stripped`).")
    return [*lines, ""] if lines else []


def card_body(manifest: dict, summary: dict, n_shards: int, configs: dict) -> str:
    """The card's markdown: seed data, prompt, models, parameters, filters, counts, scores, limits."""
    # the parameters generate() received (temperature/top_p are null without sampling), plus the seed
    generation = {**manifest.get("models", {}).get("rewrite", {}).get("params", {}),
                  "seed": manifest.get("config", {}).get("generation", {}).get("seed")}
    c = summary["counts"]
    lines = [*_intro(manifest, summary, n_shards), *_prompt(manifest),
             "## Models", "", *_models(manifest), "",
             "## Generation parameters", "",
             *_table(["parameter", "value"], [[k, f"`{json.dumps(v)}`"] for k, v in generation.items()]), "",
             "## Filters and thresholds", "", *_policy_section(manifest.get("config", {})), "",
             "## Configurations", "", *_configurations(configs),
             "## Counts", "",
             *_table(["inputs", "kept", "rejected", "error"], [[c["inputs"], c["kept"], c["rejected"], c["error"]]]),
             "", *_table(["status:reason", "samples"], [[k, v] for k, v in summary["reasons"].items()]), "",
             *_repairs_and_guards(manifest.get("totals") or {}),
             "## Score distributions", "", *_scores_table(summary), "",
             *_semantic(manifest.get("semantic")),
             *_layout(),
             "## Known limitations", "", *[f"- {item}" for item in LIMITATIONS], ""]
    return "\n".join(lines)


def write_card(out_path: str, manifest: dict) -> dict:
    """Write `README.md` and `croissant.json` into the output directory; returns the card metadata."""
    out = OutputDir(out_path)
    found = stats(out, per_shard=False)
    summary = found["overall"]
    metadata = card_metadata(manifest, summary["counts"]["kept"])
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    body = card_body(manifest, summary, found["shards"], found["configurations"])
    out.write_text("README.md", f"---\n{front}---\n\n{body}")
    shard_runs = {s["shard"]: s.get("run_id") for s in out.all_stats()}
    description = (f"{summary['counts']['kept']} image-caption pairs whose captions were rewritten by "
                   f"{public_name(str(manifest.get('models', {}).get('rewrite', {}).get('model')))} and checked with CLIP.")
    document = croissant(manifest, shard_runs, "vlm_aug-recaptioned", description,
                         "https://example.invalid/set-the-license")
    out.write_json(out.top("croissant.json"), document)
    return metadata
