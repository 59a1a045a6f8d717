"""The HTTP API reference in Markdown, generated from the app's OpenAPI document, so the docs cannot drift from code.

``python -m personsearch.api.reference --out docs/api.md`` rewrites ``docs/api.md``; without ``--out`` it prints the
Markdown. ``tests/test_api_reference.py`` fails when the committed file is not what the code generates.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

COMMAND = "python -m personsearch.api.reference --out docs/api.md"
METHOD_ORDER = ("get", "post", "put", "patch", "delete")
SCHEMA_REF = "#/components/schemas/"
Schema = dict[str, Any]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app as `personsearch up` serves it, on the default settings.

    The settings are the defaults, not the environment, so ``PERSONSEARCH_*`` variables cannot change the reference.
    Building the app does not touch Redis; the client points at a socket that does not exist, so a use would fail.
    """
    import redis

    from personsearch.api.app import create_app
    from personsearch.settings import Settings
    from personsearch.streams import Keys

    client = redis.Redis(unix_socket_path="/nonexistent/redis.sock")  # connects lazily: never, here
    app = create_app(client, Keys(), Settings.model_construct(), warm_up_engine=False)
    return app.openapi()


# -- text ------------------------------------------------------------------------------------------------------


def _prose(text: str) -> str:
    """Docstring text as Markdown: RST ``code`` becomes `code`; a ``*`` outside code is escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.DOTALL)
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("*", r"\*")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text for a table cell: one line, pipes escaped."""
    return " ".join(_prose(text).split()).replace("|", r"\|")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# Fixed here rather than taken from http.HTTPStatus, whose phrases change between Python versions (413, 422).
_REASONS = {
    "200": "OK", "201": "Created", "204": "No Content", "400": "Bad Request", "401": "Unauthorized",
    "403": "Forbidden", "404": "Not Found", "409": "Conflict", "413": "Content Too Large",
    "415": "Unsupported Media Type", "422": "Unprocessable Content", "500": "Internal Server Error",
    "503": "Service Unavailable",
}  # fmt: skip


def _status(code: str) -> str:
    return f"{code} {_REASONS[code]}" if code in _REASONS else code


def _about(schema: Schema) -> str:
    """``": <the model's docstring>"``, or nothing when it has none."""
    return f": {_prose(schema['description'])}" if schema.get("description") else ""


def _media_type(content_type: str) -> str:
    """The media type without parameters: ``text/plain; version=1.0.0`` depends on the prometheus-client release."""
    return content_type.split(";")[0].strip()


