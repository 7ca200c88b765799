"""Semantic figures of a finished output's caption sets (original, rewrite, training, and a
reference set the user gives), on sentence embeddings (`output/embed.py`):

- diversity: the Vendi score (vendi-score's `score_dual`, exact for a cosine kernel on unit
  embeddings: exp of the entropy of the kernel's eigenvalues), per caption, the effective number of
  distinct meanings (the Vendi score of the sharper kernel cos^16), and the mean pairwise cosine;
- near-duplicates: pairs of captions of different images whose cosine >= report.near_duplicate_cosine,
  and their clusters (examples go to the report);
- redundancy inside a caption: captions with two sentences whose cosine >= report.redundant_sentence_cosine;
- alignment to the reference (when given): MAUVE (mauve-text, on these embeddings; 0..1, higher =
  closer) and the Fréchet distance between Gaussian fits of the embeddings (0 = same; lower = closer).

Computed from the committed shards after a run (never in the workers), on a seeded sample of at
most report.semantic_sample rows, and cached in OUT/semantic.json with what they were computed from."""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import sys
import tarfile
import time
import zlib
from typing import Callable, Optional

import numpy as np

from vlm_aug.shards.layout import OutputDir
from vlm_aug.text import split_sentences

SEMANTIC_FILE = "semantic.json"
SETS = ("original", "rewrite", "training")
MAP_POINTS = 400  # per set, for the report's embedding map
EXAMPLES = 8


# ---- figures on embeddings ------------------------------------------------------------------
MEANING_POWER = 16  # the kernel cos^16 of `distinct_meanings`: cos 0.95 -> 0.44, 0.9 -> 0.19, 0.8 -> 0.03


def diversity(emb: np.ndarray) -> dict:
    """`vendi`: the Vendi score of the cosine kernel (broad themes: captions that share a topic count as
    one). `distinct_meanings`: the Vendi score of the kernel cos^16 (a Hadamard power of a PSD kernel, so
    still one), which tells captions apart unless they nearly say the same thing: the effective number
    of distinct meanings. A template with swapped nouns scores low on it; so does a set of exact copies."""
    n = len(emb)
    if n < 2:
        return {"vendi": float(n), "vendi_per_caption": 1.0 if n else None, "distinct_meanings": float(n),
                "mean_cosine": None}
    from scipy import linalg
    from vendi_score.vendi import entropy_q, score_dual

    x = emb.astype(np.float64)
    vendi = float(score_dual(x, q=1, normalize=True))
    eigen = linalg.eigvalsh((x @ x.T) ** MEANING_POWER / n)
    meanings = float(np.exp(entropy_q(np.clip(eigen, 0, None), q=1)))
    total = x.sum(0)
    mean_cos = float((total @ total - n) / (n * (n - 1)))
    return {"vendi": round(vendi, 3), "vendi_per_caption": round(vendi / n, 5),
            "distinct_meanings": round(meanings, 2), "mean_cosine": round(mean_cos, 4)}


def near_duplicates(emb: np.ndarray, texts: list[str], ids: list, threshold: float, block: int = 2048,
                    labels: Optional[list] = None) -> dict:
    """Pairs of different images (`ids`: an image's identity, the same for the same image under two keys
    or shards) at cosine >= threshold, and their clusters (union-find); examples name each caption by
    its `labels` entry (default: its id)."""
    labels = ids if labels is None else labels
    n = len(emb)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = 0
    for start in range(0, n, block):
        sims = emb[start:start + block] @ emb.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c <= i or ids[i] == ids[c]:
                continue
            pairs += 1
            parent[root(i)] = root(c)
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(root(i), []).append(i)
    groups = sorted((members for members in clusters.values() if len(members) > 1), key=len, reverse=True)
    involved = sum(len(g) for g in groups)
    return {"threshold": threshold, "pairs": pairs, "captions": involved, "share": round(involved / n, 4) if n else None,
            "clusters": len(groups),
            "examples": [{"size": len(g), "captions": [{"id": labels[i], "text": texts[i]} for i in g[:4]]}
                         for g in groups[:EXAMPLES]]}


