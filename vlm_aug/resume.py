"""What a rerun may keep. Each committed shard records the fingerprint of the settings that made
it and the identity of its input shard (size, mtime or ETag). A rerun skips a complete shard only
when both still hold; a run whose settings differ from the output's is refused before any model
loads, unless the user says how to go on."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from vlm_aug.config import Config, ConfigError
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import input_identity, public_name, shard_name
from vlm_aug.stages.prompts import load_template

WAYS_ON = ("Ways on:\n"
           "  --overwrite              redo every shard with this run's settings\n"
           "  --output NEW_DIR         write this run somewhere else\n"
           "  --allow-config-change    append: finished shards stay as they are, each shard records its own settings")


class SettingsChanged(ConfigError):
    """The output was made with other settings than this run's."""


def run_settings(config: Config) -> dict[str, Any]:
    settings = config.settings()
    settings["generation.prompt_sha256"] = load_template(config.generation.prompt).sha256
    if config.generation.captions:  # the extra captions' templates, by content
        settings["generation.captions_prompt_sha256"] = {c.name: load_template(c.prompt).sha256
                                                         for c in config.generation.captions}
    if not config.generation.do_sample:  # unused without sampling: changing them changes nothing
        settings.pop("generation.temperature"), settings.pop("generation.top_p")
    return dict(sorted(settings.items()))


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"  {k}: {json.dumps(old.get(k, '(absent)'))} -> {json.dumps(new.get(k, '(absent)'))}"
            for k in keys if old.get(k, "(absent)") != new.get(k, "(absent)")]


def refusal(out: OutputDir, others: dict[str, int], settings: dict) -> str:
    known = out.manifest().get("configurations", {})
    lines = [f"output {out.path} holds shards made with other settings than this run's:"]
    for fp, shards in sorted(others.items(), key=lambda item: str(item[0])):
        if fp is None:
            lines.append(f"- {shards} shard(s) written before vlm_aug recorded settings (unknown settings)")
            continue
        lines.append(f"- {shards} shard(s) with settings {fp[:12]}:")
        old = known.get(fp, {}).get("settings")
        lines += _diff(old, settings) if old else ["  (their settings are not in the manifest)"]
    lines += ["Refusing to mix them into one dataset without being told.", WAYS_ON]
    return "\n".join(lines)


def plan_shards(out: OutputDir, urls: list[str], settings: dict, overwrite: bool,
                allow_change: bool) -> tuple[list[str], list[str]]:
    """-> (shards to do, shards kept as complete). Raises SettingsChanged before any work."""
    if overwrite:
        return list(urls), []
    current = fingerprint(settings)
    complete = {s["shard"]: s for s in out.all_stats()}
    others: dict = {}
    for stats in complete.values():
        if stats.get("fingerprint") != current:
            others[stats.get("fingerprint")] = others.get(stats.get("fingerprint"), 0) + 1
    if others and not allow_change:
        raise SettingsChanged(refusal(out, others, settings))
    todo, kept = [], []
    for url in urls:
        stats = complete.get(shard_name(url))
        if stats is not None and stats.get("input") not in (None, input_identity(url)):
            print(f"vlm-aug: input {public_name(url)} changed since its shard was made "
                  f"({stats['input']} -> {input_identity(url)}): redoing it", file=sys.stderr)
            stats = None
        (kept if stats is not None else todo).append(url)
    return todo, kept
