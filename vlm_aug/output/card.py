"""The dataset card (`README.md` with Hugging Face card metadata) and `croissant.json`,
written from the manifest and the parquet sidecars at the end of every run.

Both describe every shard of the output, not only what the last command did: each shard's input
(its parquet's `shard` column), the run that wrote it and its configuration (its stats), with the
settings of each configuration from the manifest (`configurations`). A setting that differs between
configurations is shown with each one's value; a dry run (`dry_run: true`) is said to be one."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Optional

import yaml

from vlm_aug.formats import ORIG_CAPTION_EXT
from vlm_aug.output.croissant import croissant
from vlm_aug.output.query import differing_settings, failed_inputs, stats
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import public_name, shard_name

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
DRY_LIMITATIONS = (
    "A dry run: the captions are the seed data's own, unchanged; no model rewrote, scored or filtered them, "
    "so they carry every error of the seed data.",
    "The original captions and images are copied from the seed data with their biases and licenses.",
    "Failed samples (an unreadable image or caption, a limit) are absent from the tars; the parquet sidecars "
    "list them with their reason.",
)
DRY_RUN = ("a dry run (`dry_run: true`, `--no-model`): every readable sample is kept with its original caption "
           "(`decision.outcome` = `dry_run`); no VLM rewrote, no CLIP scored and no policy filtered anything")
SHOWN = 20  # input shards and read errors the card's text lists (the front matter names every input)


def size_category(n: int) -> str:
    return next((label for bound, label in SIZE_BOUNDS if n < bound), "n>1B")


def card_metadata(manifest: dict, kept: int, sources: Optional[list[str]] = None) -> dict:
    """The card's front matter; `sources`: the seed data as `input_sources` names it (default: the last
    run's input patterns)."""
    if sources is None:
        sources = [public_name(p) for p in manifest.get("config", {}).get("input", {}).get("paths", [])]
    return {"license": LICENSE_PLACEHOLDER, "license_name": "set-me-to-the-seed-data-license",
            "language": ["en"], "pretty_name": "vlm_aug recaptioned image-text pairs",
            "task_categories": ["image-to-text", "text-to-image"], "size_categories": [size_category(kept)],
            "source_datasets": [f"extended|{p}" for p in sources] or ["original"],
            "annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
            "multilinguality": ["monolingual"], "tags": ["webdataset", "synthetic-captions", "vlm_aug"],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.tar"}]}]}


# ---- what made each shard: its input, its run, its configuration ---------------------------------
def shard_inputs(out: OutputDir, manifest: dict, names: list[str]) -> dict[str, Optional[str]]:
    """Output shard -> the input shard it was read from: the parquet's `shard` column (the input its rows
    came from, whichever run wrote it), else the last run's input list (a shard without rows: its input
    could not be read), else None (an earlier run's shard without rows: its input is not recorded)."""
    listed = {shard_name(u): u for u in _last_inputs(manifest)}
    found: dict[str, str] = {}
    table = out.table(["shard"], shards=names) if names else None
    if table is not None and table.num_rows:
        for row in table.group_by(["out_shard", "shard"], use_threads=False).aggregate([]).to_pylist():
            found.setdefault(row["out_shard"], row["shard"])
    return {n: found.get(n) or listed.get(n) for n in names}


def _last_inputs(manifest: dict) -> list[str]:
    shards = manifest.get("shards") or {}
    return list(shards.get("processed") or []) + list(shards.get("skipped_complete") or [])


def input_sources(manifest: dict, inputs: dict[str, Optional[str]]) -> list[str]:
    """The seed data as the card names it: the last run's input patterns when its inputs made every shard;
    else those patterns (when they made some) and the input of each other shard (an earlier run's)."""
    patterns = [public_name(p) for p in manifest.get("config", {}).get("input", {}).get("paths", [])]
    last = set(_last_inputs(manifest))
    others = {n: u for n, u in inputs.items() if u not in last}
    if not others:
        return patterns
    names = patterns if len(others) < len(inputs) else []
    return names + sorted({public_name(u) for u in others.values() if u} - set(names))


def configuration_settings(manifest: dict, configs: dict) -> dict[str, dict]:
    """fingerprint -> settings of each configuration present (the manifest's `configurations`); when none
    is known (a manifest from before they were recorded), the last run's config, flattened as settings."""
    known = {fp: c["settings"] for fp, c in configs.items() if c.get("settings")}
    if known:
        return known
    flat: dict = {}
    for section, values in (manifest.get("config") or {}).items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            flat[f"{section}.{key}".rstrip(".")] = value
    return {manifest.get("fingerprint") or "config": flat}


def _groups(settings: dict[str, dict], key: str) -> dict[str, list[str]]:
    """JSON of each value `key` has -> the configurations (fingerprints) with it."""
    groups: dict[str, list[str]] = {}
    for fp, values in settings.items():
        shown = json.dumps(values[key], sort_keys=True, default=str) if key in values else "(unused)"
        groups.setdefault(shown, []).append(fp)
    return groups


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _code(text) -> str:
    """`text` (an input name, a shard name, a key, a setting) as one markdown code span that holds it whatever
    it contains: control characters (a newline) shown as escapes (`\\n`), and a fence longer than any run of
    backticks in it, so a name cannot end the span early (no raw HTML or markdown gets out of it). A `|` is
    escaped by `_table` in table cells (outside a table it adds no column)."""
    text = _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), str(text))
    if not text:
        return "` `"
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""  # the reader strips one space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def _fps(fps: list[str]) -> str:
    return ", ".join(_code(fp[:12]) for fp in fps)