def redundancy(sentence_emb: list[np.ndarray], texts: list[str], threshold: float) -> dict:
    """Captions of >= 2 sentences in which two sentences say the same (cosine >= threshold)."""
    maxima, examples = [], []
    for emb, text in zip(sentence_emb, texts):
        if len(emb) < 2:
            continue
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1.0)
        top = float(sims.max())
        maxima.append(top)
        if top >= threshold and len(examples) < EXAMPLES:
            examples.append({"text": text, "max_sentence_cosine": round(top, 4)})
    redundant = sum(m >= threshold for m in maxima)
    return {"threshold": threshold, "captions_with_sentences": len(maxima), "redundant": redundant,
            "share": round(redundant / len(maxima), 4) if maxima else None,
            "mean_max_sentence_cosine": round(float(np.mean(maxima)), 4) if maxima else None, "examples": examples}


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two embedding sets (as FID, on text embeddings)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(cov_a @ cov_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def alignment(emb: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict:
    import mauve

    result = mauve.compute_mauve(p_features=emb.astype(np.float32), q_features=reference.astype(np.float32),
                                 kmeans_num_redo=2, seed=seed + 25, verbose=False)
    return {"mauve": round(float(result.mauve), 4), "frechet": round(frechet(emb, reference), 5),
            "n": len(emb), "reference_n": len(reference)}


def pca_map(sets: dict[str, np.ndarray], seed: int = 0) -> dict:
    """2-D principal-component coordinates of up to MAP_POINTS captions per set, on common axes; no map
    (`{}`) for fewer than 2 captions in all. Always two columns: with fewer components than 2 (2 points
    have one, or all points alike), the missing axis is 0."""
    rng = np.random.default_rng(seed)
    picked = {name: emb[rng.permutation(len(emb))[:MAP_POINTS]] for name, emb in sets.items() if len(emb)}
    if sum(len(emb) for emb in picked.values()) < 2:  # one point (the only sample): nothing to map
        return {}
    stacked = np.concatenate(list(picked.values()))
    centre = stacked.mean(0)
    _, _, vt = np.linalg.svd(stacked - centre, full_matrices=False)
    axes = np.zeros((2, stacked.shape[1]), stacked.dtype)
    axes[:min(2, len(vt))] = vt[:2]  # svd gives min(points, dimensions) components
    return {name: np.round((emb - centre) @ axes.T, 4).tolist() for name, emb in picked.items()}


# ---- caption sets of an output, and the reference ------------------------------------------
COLUMNS = ["key", "status", "outcome", "caption", "caption_orig", "caption_rewrite", "image_sha256"]


def caption_sets(out: OutputDir, sample: int, seed: int) -> tuple[dict[str, tuple[list[str], list, list]], dict]:
    """{set: (texts, image ids, labels)} from a seeded sample of at most `sample` rows; and the totals.
    An image's id is its sha256 (`source.image_sha256`, as the report's diversity table counts images), so
    the same image under two keys or in two shards is one image; a row without one (no readable image)
    stands for itself. A label names the row: `OUT_SHARD/KEY`. A dry run's rows have no rewrite. The rows
    are streamed a file at a time: only the sample is held."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = out.complete_names()
    rows_total = 0
    for name in names:  # the sample's positions from the row counts; then the rows streamed, file by file
        try:
            with out.fs.open(out.file(name, "parquet"), "rb") as handle:
                rows_total += pq.read_metadata(handle).num_rows
        except (pa.ArrowInvalid, OSError) as exc:  # a damaged sidecar: named, with how to redo it
            raise out.damaged([name], exc) from None
    chosen = set(random.Random(seed).sample(range(rows_total), sample)) if rows_total > sample else None
    totals = {"rows": rows_total, "original": 0, "rewrite": 0, "training": 0}
    sets: dict[str, tuple[list[str], list, list]] = {name: ([], [], []) for name in SETS}
    position = 0
    for name in names:
        with out.fs.open(out.file(name, "parquet"), "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(columns=COLUMNS, batch_size=8192):
                for r in batch.to_pylist():
                    if r["outcome"] == "dry_run":  # a dry run's caption_rewrite is the original, copied: no rewrite
                        r["caption_rewrite"] = None
                    training = r["caption"] if r["status"] == "kept" else None
                    totals["original"] += bool(r["caption_orig"])
                    totals["rewrite"] += bool(r["caption_rewrite"])
                    totals["training"] += bool(training)
                    position += 1
                    if chosen is not None and position - 1 not in chosen:
                        continue
                    label = f"{name}/{r['key']}"
                    image = f"sha256:{r['image_sha256']}" if r["image_sha256"] else label
                    for which, text in (("original", r["caption_orig"]), ("rewrite", r["caption_rewrite"]),
                                        ("training", training)):
                        if text:
                            sets[which][0].append(text)
                            sets[which][1].append(image)
                            sets[which][2].append(label)
    return sets, totals


class ReferenceUnreadable(ValueError):
    """A reference file (--reference, report.reference) that cannot be read; the message names it."""


def read_reference(patterns: list[str], limit: int, seed: int, caption_ext: str = "txt") -> tuple[list[str], int]:
    """Captions of reference shards (their KEY.txt members; never used as paths) or of .txt files
    (one caption per line) -> (a seeded sample of at most `limit`, how many there were). A file that is
    not a readable tar, or a .txt that is not UTF-8, raises ReferenceUnreadable naming it."""
    import fsspec

    from vlm_aug.shards.read import expand_inputs

    texts: list[str] = []
    for url in expand_inputs(patterns) if patterns else []:
        try:
            texts += _reference_captions(fsspec, url, caption_ext)
        except FileNotFoundError:
            raise
        except UnicodeDecodeError as exc:
            raise ReferenceUnreadable(f"reference {url} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                                      f"offset {exc.start}): a .txt reference holds one UTF-8 caption per "
                                      "line") from None
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
            raise ReferenceUnreadable(f"reference {url} could not be read ({type(exc).__name__}: {exc}): give "
                                      "WebDataset shards (KEY.txt members) or .txt files, one caption per "
                                      "line") from None
    total = len(texts)
    if total > limit:
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(total), limit))]
    return texts, total


def _reference_captions(fsspec, url: str, caption_ext: str) -> list[str]:
    texts: list[str] = []
    with fsspec.open(url, "rb") as handle:
        if url.endswith(".txt"):
            return [line.strip() for line in handle.read().decode("utf-8").splitlines() if line.strip()]
        with tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.rsplit("/", 1)[-1].partition(".")[2] == caption_ext:
                    text = tar.extractfile(member).read().decode("utf-8", errors="replace").strip()
                    if text:
                        texts.append(text)
    return texts


# ---- all figures of several sets ------------------------------------------------------------
def set_figures(embedder, sets: dict[str, tuple], reference: Optional[list[str]], settings: dict,
                progress: Optional[Callable[[str, int, int], None]] = None) -> dict:
    """The `semantic` object: one entry per caption set (and `reference`), each with n, diversity,
    near_duplicates, redundancy and, with a reference, alignment. `sets`: name -> (texts, image ids)
    or (texts, image ids, labels) (see `near_duplicates`)."""
    seed = settings.get("seed", 0)
    all_sets = dict(sets)
    if reference:
        all_sets["reference"] = (reference, list(range(len(reference))))
    embedded: dict[str, np.ndarray] = {}
    result: dict = {}
    for name, (texts, ids, *labels) in all_sets.items():
        if progress:
            progress(name, 0, len(texts))
        emb = embedder.encode(texts) if texts else np.zeros((0, embedder.identity.dim), np.float32)
        sentences = [split_sentences(t) for t in texts]
        flat = [s for group in sentences for s in group]
        flat_emb = embedder.encode(flat) if flat else np.zeros((0, embedder.identity.dim), np.float32)
        per_caption, at = [], 0
        for group in sentences:
            per_caption.append(flat_emb[at:at + len(group)])
            at += len(group)
        embedded[name] = emb
        result[name] = {"n": len(texts), "diversity": diversity(emb),
                        "near_duplicates": near_duplicates(emb, texts, ids, settings["near_duplicate_cosine"],
                                                           labels=labels[0] if labels else None),
                        "redundancy": redundancy(per_caption, texts, settings["redundant_sentence_cosine"])}
        if progress:
            progress(name, len(texts), len(texts))
    if reference and len(reference) >= 2:
        for name in sets:
            if len(embedded[name]) >= 2:
                result[name]["alignment"] = alignment(embedded[name], embedded["reference"], seed)
    result["map"] = pca_map(embedded, seed)
    return result


def _cache_key(out: OutputDir, settings: dict, identity: dict, reference: list[str]) -> str:
    """Changes whenever a shard's content can: each shard by name, the run that wrote it, its settings,
    the identity of the input it read (size, mtime) and its counts; a redone shard has a new run id.
    And whenever a reference file's can: each one's identity (size, mtime or ETag), not its name alone."""
    from vlm_aug.shards.read import expand_inputs, input_identity

    shards = sorted([s["shard"], s.get("run_id"), s.get("fingerprint"), s.get("input"), s.get("counts")]
                    for s in out.all_stats())
    references = [[url, input_identity(url)] for url in expand_inputs(reference)] if reference else []
    text = json.dumps([shards, settings, identity, reference, references], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def compute(out_path: str, report_cfg, reference: Optional[list[str]] = None, use_cache: bool = True,
            progress: bool = True) -> dict:
    """The semantic figures of an output (cached in OUT/semantic.json); raises EmbedderUnavailable."""
    from vlm_aug.output.embed import TextEmbedder, locate

    out = OutputDir(out_path)
    # the run's own reference is cached in OUT/semantic.json; another one (stats --reference) is not
    # written over it, since the manifest and card describe the run's
    persist = reference is None or list(reference) == list(report_cfg.reference)
    reference = list(reference if reference is not None else report_cfg.reference)
    settings = {"sample": report_cfg.semantic_sample, "seed": report_cfg.semantic_seed,
                "near_duplicate_cosine": report_cfg.near_duplicate_cosine,
                "redundant_sentence_cosine": report_cfg.redundant_sentence_cosine}
    _, identity = locate(report_cfg.text_embedder)
    key = _cache_key(out, settings, identity.to_json(), reference)
    cached = out.read_json(out.top(SEMANTIC_FILE)) if use_cache else None
    if cached and cached.get("cache_key") == key:
        return cached
    start = time.perf_counter()
    # the reference first: an unreadable one (ReferenceUnreadable) fails before the embedder loads
    ref_texts, ref_total = read_reference(reference, settings["sample"], settings["seed"]) if reference else ([], 0)
    if reference and ref_total < 2:  # MAUVE and the Fréchet distance need a distribution (one point: sqrtm hangs)
        raise ReferenceUnreadable(f"reference {', '.join(p.rsplit('/', 1)[-1] for p in reference)} holds "
                                  f"{ref_total} caption(s): the alignment figures need at least 2 (a .txt "
                                  "reference holds one caption per line; shards, KEY.txt members)")
    embedder = TextEmbedder(report_cfg.text_embedder)
    sets, totals = caption_sets(out, settings["sample"], settings["seed"])
    bar = _progress_bar(sum(len(entry[0]) for entry in sets.values()) + len(ref_texts)) if progress else None
    figures = set_figures(embedder, sets, ref_texts or None, settings,
                          (lambda name, done, n: bar.update(done) if done else bar.set_postfix_str(name)) if bar else None)
    if bar:
        bar.close()
    figures.update({
        "embedder": embedder.identity.to_json(), "settings": settings,
        "totals": {**totals, **({"reference": ref_total} if reference else {})},
        "reference_files": [p.rsplit("/", 1)[-1] for p in reference],  # names only: no local paths in the output
        "seconds": round(time.perf_counter() - start, 2), "cache_key": key,
        "better": {"vendi": "higher = more distinct meanings", "mauve": "higher = closer to the reference (max 1)",
                   "frechet": "lower = closer to the reference (0 = same)",
                   "near_duplicates.share": "lower", "redundancy.share": "lower"},
    })
    if persist:
        out.write_json(out.top(SEMANTIC_FILE), figures)
    return figures


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="semantic figures (captions)", unit="cap", file=sys.stderr, leave=False)


def summary(figures: dict) -> dict:
    """The per-set headline figures (for the manifest, the card and `vlm-aug stats`)."""
    out = {}
    for name in (*SETS, "reference"):
        if name not in figures:
            continue
        f = figures[name]
        out[name] = {"n": f["n"], "diversity": f["diversity"],
                     "near_duplicate_share": f["near_duplicates"]["share"],
                     "redundant_share": f["redundancy"]["share"],
                     # the share's base: captions of two or more sentences, and how many of them are redundant
                     "redundant": f["redundancy"]["redundant"],
                     "multi_sentence": f["redundancy"]["captions_with_sentences"]}
        if "alignment" in f:
            out[name]["alignment"] = {k: f["alignment"][k] for k in ("mauve", "frechet")}
    out["embedder"] = figures.get("embedder")
    out["settings"] = figures.get("settings")
    out["reference_files"] = figures.get("reference_files", [])
    return out
