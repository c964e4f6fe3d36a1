"""``multipart/form-data`` read into memory (python-multipart's streaming parser).

Starlette's own form reader spools file parts over 1 MiB to temporary files on disk; the service
writes nothing to disk from a request (the cache aside), and its bodies are already bounded in
memory by ``max_upload_bytes``, so it parses the body it holds with this small reader instead.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple


class FormError(ValueError):
    """A multipart body that cannot be parsed (the service answers 400)."""


class FilePart(NamedTuple):
    field: str
    filename: str
    content_type: str
    data: bytes


def _disposition(value: bytes) -> Tuple[Optional[str], Optional[str]]:
    from python_multipart.multipart import parse_options_header

    kind, opts = parse_options_header(value)
    if kind.lower() != b"form-data":
        return None, None
    name = opts.get(b"name")
    filename = opts.get(b"filename")
    return (name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None)


def parse_form(body: bytes, content_type: str, *, max_parts: int = 64,
               max_field_bytes: int = 4096) -> Tuple[Dict[str, str], List[FilePart]]:
    """``body`` of a ``multipart/form-data; boundary=...`` request -> (text fields, file parts).

    A part with a ``filename`` is a file (its bytes as sent); any other part is a text field
    (UTF-8, at most ``max_field_bytes``; a repeated field keeps its last value). Raises
    :class:`FormError` for a missing boundary, a malformed or truncated body, or too many parts."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, opts = parse_options_header(content_type)
    boundary = opts.get(b"boundary")
    if not boundary:
        raise FormError("a multipart/form-data body needs a boundary in its Content-Type")
    fields: Dict[str, str] = {}
    files: List[FilePart] = []
    state: dict = {"parts": 0, "ended": False}

    def part_begin():
        state["parts"] += 1
        if state["parts"] > max_parts:
            raise FormError(f"more than {max_parts} parts in the form")
        state.update(headers={}, field=b"", value=b"", data=[])

    def header_field(data, start, end):
        state["field"] += data[start:end]

    def header_value(data, start, end):
        state["value"] += data[start:end]

    def header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def part_data(data, start, end):
        state["data"].append(data[start:end])

    def part_end():
        headers = state["headers"]
        name, filename = _disposition(headers.get(b"content-disposition", b""))
        if name is None:
            raise FormError("a form part without Content-Disposition: form-data; name=...")
        data = b"".join(state["data"])
        if filename is not None:
            ctype = headers.get(b"content-type", b"application/octet-stream").decode("latin-1").strip()
            files.append(FilePart(name, filename, ctype, data))
        else:
            if len(data) > max_field_bytes:
                raise FormError(f"the form field {name!r} is longer than {max_field_bytes} bytes")
            fields[name] = data.decode("utf-8", "replace")

    def end():
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": part_begin, "on_part_data": part_data, "on_part_end": part_end,
        "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_end": end})
    try:
        parser.write(body)
        parser.finalize()
    except FormError:
        raise
    except FormParserError as e:
        raise FormError(f"malformed multipart body: {e}") from None
    if not state["ended"]:
        raise FormError("the multipart body is truncated (no closing boundary)")
    return fields, files
