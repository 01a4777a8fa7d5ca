"""Contract: the SDK's models and the API's OpenAPI document (``api.app``) agree.

Each SDK model has the fields of its schema, with the same JSON types and the same
required fields; what a submit sends is what ``TaskIn`` takes; the statuses are the
API's; and every route the SDK calls is in the document. No stack is needed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import taskflow_client
from taskflow_client import models
from taskflow_client.models import Position, Task, TaskHandle, TaskPage, TaskSpec

from api.app import create_app

SPEC: dict[str, Any] = create_app().openapi()
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
# SDK model -> the API schema it reads, and fields the SDK adds that the schema may lack.
MODELS: list[tuple[type, str, set[str]]] = [
    (Task, "TaskOut", set()),
    (Position, "PositionOut", set()),
    (TaskPage, "TaskPage", set()),
    # A keyed replay: BatchItemOut.replayed; a callback_url's webhook: POST /tasks' callback.
    (TaskHandle, "TaskAccepted", {"replayed", "callback"}),
]
SDK_NAMES = {Task: "TaskOut", Position: "PositionOut", TaskPage: "TaskPage",
             TaskHandle: "TaskAccepted"}


def _json_types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows: an enum ref is a string, an object ref is named."""
    if "anyOf" in schema:
        return set().union(*(_json_types(s) for s in schema["anyOf"]))
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = SCHEMAS[name]
        return {"string"} if "enum" in target else {f"object:{name}"}
    if "type" not in schema:
        return {"any"}
    t = schema["type"]
    if t == "string" and schema.get("format") == "date-time":
        return {"date-time"}
    if t == "array":
        return {f"array:{sorted(_json_types(schema['items']))}"}
    return {t}


def _py_types(ann: Any) -> set[str]:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_py_types(a) for a in typing.get_args(ann)))
    if ann is Any:
        return {"any"}
    if origin is typing.Literal:
        return set().union(*(_py_types(type(a)) for a in typing.get_args(ann)))
    if ann is type(None):
        return {"null"}
    if origin is list:
        return {f"array:{sorted(_py_types(typing.get_args(ann)[0]))}"}
    if origin is dict or ann is dict:
        return {"object"}
    if ann in SDK_NAMES:
        return {f"object:{SDK_NAMES[ann]}"}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean",
              datetime: "date-time"}
    return {simple[ann]}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(models))


@pytest.mark.parametrize(("cls", "name", "sdk_only"), MODELS,
                         ids=[f"{c.__name__}-{n}" for c, n, _ in MODELS])
def test_models_match_the_openapi_schemas(cls: type, name: str, sdk_only: set[str]) -> None:
    schema = SCHEMAS[name]
    props: dict[str, Any] = schema["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"}
    assert set(fields) - sdk_only == set(props), f"{cls.__name__} vs {name}"
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    assert required == set(schema.get("required", ())), f"{cls.__name__} required fields"
    hints = _hints(cls)
    for field, prop in props.items():
        api, sdk = _json_types(prop), _py_types(hints[field])
        if "any" in api or "any" in sdk:
            continue
        assert api == sdk, f"{cls.__name__}.{field}: API {api}, SDK {sdk}"


def test_a_submit_sends_what_taskin_takes() -> None:
    taskin = SCHEMAS["TaskIn"]["properties"]
    spec_fields = {f.name for f in dataclasses.fields(TaskSpec)} - {"idempotency_key"}
    assert set(taskin) == spec_fields, "the SDK and TaskIn differ in the fields they take"
    hints = _hints(TaskSpec)
    for field in spec_fields & set(taskin):
        api = _json_types(taskin[field]) - {"null"}
        sdk = _py_types(hints[field]) - {"null"}
        if field == "run_at":
            sdk -= {"string"}  # a datetime or its RFC 3339 text
        if field == "priority":
            sdk -= {"string"}  # a level name, sent as its number
        assert api == sdk, f"TaskSpec.{field}: API {api}, SDK {sdk}"
    full = TaskSpec("t", "echo", {"a": 1}, 1, 2, 3.0, delay_s=5.0,
                    callback_url="https://example.test/hook", concurrency_key="k",
                    max_concurrency=2).body()
    assert set(full) | {"run_at"} == set(taskin)  # run_at or delay_s, not both
    assert "run_at" in TaskSpec("t", run_at="2030-01-01T00:00:00Z").body()
    assert TaskSpec("t", priority="critical").body()["priority"] == 100
    item = SCHEMAS["BatchItemOut"]["properties"]
    assert {"task_id", "status", "position", "replayed", "problem"} == set(item)


def test_statuses_are_the_apis() -> None:
    assert set(models.STATUSES) == set(SCHEMAS["TaskStatus"]["enum"])
    assert models.TERMINAL < set(models.STATUSES)


def test_every_route_the_sdk_calls_is_documented() -> None:
    source = (Path(taskflow_client.__file__).parent / "aio.py").read_text()
    calls = re.findall(r'"(GET|POST|PATCH|DELETE)",\s*f?"(/[^"?]*)', source)
    calls += [("GET", p) for p in re.findall(r'_sse(?:_ids)?\(f?"(/[^"?]*)', source)]
    calls += [("GET", "/events")]  # stream(): built from "/events" and the filters
    assert len(calls) >= 25
    for method, path in calls:
        path = re.sub(r"\{_seg\((\w+)\)\}", r"{\1}", path)
        assert path in SPEC["paths"], path
        assert method.lower() in SPEC["paths"][path], (method, path)
    batch = SPEC["paths"]["/tasks:batch"]["post"]
    assert "partial" in {p["name"] for p in batch["parameters"]}
    assert "207" in batch["responses"]
