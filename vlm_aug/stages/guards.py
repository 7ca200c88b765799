"""Guards on generated text, before it is scored: what VLMs get wrong in the text itself.

- chat preambles ("Sure! Here is a detailed description of the image:") and sign-offs ("I hope
  this helps!") are stripped and recorded (flags `preamble_stripped`, `signoff_stripped`);
- an unfinished last sentence when generation hit `max_new_tokens` is cut back to the last
  complete sentence (flag `truncated_rewrite`); nothing complete left -> problem `truncated_rewrite`;
- repetition loops (a sentence said again, or an n-gram repeated) -> problem `repetitive_rewrite`;
- refusals ("I'm sorry, but I can't ...") -> problem `refusal`;
- an echo of the prompt or of the original caption only -> problem `echo_rewrite`.

A problem makes the rewrite unusable: the policy treats it like an empty rewrite (the original may
be kept under `fallback`), with the guard's name as the reason. Every flag is in the sample's record
(`generation.guards`, `generation.stripped`) and counted in the shard's stats."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from vlm_aug.text import join_sentences, split_sentences

PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|alright|yes|great)\b[!,.]*\s*)?"
    r"(?:(?:here(?:'s| is| are)|below is|the following is)\b[^.:!\n]{0,80}?(?:description|caption|summary)"
    r"[^.:!\n]{0,40}[:.!]\s*"
    r"|(?:sure|certainly|of course|absolutely)\b[!,.]+\s*"
    r"|(?:in this image|in the image|this image shows|the image shows)\s*[:,]\s*(?=[A-Z]))",
    re.IGNORECASE)
SIGNOFF = re.compile(
    r"(?:\s*(?:i hope (?:this|that) helps|let me know if|feel free to|is there anything else|"
    r"if you (?:have|need) any)[^.!?]*[.!?]?)+\s*$", re.IGNORECASE)
REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:not|'t)|i am unable|i'm unable|"
    r"as an ai\b|i'm not able|i am not able|unfortunately,? i)", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_END = re.compile(r"[.!?。！？][\"')\]]*\s*$")


@dataclass
class Guarded:
    text: str
    flags: list[str] = field(default_factory=list)  # what was done to the text
    stripped: list[str] = field(default_factory=list)  # the text removed, in order
    problem: Optional[str] = None  # the rewrite is unusable: the reason the policy records


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def repetition(text: str, n: int = 8, max_repeats: int = 3) -> bool:
    """A sentence said twice (normalised), or one n-gram of words `max_repeats` times or more."""
    sentences = [_norm(s) for s in split_sentences(text)]
    sentences = [s for s in sentences if len(s.split()) >= 3]
    if len(sentences) != len(set(sentences)):
        return True
    words = _WORD.findall(text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= max_repeats


def guard(text: str, original: str, rendered_prompt: str, hit_limit: bool) -> Guarded:
    """Apply every guard to a cleaned rewrite; -> the text to score, its flags and any problem."""
    out = Guarded(text.strip())
    if REFUSAL.match(out.text):
        out.problem = "refusal"
        return out
    match = PREAMBLE.match(out.text)
    if match and match.end() < len(out.text):
        out.stripped.append(match.group(0).strip())
        out.flags.append("preamble_stripped")
        rest = out.text[match.end():].lstrip()
        out.text = rest[:1].upper() + rest[1:]
    match = SIGNOFF.search(out.text)
    if match and match.start() > 0:
        out.stripped.append(match.group(0).strip())
        out.flags.append("signoff_stripped")
        out.text = out.text[:match.start()].rstrip()
    if hit_limit and out.text and not _END.search(out.text):
        sentences = split_sentences(out.text)
        complete = [s for s in sentences if _END.search(s)]
        out.flags.append("truncated_rewrite")
        if not complete:
            out.stripped.append(out.text)
            out.text, out.problem = "", "truncated_rewrite"
            return out
        kept = join_sentences(complete)
        out.stripped.append(out.text[len(kept):].strip() if out.text.startswith(kept) else sentences[-1])
        out.text = kept
    if not out.text:
        return out  # the policy calls it empty_rewrite
    if repetition(out.text):
        out.problem = "repetitive_rewrite"
    elif _norm(out.text) in (_norm(original), _norm(rendered_prompt)) or _norm(rendered_prompt).endswith(_norm(out.text)):
        out.problem = "echo_rewrite"
    return out
