"""Caption text: the one sentence splitter (scoring, the report, the guards and repair split alike).

A sentence ends at `.`, `!`, `?` or `…` (closing quotes and brackets after it stay with it) followed
by white space, or at `。`, `！`, `？` with or without space after it (Chinese and Japanese put
none). A `.` is not an end after an abbreviation that never ends a sentence (`e.g.`, `Mr.`, `vs.`),
after an initial or initialism (`J. R. R. Tolkien`, `U.S.`), before a word in lower case, or after
an item number that stands alone (`1. A red circle.`). Each split sentence is scored by CLIP and may
be dropped by repair, so a wrong split drops half a sentence and keeps the other half.
No library is used: the rule-based splitters (pysbd, NLTK's punkt with its data files) are either
unmaintained or need data this tool cannot download; these rules are the ones caption text needs.
"""

from __future__ import annotations

import re

# `.`, `!`, `?`, `…` or a CJK end, the closing quotes and brackets after it, then the space
_CANDIDATE = re.compile(r"([.!?…]|[。！？])([\"'”’)\]»」』）]*)(\s*)")
_CJK_END = "。！？"
_CJK_TAIL = re.compile(r"[。！？][\"'”’)\]»」』）]*$")
# abbreviations after which a `.` does not end a sentence, whatever follows (lower case, no dot)
_NEVER_ENDS = frozenset("e.g i.e vs v cf mr mrs ms dr prof st jr sr mt approx ca fig no nos".split())
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # J, U.S, e.g


def _ends_here(text: str, match: re.Match, start: int) -> bool:
    """Whether `match` (a candidate end) ends the sentence that began at `start`."""
    mark, space, after = match.group(1), match.group(3), match.end()
    if after >= len(text):
        return False  # the text's own end
    if mark in _CJK_END:
        return True
    if not space:
        return False  # `3.5 m`, `U.S.A`, `example.com`
    if mark != ".":
        return True
    before = text[start:match.start(1)]
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    if text[after].islower():
        return False  # `e.g. circles`, `a U.S. flag`
    if word.lower() in _NEVER_ENDS or _INITIALS.fullmatch(word):
        return False  # `vs. A large square`, `J. R. R. Tolkien`
    if word.isdigit() and before.strip() == word:
        return False  # `1. A red circle.`: the number goes with its item
    return True


def split_sentences(text: str) -> list[str]:
    text = text or ""
    sentences, start = [], 0
    for match in _CANDIDATE.finditer(text):
        if _ends_here(text, match, start):
            sentences.append(text[start:match.end(2)].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def join_sentences(sentences: list[str]) -> str:
    """Sentences back into one text: a space between them, none after a CJK end (`。`)."""
    text = ""
    for sentence in sentences:
        text += sentence if not text or _CJK_TAIL.search(text) else " " + sentence
    return text
