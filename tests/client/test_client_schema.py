"""The client's models against the service's OpenAPI schema (generated in-process from
`service.main.create_app`): every field the client reads exists with the same type, nullability and
enum; the routes it calls exist and answer the models it decodes; its per-code errors are codes the
service really sends, with the same status. A change on either side fails here first."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from diffv2s_client import errors as client_errors
from diffv2s_client import models

# The client's name of each schema component.
COMPONENTS = {
    models.Job: "Job",
    models.JobParams: "JobParams",
    models.JobSampling: "JobSampling",
    models.Progress: "Progress",
    models.JobUrls: "JobUrls",
    models.ErrorInfo: "ErrorBody",
    models.JobPage: "JobList",
    models.JobStatus: "JobStatus",
}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from service.main import create_app
    from service.settings import Settings

    d: Path = tmp_path_factory.mktemp("openapi")
    settings = Settings(api_keys="k", store_url=f"sqlite:///{d / 'jobs.db'}", storage_dir=d / "storage")
    return create_app(settings).openapi()


def schema_type(prop: dict[str, Any]) -> tuple[bool, Any]:
    """(nullable, type) of a schema property, in the vocabulary of `client_type`."""
    options = prop.get("anyOf", [prop])
    nullable = any(o.get("type") == "null" for o in options)
    (inner,) = [o for o in options if o.get("type") != "null"]
    return nullable, _schema_inner(inner)


def _schema_inner(s: dict[str, Any]) -> Any:
    if "$ref" in s:
        return ("ref", s["$ref"].rsplit("/", 1)[1])
    if "enum" in s:
        return ("enum", frozenset(s["enum"]))
    kind = s["type"]
    if kind == "string" and s.get("format") == "date-time":
        return "datetime"
    if kind == "array":
        return ("list", _schema_inner(s["items"]))
    if kind == "object":
        return ("dict", _schema_inner(s["additionalProperties"]))
    return {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}[kind]


def client_type(tp: Any) -> tuple[bool, Any]:
    """(nullable, type) of a client field's annotation."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        (inner,) = [a for a in args if a is not type(None)]
        return type(None) in args, _client_inner(inner)
    return False, _client_inner(tp)


