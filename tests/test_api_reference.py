"""docs/api.md is generated from the API's OpenAPI document: it must be exactly what the code generates now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from personsearch.api.reference import COMMAND, openapi_document, render

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def test_committed_api_reference_is_what_the_code_generates(document: dict[str, Any]) -> None:
    generated = render(document)
    committed = API_DOC.read_text() if API_DOC.is_file() else ""
    assert committed == generated, f"docs/api.md does not match the API; regenerate it with `{COMMAND}`"


def test_api_reference_documents_every_endpoint(document: dict[str, Any]) -> None:
    text = render(document)
    endpoints = [f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item]
    assert endpoints, "the OpenAPI document has no paths"
    missing = [e for e in endpoints if f"### `{e}`" not in text]
    assert not missing, f"endpoints without a section in the reference: {missing}"
    assert all(f"`{path}`" in text for path in document["paths"])
