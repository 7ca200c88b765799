"""What a rerun may keep. Each committed shard records the fingerprint of the settings that made
it and the identity of its input shard (size, mtime or ETag). A rerun skips a complete shard only
when both still hold; a run whose settings differ from the output's is refused before any model
loads, unless the user says how to go on."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from vlm_aug.config import Config, ConfigError, PolicyConfig, settings_for_engine
from vlm_aug.config.sections import AUTO_ENGINES
from vlm_aug.record import fingerprint
from vlm_aug.shards.layout import OutputDir
from vlm_aug.shards.read import input_identity, public_name, shard_name
from vlm_aug.stages.prompts import load_template

WAYS_ON = ("Ways on:\n"
           "  --overwrite              redo every shard with this run's settings\n"
           "  --output NEW_DIR         write this run somewhere else\n"
           "  --allow-config-change    append: finished shards stay as they are, each shard records its own settings")


class SettingsChanged(ConfigError):
    """The output was made with other settings than this run's."""


class InputElsewhere(ConfigError):
    """Output shards of these names were made from other input files (another dataset?)."""


def run_settings(config: Config) -> dict[str, Any]:
    settings = config.settings()
    template = load_template(config.generation.prompt)
    # a template by its id and its text's sha256, however it was named (`scene_v1` or a path to the same
    # file was a refused rerun that would have made the same samples)
    settings["generation.prompt"], settings["generation.prompt_sha256"] = template.id, template.sha256
    if config.generation.captions:  # the extra captions' templates, by id and content
        settings["generation.captions"] = [{**c, "prompt": load_template(c["prompt"]).id}
                                           for c in settings["generation.captions"]]
        settings["generation.captions_prompt_sha256"] = {c.name: load_template(c.prompt).sha256
                                                         for c in config.generation.captions}
    if not config.generation.do_sample:  # unused without sampling: changing them changes nothing
        settings.pop("generation.temperature"), settings.pop("generation.top_p")
    return _unused_at_default(settings)


def _unused_at_default(settings: dict) -> dict:
    """`policy.mix_rewrite_fraction` at its default under a policy other than mix, which does not use it (a
    change to it is no change); sorted, as fingerprinted. Shared by this run's settings and recorded ones."""
    if settings.get("policy.name") != "mix" and "policy.mix_rewrite_fraction" in settings:
        settings["policy.mix_rewrite_fraction"] = PolicyConfig.model_fields["mix_rewrite_fraction"].default
    return dict(sorted(settings.items()))


def resolutions(settings: dict) -> dict[str, dict]:
    """fingerprint -> settings, for each engine the run may end up with: one, unless `vlm.engine: auto`
    (each worker picks, `RunContext.settle_engine`; the dry run has no engine)."""
    if settings.get("vlm.engine") != "auto" or settings.get("dry_run"):
        return {fingerprint(settings): settings}
    return {fingerprint(s): s for s in (settings_for_engine(settings, e) for e in AUTO_ENGINES)}


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"  {k}: {json.dumps(old.get(k, '(absent)'))} -> {json.dumps(new.get(k, '(absent)'))}"
            for k in keys if old.get(k, "(absent)") != new.get(k, "(absent)")]


def refusal(out: OutputDir, others: dict[str, int], settings: dict, recorded: dict | None = None) -> str:
    """`recorded`: fingerprint -> settings from the shards' own stats (a run stopped before its manifest)."""
    known = {fp: {"settings": s} for fp, s in (recorded or {}).items() if s}
    known.update({fp: c for fp, c in (out.manifest().get("configurations") or {}).items() if c.get("settings")})
    lines = [f"output {out.path} holds shards made with other settings than this run's:"]
    for fp, shards in sorted(others.items(), key=lambda item: str(item[0])):
        if fp is None:
            lines.append(f"- {shards} shard(s) written before vlm_aug recorded settings (unknown settings)")
            continue
        lines.append(f"- {shards} shard(s) with settings {fp[:12]}:")
        old = known.get(fp, {}).get("settings")
        if old:  # vlm.engine auto: against the pick nearest theirs, so only what truly differs shows
            new = min(resolutions(settings).values(), key=lambda s: len(_diff(old, s)))
            lines += _diff(old, new)
        else:
            lines.append("  (their settings are recorded neither in the manifest nor in their stats)")
    lines += ["Refusing to mix them into one dataset without being told.", WAYS_ON]
    return "\n".join(lines)


