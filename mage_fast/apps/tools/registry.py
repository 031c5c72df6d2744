"""Tools by name (a Python callable plus its JSON schema) and the executor that runs calls.

A user module (``--tool-module pkg.mod`` or ``tools.modules`` in a config) defines ``TOOLS``, a
list of :class:`Tool`::

    from mage_fast.apps.tools.registry import Tool

    def weather(city: str) -> str:
        return "sunny"

    TOOLS = [Tool(weather, {"name": "weather", "description": "weather in a city",
                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                           "required": ["city"]}})]

The callable gets the call's arguments as keyword arguments, plus ``images`` (the conversation's
images so far, PIL, oldest first) when ``Tool.images`` is set. It returns a string, a JSON-able
dict or list (dumped), or a PIL image (an image observation: ``<image>``, and the image goes back
into the conversation). Anything else, an exception, or running past ``timeout_s`` gives an error
observation ``{"error": "..."}``; the executor itself never raises on a call. A timed-out tool's
thread cannot be killed in Python: it finishes in the background and its result is dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mage_fast.shapes import builtin
from mage_fast.toolcall.format import IMAGE_TOKEN, Call, RowError, check_calls

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Tool:
    """A callable and its ``{"name", "description", "parameters"}`` schema."""

    fn: Callable[..., Any]
    schema: dict[str, Any]
    images: bool = False  # the callable takes ``images=``

    @property
    def name(self) -> str:
        return self.schema["name"]


@dataclass
class Observation:
    """A call's result: ``text`` for the observation turn (``<image>`` per image), ``images``."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    error: str | None = None


class Registry:
    """Tools by name; :meth:`execute` runs one call."""

    def __init__(self, tools: Iterable[Tool] = (), timeout_s: float = DEFAULT_TIMEOUT_S):
        self.tools: dict[str, Tool] = {}
        self.timeout_s = float(timeout_s)
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> None:
        if not isinstance(tool, Tool) or not isinstance(tool.schema.get("name"), str):
            raise TypeError(f"expected a Tool with a named schema, got {tool!r:.80}")
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self.tools[tool.name] = tool

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self.tools.values()]

    def execute(self, call: Call, images: Sequence[Image.Image] = ()) -> Observation:
        """Validate and run ``call``; every failure is an error observation, never an exception."""
        try:
            check_calls([call], self.schemas())
        except RowError as e:
            return _error(f"{e.reason}: {e.detail}")
        tool = self.tools[call.name]
        kw = dict(call.arguments) | ({"images": list(images)} if tool.images else {})
        pool = cf.ThreadPoolExecutor(max_workers=1)
        try:
            out = pool.submit(tool.fn, **kw).result(timeout=self.timeout_s)
        except cf.TimeoutError:
            return _error(f"{call.name} timed out after {self.timeout_s:g} s")
        except Exception as e:  # noqa: BLE001 - a tool's failure is the model's observation
            return _error(f"{call.name} raised {type(e).__name__}: {e}")
        finally:
            pool.shutdown(wait=False)
        return _wrap(call.name, out)


def _error(msg: str) -> Observation:
    return Observation(json.dumps({"error": msg}), error=msg)


def _wrap(name: str, out: Any) -> Observation:
    if isinstance(out, Image.Image):
        return Observation(IMAGE_TOKEN, [out.convert("RGB")])
    if isinstance(out, str):
        return Observation(out)
    if isinstance(out, dict | list):
        try:
            return Observation(json.dumps(out, ensure_ascii=False))
        except (TypeError, ValueError) as e:
            return _error(f"{name} returned a {type(out).__name__} that is not JSON: {e}")
    return _error(f"{name} returned {type(out).__name__}; a tool returns str, dict, list or a PIL image")


def builtin_tools() -> list[Tool]:
    """The shapes world's ``render_scene`` and ``edit_scene``."""
    return [Tool(builtin.render_scene, builtin.RENDER_SCHEMA), Tool(builtin.edit_scene, builtin.EDIT_SCHEMA, True)]


def load_module_tools(path: str) -> list[Tool]:
    """``TOOLS`` of the module at dotted ``path``; a clear error when it has none."""
    mod = importlib.import_module(path)
    tools = getattr(mod, "TOOLS", None)
    if not isinstance(tools, list | tuple) or not all(isinstance(t, Tool) for t in tools):
        raise ValueError(f"tool module {path!r} must define TOOLS, a list of mage_fast.apps.tools.registry.Tool")
    return list(tools)


def make_registry(modules: Sequence[str] = (), builtin: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S) -> Registry:
    """The built-in tools (unless ``builtin=False``) and those of each user module."""
    tools = builtin_tools() if builtin else []
    for m in modules:
        tools += load_module_tools(m)
    return Registry(tools, timeout_s)
