"""A Python function as a tool: its signature and type hints give the input schema (through pydantic), its
docstring the description. Sync functions run in a thread of their own, so they cannot block the event loop; a
sync function that overruns its timeout is abandoned (its thread, a daemon, finishes on its own: Python cannot stop
it, and it holds neither other tools nor the process's exit), an async one is cancelled. A tool may return a string,
any JSON-able value (sent as JSON text) or a list of content blocks."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import threading
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..jsonenc import dumps
from .base import Tool, ToolConfigError, ToolFailed, ToolOutput

_BLOCK_TYPES = {"text", "image", "document", "search_result"}


def load_function(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ToolConfigError(f"{path!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the file's problem, said in one line
        raise ToolConfigError(f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ToolConfigError(f"{module_name!r} has no {attribute!r}")
    if not callable(function):
        raise ToolConfigError(f"{path!r} is not callable")
    return function


def input_model(name: str, function: Any) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(function)
    except Exception as exc:
        raise ToolConfigError(f"the type hints of {name!r} cannot be read ({exc})") from None
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolConfigError(f"{name!r} takes *args or **kwargs: tools need named parameters")
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    try:
        return create_model(f"{name}_input", __config__=ConfigDict(extra="forbid"), **fields)
    except Exception as exc:  # a parameter type pydantic cannot validate (a socket, a class of its own...)
        raise ToolConfigError(f"the parameters of {name!r} cannot be described ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


# Schema keywords whose values map names to schemas: their keys are names (a parameter may be called "title").
_NAMED = {"properties", "patternProperties", "$defs", "definitions"}


def _strip_titles(schema: Any) -> Any:
    """The schema without pydantic's generated ``title`` keywords (noise for the model)."""
    if isinstance(schema, dict):
        return {k: ({name: _strip_titles(sub) for name, sub in v.items()} if k in _NAMED and isinstance(v, dict)
                    else _strip_titles(v))
                for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


def input_schema(name: str, model: type[BaseModel]) -> dict[str, Any]:
    try:
        schema = _strip_titles(model.model_json_schema())
    except Exception as exc:  # a type that validates but has no JSON schema (a callable...)
        raise ToolConfigError(f"the parameters of {name!r} have no JSON schema ({type(exc).__name__})") from None
    schema.setdefault("properties", {})
    schema.pop("additionalProperties", None)
    return schema


def as_output(value: Any) -> ToolOutput:
    if isinstance(value, ToolOutput):
        return value
    if isinstance(value, str):
        return ToolOutput(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) and v.get("type") in _BLOCK_TYPES
                                                 for v in value):
        return ToolOutput(value)
    if value is None:
        return ToolOutput("(no output)")
    try:
        return ToolOutput(dumps(value))
    except (TypeError, ValueError):
        return ToolOutput(str(value))


class PythonTool(Tool):
    kind = "python"

    def __init__(self, name: str, path: str, *, description: str | None = None, requires_approval: bool = False,
                 timeout: float | None = None):
        self.name = name
        self.source = path
        self.function = load_function(path)
        self.model = input_model(name, self.function)
        self.schema = input_schema(name, self.model)  # once: the request of every step declares it
        self.description = description or inspect.getdoc(self.function) or ""
        self.requires_approval = requires_approval
        self.timeout = timeout
        self._is_async = inspect.iscoroutinefunction(self.function)

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.schema}

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        try:
            values = self.model.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False)[:3])
            raise ToolFailed(f"invalid input: {problems}") from None
        kwargs = {name: getattr(values, name) for name in self.model.model_fields}
        if self._is_async:
            return as_output(await self.function(**kwargs))
        return as_output(await in_thread(self.name, self.function, kwargs))


async def in_thread(name: str, function: Any, kwargs: dict[str, Any]) -> Any:
    """``function(**kwargs)`` in a thread of its own, a daemon one.

    Not ``asyncio.to_thread``: a sync tool that overruns its timeout is abandoned but keeps its thread, and in the
    loop's default executor (a handful of threads) a few of those would starve every later sync tool and what
    else the process runs there (DNS lookups); and at shutdown ``asyncio.run`` waits for that executor's threads,
    so one hung tool would hold the process past its grace period for as long as the tool runs.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return  # abandoned (timed out, or the reply was cancelled): the result is dropped
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        try:
            value, error = context.run(function, **kwargs), None
        except BaseException as exc:  # handed to the awaiting task, as to_thread would
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop has closed: nobody is waiting any more

    threading.Thread(target=work, name=f"tool-{name}", daemon=True).start()
    return await future
