"""MLCommons Croissant 1.0 metadata for an output directory, with PROV links from each output
shard to its input shard and to the run (the generating activity)."""

from __future__ import annotations

import datetime as dt

from vlm_aug.record import COLUMNS, Column
from vlm_aug.shards.read import public_name, shard_name

CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/", "prov": "http://www.w3.org/ns/prov#",
    "citeAs": "cr:citeAs", "column": "cr:column", "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "recordSet": "cr:recordSet", "references": "cr:references", "regex": "cr:regex",
    "repeated": "cr:repeated", "replace": "cr:replace", "samplingRate": "cr:samplingRate",
    "separator": "cr:separator", "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
}
CROISSANT_TYPES = {"string": "sc:Text", "double": "sc:Float", "int64": "sc:Integer", "bool": "sc:Boolean",
                   "list<item: double>": "sc:Float"}


def _field(column: Column) -> dict:
    """A parquet column as a Croissant field; a list column is a repeated field."""
    field = {"@type": "cr:Field", "@id": f"samples/{column.name}", "name": column.name,
             "description": column.description, "dataType": CROISSANT_TYPES[column.type],
             "source": {"fileSet": {"@id": "parquet-sidecars"}, "extract": {"column": column.name}}}
    if column.type.startswith("list<"):
        field["repeated"] = True
    return field


def _activity(manifest: dict) -> dict:
    models = manifest.get("models", {})
    used = [{"@id": f"model:{public_name(m['model'])}",
             "prov:label": f"{stage} model {public_name(m['model'])} @ {m.get('revision')}"}
            for stage, m in models.items() if isinstance(m, dict) and m.get("model")]
    return {"@id": f"run:{manifest.get('run_id')}", "@type": "prov:Activity",
            "prov:label": f"vlm-aug run {manifest.get('run_id')}",
            "prov:wasAssociatedWith": {"@id": f"software:vlm-aug/{manifest.get('versions', {}).get('vlm-aug')}"},
            "prov:used": used, "description": f"config sha256 {manifest.get('config_sha256')}"}


def _derivations(input_urls: list[str], shard_runs: dict[str, str]) -> list[dict]:
    """Output shard -> its input shard and the run that wrote it (an earlier run for skipped shards)."""
    links = []
    for url in input_urls:
        name = shard_name(url)
        if name in shard_runs:
            links.append({"@id": f"shards/{name}.tar", "prov:wasDerivedFrom": {"@id": public_name(url)},
                          "prov:wasGeneratedBy": {"@id": f"run:{shard_runs[name]}"}})
    return links


def croissant(manifest: dict, shard_runs: dict[str, str], name: str, description: str, license_url: str) -> dict:
    """The Croissant JSON-LD of an output directory (paths relative to the directory)."""
    inputs = manifest.get("shards", {}).get("processed", []) + manifest.get("shards", {}).get("skipped_complete", [])
    activity = _activity(manifest)
    published = dt.date.today().isoformat()
    return {
        "@context": CONTEXT, "@type": "sc:Dataset", "name": name, "description": description,
        "conformsTo": "http://mlcommons.org/croissant/1.0", "license": license_url,
        "url": "https://example.invalid/set-the-dataset-url", "version": "1.0.0",
        "citeAs": "set-me: how to cite this dataset", "datePublished": published,
        "distribution": [
            {"@type": "cr:FileSet", "@id": "webdataset-shards", "name": "webdataset-shards",
             "description": "WebDataset tars: KEY.<image ext> (original bytes), KEY.txt (training caption), "
                            "KEY.json (provenance record); KEY.orig.txt with policy `both`",
             "encodingFormat": "application/x-tar", "includes": "shards/*.tar"},
            {"@type": "cr:FileSet", "@id": "parquet-sidecars", "name": "parquet-sidecars",
             "description": "one row per input sample, kept or not", "encodingFormat": "application/x-parquet",
             "includes": "shards/*.parquet"},
        ],
        "recordSet": [{"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
                       "description": "every input sample with its decision and provenance",
                       "field": [_field(c) for c in COLUMNS]}],
        "prov:wasDerivedFrom": [{"@id": public_name(url)} for url in inputs],
        "prov:wasGeneratedBy": activity,
        "prov:hadMember": _derivations(inputs, shard_runs),
    }