def _client_inner(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        return ("enum", frozenset(get_args(tp)))
    if origin is list:
        return ("list", _client_inner(get_args(tp)[0]))
    if origin is dict:
        return ("dict", _client_inner(get_args(tp)[1]))
    if tp in COMPONENTS:
        return ("ref", COMPONENTS[tp])
    from datetime import datetime

    return "datetime" if tp is datetime else tp.__name__


@pytest.mark.parametrize(
    "model", [m for m in COMPONENTS if dataclasses.is_dataclass(m)], ids=lambda m: m.__name__
)
def test_every_field_the_client_reads_matches_the_schema(openapi: dict[str, Any], model: type) -> None:
    component = openapi["components"]["schemas"][COMPONENTS[model]]
    props, required = component["properties"], set(component.get("required", []))
    hints = get_type_hints(model)
    for f in models.wire_fields(model):
        assert f.name in props, f"{model.__name__}.{f.name}: the service no longer sends it"
        assert client_type(hints[f.name]) == schema_type(props[f.name]), (
            f"{model.__name__}.{f.name}: client {client_type(hints[f.name])} != schema {schema_type(props[f.name])}"
        )
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default:  # the client cannot decode a body without it
            assert f.name in required, (
                f"{model.__name__}.{f.name}: required by the client, optional in the schema"
            )


def test_the_status_enum_matches(openapi: dict[str, Any]) -> None:
    schema = openapi["components"]["schemas"]["JobStatus"]
    assert {s.value for s in models.JobStatus} == set(schema["enum"])
    # The client's idea of "ended" is the service's (its wait loop stops on these).
    from jobs.record import TERMINAL

    assert {s.value for s in models.TERMINAL} == {s.value for s in TERMINAL}


def test_the_synthesis_options_are_form_fields(openapi: dict[str, Any]) -> None:
    body = openapi["paths"]["/v1/synthesize"]["post"]["requestBody"]["content"]["multipart/form-data"]
    props = body["schema"]["properties"]
    assert "video" in props and props["video"]["format"] == "binary"
    hints = get_type_hints(models.SynthesisOptions)
    for f in dataclasses.fields(models.SynthesisOptions):
        assert f.name in props, f"SynthesisOptions.{f.name}: not a form field of POST /v1/synthesize"
        # The client leaves unset options out of the form, so only the value's type must agree.
        assert client_type(hints[f.name])[1] == schema_type(props[f.name])[1], f.name


def _response_ref(operation: dict[str, Any], status: str) -> str:
    schema = operation["responses"][status]["content"]["application/json"]["schema"]
    return str(schema["$ref"]).rsplit("/", 1)[1]


def test_the_routes_the_client_calls_answer_its_models(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    assert _response_ref(paths["/v1/synthesize"]["post"], "202") == "Job"
    assert _response_ref(paths["/v1/jobs/{job_id}"]["get"], "200") == "Job"
    assert _response_ref(paths["/v1/jobs/{job_id}/cancel"]["post"], "200") == "Job"
    listing = paths["/v1/jobs"]["get"]
    assert _response_ref(listing, "200") == "JobList"
    assert {"status", "limit", "cursor"} <= {p["name"] for p in listing["parameters"]}
    for kind, media in (("audio", "audio/wav"), ("video", "video/mp4")):
        assert media in paths[f"/v1/jobs/{{job_id}}/{kind}"]["get"]["responses"]["200"]["content"]
    headers = [p["name"] for p in paths["/v1/synthesize"]["post"].get("parameters", [])]
    assert "Idempotency-Key" in headers
    # Every documented error is the `{"error": {code, message}}` body the client's errors are built from;
    # 429 and 503 carry the Retry-After its retries honour.
    error = openapi["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorBody") and error["required"] == ["error"]
    for path in (
        "/v1/synthesize",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/audio",
        "/v1/jobs/{job_id}/cancel",
    ):
        for operation in paths[path].values():
            for status, response in operation["responses"].items():
                # FastAPI's own 422 entry (`HTTPValidationError`) is not what the gateway answers (its
                # handler sends the error body); it is left to the service's schema work (issue 18).
                if status.startswith(("4", "5")) and response["description"] != "Validation Error":
                    assert _response_ref(operation, status) == "ErrorResponse", (path, status)
                if status in ("429", "503"):
                    assert "Retry-After" in response["headers"], (path, status)


def _service_codes() -> dict[str, int]:
    """Every error code the gateway sends, with its status."""
    from diffv2s import errors as lib
    from service import errors as svc

    codes: dict[str, int] = {}

    def walk(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *walk(sub))]

    for cls in walk(svc.ServiceError):
        codes[cls.code] = cls.status
    for cls in walk(lib.DiffV2SError):
        codes[cls.code] = svc.status_for(cls("x"))
    # The handler for an unavailable store / storage writes these two codes itself.
    source = inspect.getsource(svc.install_error_handlers)
    for code in ("store_unavailable", "storage_unavailable"):
        assert f'"{code}"' in source
        codes[code] = 503
    return codes


def test_each_error_class_is_a_code_the_service_sends() -> None:
    codes = _service_codes()
    for code, cls in client_errors.BY_CODE.items():
        assert code in codes, f"{cls.__name__}: the service sends no {code!r}"
        assert codes[code] == cls.status, (
            f"{cls.__name__}: {code!r} comes with {codes[code]}, not {cls.status}"
        )
    # Every status the service sends has a class of its own.
    for code, status in codes.items():
        if status < 500 or status == 503:
            assert client_errors.error_class(status, code).status == status, code


def test_client_enums_are_plain_strings_on_the_wire() -> None:
    assert issubclass(models.JobStatus, enum.StrEnum)