def _show(value_json: str) -> str:
    """A value (as JSON) for the card: a string as it is, anything else as JSON; '(unused)' as it is."""
    if value_json == "(unused)":
        return value_json
    value = json.loads(value_json)
    return value if isinstance(value, str) else value_json


def _differs(groups: dict[str, list[str]]) -> str:
    return "differs between configurations: " + "; ".join(f"{_code(_show(value))} ({_fps(fps)})"
                                                          for value, fps in groups.items())


def _value_cell(settings: dict[str, dict], key: str, default) -> str:
    """One value in backticks, or each configuration's when they differ (`default` when none has `key`)."""
    if all(key not in s for s in settings.values()):
        return _code(_show(json.dumps(default, default=str)))
    groups = _groups(settings, key)
    return _code(_show(next(iter(groups)))) if len(groups) == 1 else _differs(groups)


def _cell(value) -> str:
    """One table cell: on one line (`_code` and `_clean` keep names and messages on one), with each `|`
    escaped (GFM reads `\\|` in a cell as a bar, even in a code span; backslashes before it are doubled,
    so the bar stays escaped)."""
    text = "-" if value is None else " ".join(str(value).splitlines())
    return re.sub(r"(\\*)\|", lambda m: m.group(1) * 2 + "\\|", text)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _clean(text, limit: int = 200) -> str:
    """A message for one markdown table cell: one line, no backticks, bars or HTML (`<`, `>` and `&` as
    entities), at most `limit` characters."""
    text = " ".join(str(text).replace("`", "'").replace("|", "/").split())[:limit]
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- sections ------------------------------------------------------------------------------------
def _scores_table(overall: dict) -> list[str]:
    names = {"clip_orig": "original caption (before)", "clip_rewrite": "rewrite (after)",
             "clip_final": "training caption (kept)"}
    qs = ["p0", "p10", "p25", "p50", "p75", "p90", "p100"]
    rows = [[label, overall["scores"][k]["n"], overall["scores"][k]["mean"],
             *[overall["scores"][k]["quantiles"].get(q) for q in qs]] for k, label in names.items()]
    return _table(["CLIP cosine", "n", "mean", *qs], rows)


MODEL_STAGES = (("rewrite (VLM)", "rewrite", "vlm", "vlm.dtype", "dtype"),
                ("score (CLIP)", "score", "clip", "clip.pretrained", "pretrained"))


