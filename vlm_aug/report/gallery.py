"""Gallery cards as HTML: thumbnail, captions (added words marked), scores, status and reason.

Cards are rendered on the server so the page shows them without scripts; the
page's script only filters and orders them by their data attributes.
"""

from __future__ import annotations

from html import escape
from typing import Optional

from vlm_aug.report.diversity import WORD_RE, words
from vlm_aug.text import split_sentences


def highlight_added(original: Optional[str], rewrite: Optional[str]) -> str:
    """Escaped `rewrite` with each word absent from `original` wrapped in <mark>."""
    if not rewrite:
        return '<span class="none">(no rewrite)</span>'
    known = set(words(original))
    parts, last = [], 0
    for match in WORD_RE.finditer(rewrite):
        parts.append(escape(rewrite[last:match.start()]))
        word = match.group()
        parts.append(escape(word) if word.lower() in known else f"<mark>{escape(word)}</mark>")
        last = match.end()
    parts.append(escape(rewrite[last:]))
    return "".join(parts)


def _num(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def sentence_list(rewrite: Optional[str], scores: list[float], low: Optional[float],
                  struck: frozenset = frozenset()) -> str:
    """One line per rewrite sentence with its CLIP cosine; sentences under `low` are marked, and the
    sentences sentence repair dropped (`struck`, their indexes) are struck through."""
    if not scores:
        return ""
    sentences = split_sentences(rewrite or "")
    if len(sentences) != len(scores):  # should not happen; show the scores rather than misalign them
        sentences = [f"sentence {i + 1}" for i in range(len(scores))]
    items = []
    for i, (text, score) in enumerate(zip(sentences, scores)):
        is_low = low is not None and score < low
        cls = ' class="low" title="below the rewrite threshold"' if is_low else ""
        shown = f"<s title=\"dropped by sentence repair\">{escape(text)}</s>" if i in struck else escape(text)
        items.append(f'<li{cls}><span class="sc">{score:.3f}</span> {shown}</li>')
    return f'<ol class="sentences">{"".join(items)}</ol>'


def _thumb(card: dict) -> str:
    if card.get("thumb"):
        return f'<img src="{card["thumb"]}" alt="image of {escape(card["key"])}">'
    return f'<div class="placeholder">{escape(card.get("thumb_note") or "no image")}</div>'


def _repaired_score(card: dict) -> Optional[float]:
    """A repaired sample's training caption is the rewrite without its dropped sentences, scored as a
    whole (`scoring.clip_repaired`): its score, not the whole rewrite's; None for any other sample."""
    if card.get("outcome") != "repaired":
        return None
    value = ((card.get("provenance") or {}).get("scoring") or {}).get("clip_repaired")
    return value if isinstance(value, (int, float)) else None


def _new_score(card: dict) -> Optional[float]:
    repaired = _repaired_score(card)
    return repaired if repaired is not None else card.get("clip_rewrite")


def _data_attrs(card: dict) -> str:
    orig, new = card.get("clip_orig"), _new_score(card)
    gain = new - orig if orig is not None and new is not None else None
    reason = card.get("reason") or ("repaired" if card.get("outcome") == "repaired" else "")
    attrs = {"status": card["status"], "reason": reason,
             "views": " ".join(sorted(card["views"])), "key": card["key"],
             "clip-rewrite": "" if new is None else f"{new:.6f}", "gain": "" if gain is None else f"{gain:.6f}"}
    return " ".join(f'data-{k}="{escape(str(v))}"' for k, v in attrs.items())


def card_threshold(card: dict, default: Optional[float]) -> Optional[float]:
    """The rewrite threshold the sample was decided with (its provenance), else `default`."""
    params = ((card.get("provenance") or {}).get("decision") or {}).get("params") or {}
    value = params.get("min_clip_rewrite")
    return value if isinstance(value, (int, float)) else default


def _struck(card: dict) -> frozenset:
    """Indexes of the rewrite sentences that sentence repair dropped (from the record)."""
    dropped = {d.get("sentence") for d in (((card.get("provenance") or {}).get("decision") or {}).get("repair") or {})
               .get("dropped", [])}
    return frozenset(i for i, s in enumerate(split_sentences(card.get("caption_rewrite") or "")) if s in dropped)


def render_card(card: dict, low: Optional[float]) -> str:
    orig, new, repaired = card.get("clip_orig"), card.get("clip_rewrite"), _repaired_score(card)
    trained = repaired if repaired is not None else new  # the training caption's score (_new_score)
    gain = trained - orig if orig is not None and trained is not None else None
    outcome = card.get("outcome") or ""
    reason = f'<span class="reason">{escape(card["reason"])}</span>' if card.get("reason") else ""
    final = escape(card["caption"]) if card.get("caption") else '<span class="none">(not kept)</span>'
    gain_cls = "up" if gain is not None and gain > 0 else "down" if gain is not None and gain < 0 else ""
    detail = ((card["provenance"].get("source") or {}).get("error_detail")) or ""
    return f"""<article class="card {escape(card['status'])}" {_data_attrs(card)}>
<div class="thumb">{_thumb(card)}</div>
<div class="body">
<header><span class="badge {escape(card['status'])}">{escape(card['status'])}</span>{reason}
<code class="key" title="{escape(card.get('shard') or '')}">{escape(card['key'])}</code></header>
<dl>
<dt>original</dt><dd class="orig">{escape(card.get('caption_orig') or '') or '<span class="none">(none)</span>'}</dd>
<dt>rewrite</dt><dd class="rewrite">{highlight_added(card.get('caption_orig'), card.get('caption_rewrite'))}</dd>
<dt>training</dt><dd class="final">{final} <span class="outcome">{escape(outcome)}</span></dd>
</dl>
<div class="scores">CLIP <b>{_num(orig)}</b> &rarr; <b>{_num(new)}</b>{
    f' &rarr; repaired <b>{_num(repaired)}</b>' if repaired is not None else ''}
<span class="gain {gain_cls}">{_num(gain, signed=True)}</span></div>
{sentence_list(card.get('caption_rewrite'), card.get('clip_sentences') or [], card_threshold(card, low),
               _struck(card))}
{f'<p class="detail">{escape(detail)}</p>' if detail else ''}
</div>
</article>"""


def render_gallery(cards: list[dict], low: Optional[float]) -> str:
    ordered = sorted(cards, key=lambda c: (c.get("shard") or "", c["key"]))
    return "\n".join(render_card(card, low) for card in ordered)
