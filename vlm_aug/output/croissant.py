"""MLCommons Croissant 1.0 metadata for an output directory, with PROV links from each output
shard to its input shard and to the run that wrote it (every such run is a generating activity)."""

from __future__ import annotations

import datetime as dt
from typing import Optional

from vlm_aug.record import COLUMNS, Column
from vlm_aug.shards.read import public_name

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
    """The last run (the manifest's), with the models it loaded."""
    models = manifest.get("models", {})
    used = [{"@id": f"model:{public_name(m['model'])}",
             "prov:label": f"{stage} model {public_name(m['model'])} @ {m.get('revision')}"}
            for stage, m in models.items() if isinstance(m, dict) and m.get("model")]
    return {"@id": f"run:{manifest.get('run_id')}", "@type": "prov:Activity",
            "prov:label": f"vlm-aug run {manifest.get('run_id')}",
            "prov:wasAssociatedWith": {"@id": f"software:vlm-aug/{manifest.get('versions', {}).get('vlm-aug')}"},
            "prov:used": used, "description": f"config sha256 {manifest.get('config_sha256')}"}


def _earlier_activity(manifest: dict, run_id: str, settings: Optional[dict]) -> dict:
    """An earlier run that wrote shards still in the output: from the manifest's history (`runs`) and the
    settings of its configuration (the models it named; none for a dry run)."""
    history = next((r for r in manifest.get("runs") or [] if r.get("run_id") == run_id), {})
    used = []
    if settings and not settings.get("dry_run"):
        for stage, key in (("rewrite", "vlm.model"), ("score", "clip.model")):
            if settings.get(key):
                name = public_name(str(settings[key]))
                used.append({"@id": f"model:{name}", "prov:label": f"{stage} model {name}"})
    return {"@id": f"run:{run_id}", "@type": "prov:Activity", "prov:label": f"vlm-aug run {run_id}",
            "prov:used": used, "description": f"config sha256 {history.get('config_sha256')}"}


def _activities(manifest: dict, shard_runs: dict[str, Optional[str]], settings: dict[str, dict],
                fingerprints: dict[str, Optional[str]]) -> list[dict]:
    """Every run that wrote a shard of the output, oldest first (the last run when none did)."""
    order = [r.get("run_id") for r in manifest.get("runs") or []]
    runs = sorted({r for r in shard_runs.values() if r}, key=lambda r: (order.index(r) if r in order else -1, r))
    if not runs:
        return [_activity(manifest)]
    found = []
    for run in runs:
        if run == manifest.get("run_id"):
            found.append(_activity(manifest))
            continue
        history = next((r for r in manifest.get("runs") or [] if r.get("run_id") == run), {})
        fp = history.get("fingerprint") or next((fingerprints.get(n) for n, r in shard_runs.items() if r == run), None)
        found.append(_earlier_activity(manifest, run, settings.get(fp)))
    return found


def _derivations(shard_inputs: dict[str, Optional[str]], shard_runs: dict[str, Optional[str]]) -> list[dict]:
    """Output shard -> its input shard and the run that wrote it (an earlier run for skipped shards)."""
    links = []
    for name in sorted(shard_runs):
        link: dict = {"@id": f"shards/{name}.tar"}
        if shard_inputs.get(name):
            link["prov:wasDerivedFrom"] = {"@id": public_name(shard_inputs[name])}
        link["prov:wasGeneratedBy"] = {"@id": f"run:{shard_runs[name]}"}
        links.append(link)
    return links


def croissant(manifest: dict, shard_inputs: dict[str, Optional[str]], shard_runs: dict[str, Optional[str]],
              name: str, description: str, license_url: str, settings: Optional[dict] = None,
              fingerprints: Optional[dict] = None) -> dict:
    """The Croissant JSON-LD of an output directory (paths relative to the directory). `shard_inputs`
    and `shard_runs`: each output shard's input URL (None: not recorded) and the run that wrote it;
    `settings`: each configuration's settings by fingerprint; `fingerprints`: each shard's."""
    inputs = list(dict.fromkeys(public_name(u) for _, u in sorted(shard_inputs.items()) if u))
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
        "prov:wasDerivedFrom": [{"@id": url} for url in inputs],
        "prov:wasGeneratedBy": _activities(manifest, shard_runs, settings or {}, fingerprints or {}),
        "prov:hadMember": _derivations(shard_inputs, shard_runs),
    }