def _models(manifest: dict, real: dict[str, dict], dry: dict[str, dict]) -> list[str]:
    """The models of each configuration that used models (a dry run uses none). The revision and dtype
    come from the last run's `models` where it loaded the same model, else from the settings."""
    if not real:
        return ["None (a dry run).", ""]
    models = manifest.get("models") or {}
    rows: dict[tuple, list[str]] = {}
    for label, stage, prefix, detail_key, detail in MODEL_STAGES:
        described = models.get(stage) or {}
        for fp, s in real.items():
            name = s.get(f"{prefix}.model", described.get("model"))
            same = described.get("model") == name
            revision = described.get("revision") if same else s.get(f"{prefix}.revision")
            extra = described.get(detail) if same else s.get(detail_key)
            row = (label, _code(public_name(str(name))), "-" if revision is None else _code(revision), extra)
            rows.setdefault(row, []).append(fp)
    header = ["stage", "model", "revision", "dtype / pretrained"]
    if len(rows) > len(MODEL_STAGES):  # a stage used other models (or revisions) in other configurations
        lines = ["The configurations used different models: each row names the configurations (settings "
                 "fingerprints, see Configurations) whose shards it made.", "",
                 *_table([*header, "configurations"], [[*row, _fps(fps)] for row, fps in rows.items()])]
    else:
        lines = _table(header, [list(row) for row in rows])
    if dry:
        lines += ["", f"The shards of configuration(s) {_fps(list(dry))} are {DRY_RUN}."]
    return [*lines, ""]


GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "max_time_s")


def _generation(manifest: dict, real: dict[str, dict]) -> list[str]:
    """The parameters generate() received (temperature/top_p are null without sampling) and the seed; a
    parameter the configurations set differently says so, and other generation settings that differ show."""
    if not real:
        return ["None (a dry run).", ""]
    params = dict(((manifest.get("models") or {}).get("rewrite") or {}).get("params") or {})
    names = list(params) or list(GENERATION_KEYS)
    seed = ((manifest.get("config") or {}).get("generation") or {}).get("seed")
    rows = [[name, _value_cell(real, f"generation.{name}", params.get(name))] for name in names]
    rows.append(["seed", _value_cell(real, "generation.seed", seed)])
    shown = {f"generation.{name}" for name in [*names, "seed"]}
    others = sorted({k for s in real.values() for k in s if k.startswith("generation.") and k not in shown})
    rows += [[key[len("generation."):], _value_cell(real, key, None)] for key in others if len(_groups(real, key)) > 1]
    return [*_table(["parameter", "value"], rows), ""]


POLICY_NOTES = {
    "rewrite": "keep the rewrite when it passes the thresholds, else reject.",
    "fallback": "keep the rewrite when it passes and is not worse than the original by more than "
                "`max_drop`, else keep the original when it passes `min_clip_orig`, else reject.",
    "mix": "per sample, a seeded draw (`decision.mix_draw` in the provenance) below "
           "`mix_rewrite_fraction` prefers the rewrite, otherwise the original (reason `mix_draw`); "
           "thresholds as in `fallback`.",
    "both": f"as `rewrite`, and the original caption is written beside it as `KEY.{ORIG_CAPTION_EXT}`."}


def _setting_items(settings: dict[str, dict], prefix: str, skip: tuple = ()) -> tuple[list[str], list[str]]:
    """-> (`name=value` of each setting under `prefix` that all configurations share, a line for each that
    differs between them naming each configuration's value)."""
    keys = sorted({k for s in settings.values() for k in s if k.startswith(prefix) and k not in skip})
    same, differing = [], []
    for key in keys:
        groups = _groups(settings, key)
        name = key[len(prefix):]
        if len(groups) == 1:
            same.append(_code(f"{name}={_show(next(iter(groups)))}"))
        else:
            differing.append(f"- {_code(name)} {_differs(groups)}")
    return same, (["", *differing, ""] if differing else [])  # a list of its own in markdown


def _policy_section(real: dict[str, dict], dry: dict[str, dict]) -> list[str]:
    """The policy and thresholds of the configurations that had one (a dry run has none) and the input
    limits of all of them."""
    same, differing = _setting_items({**real, **dry}, "limits.")
    limits = ["Input limits: " + ", ".join(same) + "." if same else "Input limits:", *differing]
    if not real:
        return ["No policy and no threshold (a dry run): every readable sample is kept; unreadable ones are errors "
                "with their reason.", *limits]
    names = _groups(real, "policy.name")
    same, differing = _setting_items(real, "policy.", ("policy.name",))
    if len(names) == 1:
        name = json.loads(next(iter(names)))
        lines = [f"Policy {_code(name)} with {', '.join(same)}.", *differing, _capital(POLICY_NOTES.get(name, ""))]
    else:
        lines = [f"The policy {_differs(names)}; all with {', '.join(same) or 'no shared parameter'}.", *differing]
        lines += [f"{_code(json.loads(n))}: {POLICY_NOTES.get(json.loads(n), '')}" for n in names]
    strict = [fp for fp, s in real.items() if s.get("policy.reject_misaligned_orig")]
    if strict:
        which = "" if len(strict) == len(real) else f" (configuration(s) {_fps(strict)})"
        lines.append(f"Samples whose original caption fails `min_clip_orig` are rejected even when the rewrite "
                     f"passes (reason `orig_misaligned`){which}: the rewrite may repeat the original's error.")
    if dry:
        lines.append(f"The shards of configuration(s) {_fps(list(dry))} are {DRY_RUN}.")
    return [*lines, *limits]


