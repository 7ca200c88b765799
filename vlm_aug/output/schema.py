"""The per-sample record contract: the JSON Schema shipped in the package, validation, and
the Hugging Face `datasets` features it implies for the output tars."""

from __future__ import annotations

import json
from typing import Any, Iterable

from vlm_aug.formats import IMAGE_EXTS
from vlm_aug.record import COLUMNS, sample_schema

_ARROW_OF_JSON = {"string": "string", "number": "float64", "integer": "int64", "boolean": "bool"}


def parquet_columns() -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in COLUMNS]


def validate_record(record: dict) -> list[str]:
    """Every way `record` breaks the schema, as 'path: message' lines (empty when valid)."""
    import jsonschema  # only needed to validate, not to write

    validator = jsonschema.Draft202012Validator(sample_schema(), format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
            for e in sorted(validator.iter_errors(record), key=lambda e: list(map(str, e.path)))]


def _resolve(node: dict) -> dict:
    ref = node.get("$ref")
    return sample_schema()["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


def _declared_value_type(node: dict):
    """The arrow scalar type a schema node declares once null is set aside, if exactly one."""
    node = _resolve(node)
    kinds = node.get("type")
    if "enum" in node:
        kinds = sorted({_json_kind(v) for v in node["enum"] if v is not None})
    kinds = [kinds] if isinstance(kinds, str) else [k for k in (kinds or []) if k != "null"]
    return _ARROW_OF_JSON.get(kinds[0]) if len(kinds) == 1 else None


def _json_kind(value: Any) -> str:
    return {str: "string", bool: "boolean", int: "integer", float: "number"}[type(value)]


def _feature_of(node: dict):
    """The `datasets` feature a schema node declares (a scalar, an object of typed properties, a list of
    either), or None when it declares none (an open object, mixed types)."""
    from datasets import List, Value

    node = _resolve(node)
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else [k for k in (kinds or []) if k != "null"]
    if kinds == ["object"]:
        fields = {name: _feature_of(child) for name, child in node.get("properties", {}).items()}
        return {name: f for name, f in fields.items() if f is not None} or None
    if kinds == ["array"]:
        item = _feature_of(node.get("items", {}))
        return List(item) if item is not None else None
    declared = _declared_value_type(node)
    return Value(declared) if declared else None


def _pin_nullables(features: dict, schema_node: dict) -> None:
    """Replace features inferred as `null` (or lists of `null`: empty in the first samples, such as
    `decision.repair.dropped` of samples not repaired) with the type the schema declares for that key,
    and add the typed keys an object declares that the first samples lack (`generation.params.n`, only
    present when on, in an output appended with --allow-config-change): rows without them load as null."""
    import datasets
    from datasets import Value

    list_types = tuple(t for t in (getattr(datasets, "List", None), getattr(datasets, "Sequence", None)) if t)
    for name, feature in list(features.items()):
        extra = schema_node.get("additionalProperties")
        child = _resolve(schema_node.get("properties", {}).get(name) or (extra if isinstance(extra, dict) else {}))
        if isinstance(feature, dict):
            _pin_nullables(feature, child)
        elif isinstance(feature, list_types) and isinstance(feature.feature, dict):
            _pin_nullables(feature.feature, _resolve(child.get("items", {})))
        elif isinstance(feature, Value) and feature.dtype == "null":
            declared = _feature_of(child)
            if declared is not None:
                features[name] = declared
        elif isinstance(feature, list_types) and isinstance(feature.feature, Value) and feature.feature.dtype == "null":
            declared = _feature_of(_resolve(child.get("items", {})))
            if declared is not None:
                features[name] = type(feature)(declared)
    for name, child in schema_node.get("properties", {}).items():
        if name not in features:
            declared = _feature_of(child)
            if declared is not None:
                features[name] = declared


def hf_features(first_samples: Iterable[dict]):
    """`datasets.Features` for the output tars, inferred like the `webdataset` builder does but
    with per-sample nullable fields (e.g. `reason`) typed from the schema, so a column that is
    null in the first samples still loads when later samples fill it."""
    import pyarrow as pa
    from datasets import Features, Image

    rows = []
    for sample in first_samples:
        row = {k: v for k, v in sample.items() if k not in ("__key__", "__url__")}
        row["json"] = json.loads(row["json"])
        rows.append({k: (v.decode("utf-8") if k.endswith("txt") else v) for k, v in row.items()})
    if not rows:
        raise ValueError("no samples to infer features from: the output has no kept sample")
    features = Features.from_arrow_schema(pa.Table.from_pylist(rows).schema)
    _pin_nullables(features["json"], sample_schema())
    for name in rows[0]:
        if name in IMAGE_EXTS:
            features[name] = Image()
    features["__key__"], features["__url__"] = Features.from_arrow_schema(
        pa.schema([("__key__", pa.string()), ("__url__", pa.string())])).values()
    return features