class _Writer:
    """Renders the parts of the document; remembers which component schemas it linked to."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.schemas: dict[str, Schema] = doc.get("components", {}).get("schemas", {})
        self.linked: set[str] = set()

    # -- schemas --

    def resolve(self, schema: Schema) -> tuple[str | None, Schema]:
        """(component name or None, the schema with its ``$ref`` followed)."""
        ref = schema.get("$ref")
        if ref is None:
            return None, schema
        if not ref.startswith(SCHEMA_REF):
            raise ValueError(f"unsupported $ref {ref!r}")
        name = ref[len(SCHEMA_REF) :]
        return name, self.schemas[name]

    @staticmethod
    def non_null(schema: Schema) -> tuple[Schema, bool]:
        """(the schema without a ``null`` alternative, whether null was allowed)."""
        options = schema.get("anyOf") or schema.get("oneOf")
        if options is None:
            return schema, False
        kept = [s for s in options if s.get("type") != "null"]
        if len(kept) == len(options):
            return schema, False
        return (kept[0] if len(kept) == 1 else {**schema, "anyOf": kept}), True

    def type_of(self, schema: Schema, link: bool = True) -> str:
        """A short type for a table: ``string``, ``list of file``, a link to a component schema, ..."""
        inner, nullable = self.non_null(schema)
        if nullable:
            return f"{self.type_of(inner, link)} or null"
        if "$ref" in schema:
            name, target = self.resolve(schema)
            assert name is not None
            if "enum" in target:
                return "one of " + ", ".join(f"`{v}`" for v in target["enum"])
            if not link:
                return name
            self.linked.add(name)
            return f"[{name}](#{name.lower()})"
        options = schema.get("anyOf") or schema.get("oneOf")
        if options is not None:
            return " or ".join(self.type_of(s, link) for s in options)
        if "const" in schema:
            return f"`{json.dumps(schema['const'])}`"
        if "enum" in schema:
            return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
        kind = schema.get("type")
        if kind == "array":
            if "prefixItems" in schema:
                return "[" + ", ".join(self.type_of(s, link) for s in schema["prefixItems"]) + "]"
            return f"list of {self.type_of(schema.get('items', {}), link)}"
        if kind == "object":
            extra = schema.get("additionalProperties")
            return f"object of {self.type_of(extra, link)} by name" if isinstance(extra, dict) else "object"
        if kind == "string" and (schema.get("format") == "binary" or "contentMediaType" in schema):
            return "file"
        if isinstance(kind, list):
            return " or ".join(str(k) for k in kind)
        return str(kind) if kind else "any"

    def constraints(self, schema: Schema) -> list[str]:
        """The schema's limits and default, as short phrases."""
        inner, _ = self.non_null(schema)
        notes = []
        for key, phrase in (
            ("exclusiveMinimum", "> {}"), ("minimum", ">= {}"), ("exclusiveMaximum", "< {}"), ("maximum", "<= {}"),
            ("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
        ):  # fmt: skip
            if key in inner:
                notes.append(phrase.format(_number(inner[key])))
        if "pattern" in inner:
            notes.append(f"pattern `{inner['pattern']}`")
        if "default" in schema and schema["default"] is not None:
            notes.append(f"default `{json.dumps(schema['default'])}`")
        return notes

    def describe(self, schema: Schema, description: str = "") -> str:
        text = _cell(description or schema.get("description", ""))
        notes = "; ".join(self.constraints(schema))
        if notes:
            text = f"{text} ({notes})" if text else notes
        return text

    def top_name(self, schema: Schema) -> str:
        """The name of a request's or response's body type, without a link (its fields are shown with it)."""
        inner, nullable = self.non_null(schema)
        if inner.get("type") == "array" and "$ref" in inner.get("items", {}):
            text = f"a list of {self.resolve(inner['items'])[0]}"
        elif "$ref" in inner:
            text = str(self.resolve(inner)[0])
        else:
            text = self.type_of(inner)
        return f"{text} or null" if nullable else text

    def object_of(self, schema: Schema) -> Schema | None:
        """The object whose fields a body lists: the schema itself, or the items of a list; None if not an object."""
        inner, _ = self.non_null(schema)
        if inner.get("type") == "array" and "items" in inner:
            inner = inner["items"]
        _, target = self.resolve(inner)
        return target if "properties" in target else None

    def fields(self, schema: Schema, with_required: bool) -> list[str]:
        """A table of the object's fields, in the model's order."""
        required = set(schema.get("required", []))
        head = "| field | type | required | description |" if with_required else "| field | type | description |"
        lines = [head, "|---|---|---|---|" if with_required else "|---|---|---|"]
        for name, prop in schema.get("properties", {}).items():
            cells = [f"`{name}`", self.type_of(prop)]
            if with_required:
                cells.append("yes" if name in required else "no")
            cells.append(self.describe(prop))
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    # -- operations --

    def operations(self) -> list[tuple[str, str, Schema]]:
        """(method, path, operation) of every endpoint, by path then method."""
        ops = []
        for path, item in self.doc.get("paths", {}).items():
            for method, op in item.items():
                if method in METHOD_ORDER:
                    ops.append((method, path, op))
        return sorted(ops, key=lambda o: (o[1], METHOD_ORDER.index(o[0])))

    def parameters(self, op: Schema) -> list[str]:
        params = op.get("parameters", [])
        if not params:
            return []
        lines = ["**Parameters**", "", "| name | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            lines.append(
                f"| `{p['name']}` | {p['in']} | {self.type_of(schema)} | {'yes' if p.get('required') else 'no'} | "
                f"{self.describe(schema, p.get('description', ''))} |"
            )
        return [*lines, ""]

    def request_body(self, op: Schema) -> list[str]:
        body = op.get("requestBody")
        if body is None:
            return []
        lines = []
        need = "required" if body.get("required") else "optional"
        for ctype, media in sorted(body.get("content", {}).items()):
            schema = media.get("schema", {})
            target = self.object_of(schema)
            if ctype == "multipart/form-data" and target is not None:
                lines += [f"**Request body** (`{ctype}`, {need}): form fields", ""]
            else:
                about = _about(target) if target is not None else ""
                lines += [f"**Request body** (`{ctype}`, {need}): {self.top_name(schema)}{about}", ""]
            if target is not None:
                lines += [*self.fields(target, with_required=True), ""]
        return lines

    def responses(self, op: Schema) -> list[str]:
        lines = ["**Responses**", ""]
        bodies: list[str] = []
        for code, resp in sorted(op.get("responses", {}).items()):
            content = resp.get("content", {})
            description = _prose(resp.get("description", "")).strip()
            json_schema = content.get("application/json", {}).get("schema")
            if json_schema is not None and json_schema.get("$ref") == SCHEMA_REF + "ErrorBody":
                lines.append(f"- `{_status(code)}`: {description}")
                continue
            kinds = []
            for ctype in sorted(content):
                schema = content[ctype].get("schema")
                is_json = ctype == "application/json" and schema is not None
                kinds.append(f"`{ctype}`, {self.top_name(schema)}" if is_json else f"`{_media_type(ctype)}`")
            kind = f" ({'; '.join(kinds)})" if kinds else ""
            lines.append(f"- `{_status(code)}`{kind}: {description}")
            target = self.object_of(json_schema) if json_schema is not None else None
            if code.startswith("2") and target is not None and json_schema is not None:
                bodies += ["", f"`{code}` body, {self.top_name(json_schema)}{_about(target)}", ""]
                bodies += self.fields(target, with_required=False)
        return [*lines, *bodies, ""]

    def operation(self, method: str, path: str, op: Schema) -> list[str]:
        lines = [f"### `{method.upper()} {path}`", ""]
        if op.get("summary"):
            lines += [_prose(op["summary"]) + ".", ""]
        if op.get("description"):
            lines += [_prose(op["description"]), ""]
        auth = "API key" if op.get("security") else "none"
        lines += [f"Authentication: {auth}. Operation id: `{op.get('operationId', '')}`.", ""]
        return lines + self.parameters(op) + self.request_body(op) + self.responses(op)

    # -- the document --

    def tags(self) -> list[tuple[str, str]]:
        """(tag, description) in the app's order, then any tag it did not describe."""
        described = [(t["name"], t.get("description", "")) for t in self.doc.get("tags", [])]
        known = {name for name, _ in described}
        used = sorted({t for _, _, op in self.operations() for t in op.get("tags", ["other"])} - known)
        return described + [(t, "") for t in used]

    def error_statuses(self) -> list[tuple[str, str]]:
        """(status, meaning) of every error status documented with the error body."""
        found: dict[str, set[str]] = {}
        for _, _, op in self.operations():
            for code, resp in op.get("responses", {}).items():
                schema = resp.get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref") == SCHEMA_REF + "ErrorBody":
                    found.setdefault(code, set()).add(resp.get("description", ""))
        return [(code, "; ".join(sorted(found[code]))) for code in sorted(found)]

    def render(self) -> str:
        from personsearch.api.app import JSON_BODY_LIMIT
        from personsearch.api.watchlist import FORM_SLACK_BYTES, MAX_PHOTOS_PER_REQUEST

        info = self.doc.get("info", {})
        schemes = self.doc.get("components", {}).get("securitySchemes", {})
        out = [
            f"# {info.get('title', 'API')} HTTP API reference",
            "",
            f"Generated from the API's OpenAPI document by `{COMMAND}`; do not edit it by hand: change the code and "
            "run the command again (`tests/test_api_reference.py` fails while the two differ).",
            "",
            _prose(info.get("summary", "")),
            "",
            "The running API serves the same contract as `/openapi.json`, with interactive documentation at `/docs` "
            "(both without an API key). `personsearch up` serves it on `api.host`:`api.port` (default "
            "`127.0.0.1:8080`).",
            "",
            "## Authentication",
            "",
            'Every endpoint marked "Authentication: API key" needs an API key, sent in either of two ways:',
            "",
        ]
        for name in sorted(schemes):
            s = schemes[name]
            if s.get("type") == "apiKey":
                out.append(f"- `{s['name']}: <secret>` ({s['in']}): {_prose(s.get('description', ''))}")
            elif s.get("type") == "http":
                out.append(
                    f"- `Authorization: {s['scheme'].capitalize()} <secret>`: {_prose(s.get('description', ''))}"
                )
        out += [
            "",
            "Create a key with `personsearch apikeys create NAME`: it prints the secret once (only its SHA-256 is "
            "stored). `personsearch apikeys list` shows the keys with when each was last used, `personsearch apikeys "
            "revoke KEY_ID` makes a secret invalid at once. A request without a valid key is answered `401` with "
            '`WWW-Authenticate: Bearer realm="personsearch"`. With `api.auth: false` no key is needed (the API logs '
            "a warning at start-up).",
            "",
            "```bash",
            'curl -H "X-API-Key: $PERSONSEARCH_API_KEY" http://127.0.0.1:8080/cameras',
            'curl -H "Authorization: Bearer $PERSONSEARCH_API_KEY" http://127.0.0.1:8080/cameras',
            "```",
            "",
            "## Errors",
            "",
            "Every error is a JSON object, never a stack trace: `detail` always, the other fields only where they "
            "apply. An unexpected failure is a `500` with the same body; the server log has the details.",
            "",
        ]
        error_body = self.schemas.get("ErrorBody")
        if error_body is not None:
            out += [*self.fields(error_body, with_required=False), ""]
        out += ["| status | meaning |", "|---|---|"]
        out += [f"| `{_status(code)}` | {_cell(meaning)} |" for code, meaning in self.error_statuses()]
        out += [
            "",
            f"Request bodies are limited: {JSON_BODY_LIMIT} bytes for JSON endpoints; {MAX_PHOTOS_PER_REQUEST} times "
            f"`watchlist.max_photo_bytes` plus {FORM_SLACK_BYTES} bytes for `/watchlist` uploads; one "
            f"`watchlist.max_photo_bytes` plus {FORM_SLACK_BYTES} bytes for `/search`. A larger body is a `413`.",
            "",
            "## Endpoints",
            "",
            "| method | path | summary |",
            "|---|---|---|",
        ]
        tags = self.tags()
        ops = self.operations()

        def in_tag(tag: str) -> list[tuple[str, str, Schema]]:
            return [o for o in ops if (o[2].get("tags") or ["other"])[0] == tag]

        for tag, _ in tags:
            out += [f"| {m.upper()} | `{p}` | {_cell(op.get('summary', ''))} |" for m, p, op in in_tag(tag)]
        out.append("")
        for tag, description in tags:
            section = in_tag(tag)
            if not section:
                continue
            out += [f"## {tag}", ""]
            if description:
                out += [_prose(description), ""]
            for method, path, op in section:
                out += self.operation(method, path, op)
        out += self.schema_sections()
        return "\n".join(out).rstrip("\n") + "\n"

    def schema_sections(self) -> list[str]:
        """A section for every component schema a table linked to (and those they link to), by name."""
        out = ["## Schemas", "", "The objects that appear as field types above.", ""]
        # Rendering a schema can link further ones: render until nothing new appears, then emit in name order.
        rendered: dict[str, list[str]] = {}
        while set(self.linked) - set(rendered):
            for name in sorted(set(self.linked) - set(rendered)):
                schema = self.schemas[name]
                lines = [f"### {name}", ""]
                if schema.get("description"):
                    lines += [_prose(schema["description"]), ""]
                lines += [*self.fields(schema, with_required=False), ""]
                rendered[name] = lines
        for name in sorted(rendered):
            out += rendered[name]
        return out


def render(doc: dict[str, Any]) -> str:
    """The Markdown reference of an OpenAPI document."""
    return _Writer(doc).render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m personsearch.api.reference", description="Write the HTTP API reference in Markdown."
    )
    parser.add_argument("--out", help="write it to this file (e.g. docs/api.md); default: print it")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.out:
        Path(args.out).write_text(text)
        logger.info("API reference written to %s", args.out)
    else:
        sys.stdout.write(text)
    return 0


__all__ = ["COMMAND", "main", "openapi_document", "render"]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