def _intro(manifest: dict, summary: dict, shards: dict, sources: list[str], read_errors: dict,
           settings: dict[str, dict]) -> list[str]:
    """Who wrote the shards (every run that wrote one still here), and the seed data: the input of every
    shard, the caption member, and the input shards that could not be read to their end."""
    c = summary["counts"]
    order = [r.get("run_id") for r in manifest.get("runs") or []]
    runs = Counter(sorted(shards["runs"].values(), key=lambda r: (order.index(r) if r in order else -1, str(r))))
    lines = ["# vlm_aug recaptioned dataset", "",
             f"Written by vlm-aug {manifest.get('versions', {}).get('vlm-aug')} (last run "
             f"{_code(manifest.get('run_id'))}, config sha256 {_code(manifest.get('config_sha256'))}). "
             "Full details: `manifest.json`; per-sample history: `vlm-aug trace . KEY`; Croissant metadata: `croissant.json`."]
    if len(runs) > 1:
        lines += ["", f"The shards were written by {len(runs)} runs: " + ", ".join(
            f"{_code(run)} ({n} shard(s))" for run, n in runs.items()) + " (`manifest.json`, `runs`: every run)."]
    listed = ", ".join(_code(name) for name in sources[:SHOWN])
    if len(sources) > SHOWN:
        listed += f" and {len(sources) - SHOWN} more (front matter: `source_datasets`)"
    unknown = sorted(n for n, url in shards["inputs"].items() if url is None)
    if unknown:
        listed += (f"; {len(unknown)} shard(s) of an earlier run whose input is not recorded ("
                   + ", ".join(_code(n) for n in unknown[:SHOWN]) + ")")
    caption = _value_cell(settings, "input.caption_key", manifest.get("config", {}).get("input", {}).get("caption_key"))
    lines += ["", "## Seed data", "", f"Input shards: {listed or '-'}",
              f"({len(shards['inputs'])} shard(s), {c['inputs']} input samples, caption from {caption}).", ""]
    if read_errors:
        lines += [f"Read errors: {len(read_errors)} input shard(s) could not be read to their end (not a tar, an "
                  "empty file, cut short): the samples before the fault are in this dataset, what followed it is "
                  "not (each shard's stats: `read_error`; `vlm-aug stats .`).", "",
                  *_table(["output shard", "input", "read error"],
                          [[_code(name), _code(public_name(shards['inputs'].get(name) or name)), _clean(error)]
                           for name, error in list(read_errors.items())[:SHOWN]])]
        if len(read_errors) > SHOWN:
            lines += ["", f"... and {len(read_errors) - SHOWN} more."]
        lines.append("")
    failed = failed_inputs(manifest, set(shards["inputs"]))
    if failed:
        lines += [f"Failed: {len(failed)} input shard(s) failed in the last run and none of their samples are in "
                  "this dataset (`manifest.json`, `shards.failed`; rerunning the run's command retries them).", "",
                  *_table(["input", "error"], [[_code(public_name(url)), _clean(error)]
                                               for url, error in list(failed.items())[:SHOWN]])]
        if len(failed) > SHOWN:
            lines += ["", f"... and {len(failed) - SHOWN} more."]
        lines.append("")
    return lines


def _prompt(manifest: dict, real: dict[str, dict]) -> list[str]:
    prompt = manifest.get("prompt", {})
    if not real:
        return ["## Prompt template", "", f"None used: {DRY_RUN}.", ""]
    lines = ["## Prompt template", ""]
    templates = _groups(real, "generation.prompt_sha256")
    if len(templates) > 1:
        lines += [f"The configurations used different prompt templates: the template's sha256 {_differs(templates)}. "
                  "The text below is the last run's (`manifest.json` holds only it); each record names its own "
                  "(`generation.prompt_sha256`).", ""]
    text = prompt.get("text", "")
    fence = "`" * max(4, max((len(run) for run in re.findall("`+", text)), default=0) + 1)  # longer than any in it
    return [*lines, f"Template {_code(prompt.get('id'))} (sha256 {_code(prompt.get('sha256'))}), verbatim; "
            "`{caption}` is replaced by the original caption:", "",
            f"{fence}text", text, fence, ""]


