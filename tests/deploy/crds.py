"""Objects of an operator's custom resources (KEDA's, the Prometheus Operator's) checked offline
against the operator's own CRD files, vendored under ``schemas/``: the storage version's
openAPIV3Schema with jsonschema, plus the fields the schema does not name (a structural schema
prunes them silently, so a typo would be lost without a word).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class VendoredCrds:
    """The CRD files of one API group: ``files`` maps each kind to its file in ``folder``."""

    operator: str
    api_version: str
    folder: Path
    files: tuple[tuple[str, str], ...]

    @property
    def kinds(self) -> dict[str, str]:
        return dict(self.files)

    def schema(self, kind: str) -> dict[str, Any]:
        return _storage_schema(self.folder / self.kinds[kind])

    def check(self, docs: list[dict[str, Any]]) -> list[str]:
        """Every object of the group against its CRD's schema, with no unknown field."""
        import jsonschema

        group = self.api_version.split("/")[0]
        problems = []
        for doc in docs:
            if not str(doc.get("apiVersion", "")).startswith(f"{group}/"):
                continue
            where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            if doc.get("kind") not in self.kinds:
                problems.append(f"{where}: no vendored {self.operator} schema for this kind")
                continue
            if doc.get("apiVersion") != self.api_version:
                problems.append(f"{where}: apiVersion {doc.get('apiVersion')} is not {self.api_version}")
            schema = self.schema(doc["kind"])
            body = {key: value for key, value in doc.items() if key not in ("apiVersion", "kind", "metadata")}
            for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=str):
                problems.append(f"{where}: {error.message} at /{'/'.join(map(str, error.path))}")
            problems += [f"{where}: unknown field {field}" for field in unknown_fields(body, schema)]
        return problems


@cache
def _storage_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return dict(version["schema"]["openAPIV3Schema"])


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not name (a structural schema prunes them silently)."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}/{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}/{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}/{index}")
    return found