def plan_shards(out: OutputDir, urls: list[str], settings: dict, overwrite: bool,
                allow_change: bool) -> tuple[list[str], list[str], tuple[str, ...]]:
    """-> (shards to do, shards kept as complete, the fingerprints of this run's possible settings that
    the output's complete shards have: with `vlm.engine: auto`, the workers' pick must be one of them).
    Raises SettingsChanged before any work."""
    current = resolutions(settings)
    complete = {s["shard"]: s for s in out.all_stats()}
    _refuse_old_names(out, urls, complete)
    if overwrite:  # every input redone; the output's other shards must not keep other settings unseen
        redone = {shard_name(u) for u in urls}
        complete = {name: s for name, s in complete.items() if name not in redone}
    others: dict = {}
    now: dict[str, str] = {}  # shard -> the fingerprint its settings have today (this run's, where the same)
    for name, stats in complete.items():
        now[name] = stats.get("fingerprint")
        if now[name] not in current:
            alias = _as_now(stats.get("settings"), settings)
            if alias in current:  # made before a setting's normal form changed: the same samples
                now[name] = alias
                continue
            others[stats.get("fingerprint")] = others.get(stats.get("fingerprint"), 0) + 1
    if others and not allow_change:
        recorded = {s.get("fingerprint"): s.get("settings") for s in complete.values() if s.get("settings")}
        message = refusal(out, others, settings, recorded)
        if overwrite:
            message = (f"--overwrite redoes this run's {len(urls)} input shard(s) only; "
                       f"{sum(others.values())} other shard(s) of the output would keep other settings.\n" + message)
        raise SettingsChanged(message)
    if overwrite:
        return list(urls), [], ()
    held = () if allow_change else tuple(sorted(set(now.values()) & set(current)))
    todo, kept = [], []
    elsewhere = []
    for url in urls:
        stats = complete.get(shard_name(url))
        identity = input_identity(url) if stats is not None and stats.get("input") is not None else None
        if identity is not None and stats["input"] != identity and \
                stats.get("input_url") not in (None, url) and not _same_file(stats["input_url"], url):
            elsewhere.append((stats["input_url"], url))  # another dataset's shard of the same name
            continue
        if identity is not None and stats["input"] != identity:  # (one identity a shard: a request on a store)
            print(f"vlm-aug: input {public_name(url)} changed since its shard was made "
                  f"({stats['input']} -> {identity}): redoing it", file=sys.stderr)
            stats = None
        (kept if stats is not None else todo).append(url)
    if elsewhere:
        shown = "".join(f"\n  {public_name(old)} -> {public_name(new)}" for old, new in elsewhere[:5])
        raise InputElsewhere(
            f"output {out.path} holds {len(elsewhere)} shard(s) made from other input files of the same name and "
            f"other bytes (another dataset?):{shown}{'' if len(elsewhere) <= 5 else chr(10) + '  ...'}\nRefusing to "
            "replace them. Write to another --output; or, to replace the output's shards with these inputs, "
            "--overwrite (or remove those shards' .stats.json files to redo only them)")
    return todo, kept, held


def _refuse_old_names(out: OutputDir, urls: list[str], complete: dict) -> None:
    """An input whose output an earlier vlm_aug named otherwise: a `.tar.xz` or `.tar.bz2` shard (read
    when named, before they were shard suffixes) kept its whole file name (`x.tar.xz.tar`), which is now
    `x.tar`. Redoing it under the new name would write its samples a second time beside the old shard."""
    old = [(u, base) for u in urls if (base := u.rstrip("/").rsplit("/", 1)[-1]) != shard_name(u) and base in complete]
    if old:
        shown = "".join(f"\n  {public_name(u)}: {base}.tar (now {shard_name(u)}.tar)" for u, base in old[:5])
        raise InputElsewhere(
            f"output {out.path} holds {len(old)} shard(s) that an earlier vlm_aug wrote under the input's whole file "
            f"name:{shown}\nRedoing them under the new name would write their samples twice. Write to another "
            "--output; or remove those shards' files (.tar, .parquet, .stats.json under shards/) to redo them here")


def _as_now(recorded: dict | None, settings: dict) -> str | None:
    """The fingerprint a shard's recorded settings have in today's normal form (`run_settings`), where the
    recorded values and this run's differ only in form: the prompt templates named by path where the
    same text (sha256) now counts by its id, `policy.mix_rewrite_fraction` recorded under another policy than
    mix. Outputs made before that normal form keep being resumed."""
    if not recorded:
        return None
    now = dict(recorded)
    if now.get("generation.prompt_sha256") == settings.get("generation.prompt_sha256"):
        now["generation.prompt"] = settings.get("generation.prompt")
    if now.get("generation.captions_prompt_sha256") == settings.get("generation.captions_prompt_sha256"):
        now["generation.captions"] = settings.get("generation.captions")
    return fingerprint(_unused_at_default(now))


def _same_file(old: str, new: str) -> bool:
    """Two spellings of one local file (a relative and an absolute path, a link)."""
    if "://" in old or "://" in new:
        return False
    return os.path.realpath(old) == os.path.realpath(new)