def _layout() -> list[str]:
    return ["## Layout", "",
            "`shards/NAME.tar`: `KEY.<image ext>` (one format per output, `output.normalize_image_format`: "
            "input bytes when already in it, else re-encoded, recorded in `source.image_reencoded_to`), `KEY.txt` (training caption), `KEY.json` (provenance, "
            f"schema `vlm_aug.sample/1`); with policy `both` also `KEY.{ORIG_CAPTION_EXT}` (the original "
            "caption). `shards/NAME.parquet`: one row per input sample. `shards/sizes.json`: kept samples per tar.",
            ""]


def _setting_shown(settings: Optional[dict], key: str) -> str:
    """'?' for a configuration whose settings are unknown; '(unused)' for a key it leaves out because it
    does not apply (temperature without sampling, vLLM's settings under another engine)."""
    if settings is None:
        return "?"
    return json.dumps(settings[key], default=str) if key in settings else "(unused)"


def _configurations(configs: dict) -> list[str]:
    """Every configuration present, with its share of the data; the settings that differ between them."""
    if len(configs) <= 1:
        return ["All shards were made with one configuration (its settings fingerprint is in each shard's "
                "stats and in `manifest.json`).", ""]
    keys = differing_settings(configs)
    rows = [[_code(fp[:12]), c["shards"], c["inputs"], c["kept"],
             *[_code(_setting_shown(c.get("settings"), k)) for k in keys]] for fp, c in configs.items()]
    return ["This dataset mixes configurations (runs appended with `--allow-config-change`); each shard's "
            "stats name its own (`fingerprint`), and `manifest.json` lists each one's settings under "
            "`configurations`.", "",
            *_table(["settings", "shards", "inputs", "kept", *[_code(k) for k in keys]], rows), ""]


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

    def redundant(f: dict) -> str:  # the share's base: the captions of two or more sentences
        if f.get("multi_sentence") is None:
            return num(f["redundant_share"], "{:.1%}")
        return f"{f['redundant']} of {f['multi_sentence']}" + (f" ({f['redundant_share']:.1%})" if f["multi_sentence"] else "")

    rows = [[s, semantic[s]["n"], num(semantic[s]["diversity"]["vendi"], "{:.2f}"),
             num(semantic[s]["diversity"].get("distinct_meanings"), "{:.1f}"),
             num(semantic[s]["diversity"]["mean_cosine"], "{:.3f}"), num(semantic[s]["near_duplicate_share"], "{:.1%}"),
             redundant(semantic[s]),
             num((semantic[s].get("alignment") or {}).get("mauve"), "{:.3f}"),
             num((semantic[s].get("alignment") or {}).get("frechet"), "{:.4f}")] for s in sets]
    emb, st = semantic.get("embedder") or {}, semantic.get("settings") or {}
    return [*head, f"Sentence embeddings of {emb.get('name')} ({emb.get('source')}, weights sha256 "
            f"`{emb.get('sha256')}`), on a seeded sample of at most {st.get('sample')} samples. Vendi score (cosine kernel) and distinct "
            "meanings (Vendi of cos^16): higher = more diverse. Near-duplicates: captions of other images "
            f"at cosine >= {st.get('near_duplicate_cosine')}. Redundant: of the captions with two or more sentences, "
            f"those with two sentences at cosine >= {st.get('redundant_sentence_cosine')}. MAUVE (higher) and "
            "Fréchet distance (lower): closeness to the reference captions, when one was given.", "",
            *_table(["captions", "n", "Vendi", "distinct meanings", "mean cosine", "near-duplicates",
                     "redundant (of multi-sentence captions)", "MAUVE", "Fréchet"], rows),
            ""]


def _repairs_and_guards(totals: dict) -> list[str]:
    lines = []
    if totals.get("repaired"):
        lines.append(f"Sentence repair: {totals['repaired']} kept caption(s) are rewrites without "
                     f"{totals['sentences_dropped']} sentence(s) whose CLIP cosine fell under "
                     "`policy.repair.drop_sentences_below` (`decision.outcome` = `repaired`; the dropped sentences "
                     "and their cosines are in `decision.repair`; their score below is the repaired caption's, "
                     "`scoring.clip_repaired`).")
    if totals.get("guards"):
        lines.append("Text guards (before scoring): "
                     + ", ".join(f"{_code(k)} {n}" for k, n in totals["guards"].items())
                     + " (`generation.guards`, `generation.stripped`).")
    return [*lines, ""] if lines else []


