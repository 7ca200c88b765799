"""docs/config.md, made from the config classes themselves: every key, its type, its default and the
comment beside it in `sections.py`, so the reference cannot drift from the code
(`python -m vlm_aug.config.reference > docs/config.md`; tests/test_config.py checks it is current)."""

from __future__ import annotations

import ast
import inspect
import io
import json
import tokenize
import types
import typing
from typing import Any

from pydantic import BaseModel

from vlm_aug.config import sections

HEADER = """# Configuration reference

Every key a config file (or `--set section.key=value`) may hold, with its type, its default and what it
does. Made from `vlm_aug/config/sections.py` by `python -m vlm_aug.config.reference > docs/config.md`;
a test keeps the two the same. An unknown key is an error that names the keys allowed where it stands.
Examples: `configs/preview.yaml` (a laptop), `configs/cluster.yaml` (Ray on GPUs), `configs/demo.yaml`.
"""

SECTION_DOCS = {  # where each section is explained at length
    "vlm": "docs/models.md, docs/engines.md", "vlm.vllm": "docs/engines.md", "generation": "docs/captions.md",
    "generation.captions": "docs/captions.md", "clip": "docs/models.md", "policy": "README.md (Policies)",
    "policy.repair": "docs/repair.md", "limits": "docs/security.md", "input": "README.md, docs/performance.md",
    "output": "docs/output.md", "report": "docs/semantic.md", "ray": "docs/cluster.md",
    "": "README.md, docs/cluster.md, docs/performance.md",
}


def _comments(cls: type) -> dict[str, str]:
    """field name -> the comment above it (a block of `#` lines) and the one after it on its line."""
    source = inspect.getsource(cls)
    lines: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            lines[tok.start[0]] = tok.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, row = [], node.lineno - 1
        while row in lines and source.splitlines()[row - 1].lstrip().startswith("#"):
            above.insert(0, lines[row])
            row -= 1
        after = [lines[r] for r in range(node.lineno, node.end_lineno + 1) if r in lines
                 and not source.splitlines()[r - 1].lstrip().startswith("#")]
        found[node.target.id] = " ".join(above + after)
    return found


def _type(annotation: Any) -> str:
    """A field's type in words: `int or null`, `one of "a", "b"`, `list of str`, `mapping`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        named = [_type(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return "`" + json.dumps(value) + "`"


def _nested(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section(prefix: str, cls: type[BaseModel], out: list[str]) -> None:
    comments = _comments(cls)
    title = f"`{prefix}`" if prefix else "top level"
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "") if cls is not sections.Config else ""
    out += [f"## {title}", ""]
    if doc:
        out += [doc.replace("\n", " "), ""]
    if SECTION_DOCS.get(prefix):
        out += [f"See {SECTION_DOCS[prefix]}.", ""]
    out += ["| key | type | default | what it does |", "|---|---|---|---|"]
    later = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        inner = _nested(field.annotation)
        if inner is not None and prefix == "" :
            later.append((key, inner))
            continue
        if inner is not None:
            later.append((key, inner))
        text = comments.get(name) or (field.description or "")
        if inner is not None:
            text = (text + " " if text else "") + f"(keys: below, `{key}`)"
        kind = "list of mappings" if inner is not None and str(field.annotation).startswith("list") else (
            "mapping" if inner is not None else _type(field.annotation))
        out.append(f"| `{key}` | {kind} | {_default(field) if inner is None else '(section)'} | "
                   f"{text.replace('|', '/')} |")
    out.append("")
    for key, inner in later:
        _section(key, inner, out)


def reference_markdown() -> str:
    out = [HEADER]
    _section("", sections.Config, out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
