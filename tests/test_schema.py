"""The per-sample record contract: the shipped JSON Schema matches what a real run writes."""

import json
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from output_helpers import run_pipeline
from vlm_aug import SCHEMA_VERSION
from vlm_aug.output.schema import parquet_columns, sample_schema, validate_record
from vlm_aug.record import PARQUET_SCHEMA

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_vlm_dir, tiny_clip_dir):
    return run_pipeline(tmp_path_factory.mktemp("schema"), tiny_vlm_dir, tiny_clip_dir,
                        "policy.name=mix", "policy.mix_rewrite_fraction=0.5")


def tar_records(out):
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            yield from (json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json"))


def test_schema_version_is_the_package_version():
    schema = sample_schema()
    assert schema["properties"]["schema"]["const"] == SCHEMA_VERSION
    assert schema["$id"].endswith("/sample/" + SCHEMA_VERSION.rsplit("/", 1)[-1])


def test_every_written_record_validates(out):
    records = list(tar_records(out))
    rows = [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(records) == 15 and len(rows) == 16
    for record in records + [json.loads(r["provenance"]) for r in rows]:
        assert validate_record(record) == [], record["key"]
    assert {r["status"] for r in rows} == {"kept", "error"}  # the failed sample's record validates too


def test_parquet_schema_is_documented_and_written(out):
    documented = parquet_columns()
    assert [(f.name, str(f.type)) for f in PARQUET_SCHEMA] == documented
    for path in (out / "shards").glob("*.parquet"):
        written = pq.read_schema(path)
        # parquet names a list's child `element`, arrow `item`: the same type
        assert [(f.name, str(f.type).replace("<element:", "<item:")) for f in written] == documented


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("caption"), "'caption' is a required property"),
    (lambda r: r.update(status="maybe"), "'maybe' is not one of"),
    (lambda r: r["decision"].update(mix_draw=1.5), "1.5 is greater than the maximum"),
    (lambda r: r["source"].update(image_sha256="abc"), "does not match"),
    (lambda r: r.update(extra_field=1), "Additional properties are not allowed"),
])
def test_schema_rejects_broken_records(out, change, message):
    record = next(tar_records(out))
    change(record)
    assert any(message in line for line in validate_record(record)), validate_record(record)


def test_docs_cover_every_field():
    text = DOCS.read_text()
    schema = sample_schema()
    assert SCHEMA_VERSION in text
    for name, node in schema["properties"].items():
        assert f"`{name}`" in text, name
        for child in node.get("properties", {}):
            assert f"`{name}.{child}`" in text, f"{name}.{child}"
    for column, _ in parquet_columns():
        assert re.search(rf"\| `{column}` \|", text), column


def test_croissant_parquet_and_schema_list_the_same_columns(out):
    """One column definition (the schema's x-parquet-columns): drift between the three would show here."""
    croissant = [f["name"] for f in json.loads((out / "croissant.json").read_text())["recordSet"][0]["field"]]
    written = pq.read_schema(out / "shards" / "000000.parquet").names
    defined = [c["name"] for c in sample_schema()["x-parquet-columns"]]
    assert croissant == written == defined == PARQUET_SCHEMA.names
    assert {"clip_sentences", "orig_passed"} <= set(croissant)