def _split(settings: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """-> (configurations that used models, dry-run configurations)."""
    real = {fp: s for fp, s in settings.items() if not s.get("dry_run")}
    return real, {fp: s for fp, s in settings.items() if s.get("dry_run")}


def card_body(manifest: dict, summary: dict, shards: dict, configs: dict, sources: Optional[list[str]] = None,
              read_errors: Optional[dict] = None) -> str:
    """The card's markdown: seed data, prompt, models, parameters, filters, counts, scores, limits.
    `shards`: {"inputs": output shard -> input URL or None, "runs": output shard -> run id}."""
    settings = configuration_settings(manifest, configs)
    real, dry = _split(settings)
    if sources is None:
        sources = input_sources(manifest, shards["inputs"])
    c = summary["counts"]
    scores = _scores_table(summary) if real else ["No CLIP scores (a dry run)."]
    limitations = list(LIMITATIONS) if real else list(DRY_LIMITATIONS)
    if real and dry:
        limitations.append(f"The shards of configuration(s) {_fps(list(dry))} are a dry run: their captions are the "
                           "seed data's own, unchanged and unchecked.")
    lines = [*_intro(manifest, summary, shards, sources, read_errors or {}, settings), *_prompt(manifest, real),
             "## Models", "", *_models(manifest, real, dry),
             "## Generation parameters", "", *_generation(manifest, real),
             "## Filters and thresholds", "", *_policy_section(real, dry), "",
             "## Configurations", "", *_configurations(configs),
             "## Counts", "",
             *_table(["inputs", "kept", "rejected", "error"], [[c["inputs"], c["kept"], c["rejected"], c["error"]]]),
             "", *_table(["status:reason", "samples"], [[k, v] for k, v in summary["reasons"].items()]), "",
             *_repairs_and_guards(manifest.get("totals") or {}),
             "## Score distributions", "", *scores, "",
             *_semantic(manifest.get("semantic")),
             *_layout(),
             "## Known limitations", "", *[f"- {item}" for item in limitations], ""]
    return "\n".join(lines)


def _description(kept: int, manifest: dict, real: dict[str, dict], dry: dict[str, dict]) -> str:
    if not real:
        return f"{kept} image-caption pairs with their original captions (a dry run of vlm-aug: no model rewrote, " \
               "scored or filtered them)."
    rewrite = (manifest.get("models") or {}).get("rewrite") or {}
    vlms = sorted({public_name(str(s.get("vlm.model", rewrite.get("model")))) for s in real.values()})
    text = f"{kept} image-caption pairs whose captions were rewritten by {', '.join(vlms)} and checked with CLIP"
    return text + ("; the shards of a dry run keep their original captions." if dry else ".")


def write_card(out_path: str, manifest: dict) -> dict:
    """Write `README.md` and `croissant.json` into the output directory; returns the card metadata."""
    out = OutputDir(out_path)
    all_stats: list[dict] = []
    found = stats(out, per_shard=False, shard_stats=all_stats)
    summary = found["overall"]
    names = [s["shard"] for s in all_stats]
    shards = {"inputs": shard_inputs(out, manifest, names), "runs": {s["shard"]: s.get("run_id") for s in all_stats}}
    sources = input_sources(manifest, shards["inputs"])
    metadata = card_metadata(manifest, summary["counts"]["kept"], sources)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    body = card_body(manifest, summary, shards, found["configurations"], sources, found["read_errors"])
    out.write_text("README.md", f"---\n{front}---\n\n{body}")
    settings = configuration_settings(manifest, found["configurations"])
    real, dry = _split(settings)
    fingerprints = {s["shard"]: s.get("fingerprint") for s in all_stats}
    document = croissant(manifest, shards["inputs"], shards["runs"], "vlm_aug-recaptioned",
                         _description(summary["counts"]["kept"], manifest, real, dry),
                         "https://example.invalid/set-the-license", settings=settings, fingerprints=fingerprints)
    out.write_json(out.top("croissant.json"), document)
    return metadata
