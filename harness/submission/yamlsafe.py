"""A strict YAML reader for files that strangers write (``submission.yaml``).

On top of PyYAML's safe loader (no ``!!python/...`` tags, so no object is built and no code runs):

- a duplicate mapping key is an error (PyYAML keeps the last value silently: ``{eps: 0.3, eps: 0.01}``);
- nesting deeper than :data:`MAX_DEPTH` is an error, raised before PyYAML's recursive composer could
  exhaust the stack;
- aliases (``*name``) and merge keys (``<<``) are refused: a submission never needs them, and aliases
  are how a few bytes of YAML expand into a structure that takes exponential time to walk;
- the document is at most :data:`MAX_BYTES` bytes, and numbers at most :data:`MAX_NUMBER_CHARS`
  characters (YAML 1.1 base-60 integers such as ``1:2:...:3`` otherwise make huge integers slowly);
- the file must be a regular file; a symlink is followed only when its target lies in the same
  folder, so a ``submission.yaml`` that points outside is refused before a byte of it is read.

Every refusal is a :class:`~harness.core.errors.HarnessError` of one line naming the file and the line.
The checks hook into PyYAML's Python composer and constructor; libyaml (when PyYAML has it) only
scans and parses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode

from harness.core.errors import HarnessError, one_line
from harness.core.files import read_bytes_confined

MAX_BYTES = 1 << 20  # 1 MiB; a submission.yaml is a couple of kilobytes
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 1000  # a 400-digit eps reaches the schema, which names the field


class _Strict:
    """The checks, as overrides of PyYAML's composer and safe constructor (mixed in below)."""

    _depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not allowed", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        if not isinstance(node, MappingNode):
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConstructorError(None, None, "merge keys (<<) are not allowed", key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(None, None, "a mapping key must be a plain value", key_node.start_mark)
            if key in seen:
                raise ConstructorError(
                    None, None, f"duplicate key {str(key)[:60]!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def _short_number(self, node):  # noqa: ANN001
        value = self.construct_scalar(node)
        if len(value) > MAX_NUMBER_CHARS:
            raise ConstructorError(None, None, f"a number of {len(value)} characters is too long "
                                               f"(at most {MAX_NUMBER_CHARS})", node.start_mark)

    def construct_yaml_int(self, node):  # noqa: ANN001
        self._short_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):  # noqa: ANN001
        self._short_number(node)
        return super().construct_yaml_float(node)


class _StrictLoader(_Strict, yaml.SafeLoader):
    """Pure Python: scanner, parser, composer and constructor."""


_LOADERS: list[type] = [_StrictLoader]
if getattr(yaml, "__with_libyaml__", False):
    from yaml._yaml import CParser
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    class _FastStrictLoader(_Strict, Composer, CParser, SafeConstructor, Resolver):
        """libyaml's scanner and parser (events; about 5x faster) under PyYAML's Python composer,
        so that the depth and alias checks above run before any node is built."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _LOADERS.insert(0, _FastStrictLoader)

for _cls in _LOADERS:
    _cls.add_constructor("tag:yaml.org,2002:int", _cls.construct_yaml_int)
    _cls.add_constructor("tag:yaml.org,2002:float", _cls.construct_yaml_float)


def load_yaml_text(text: str, name: str = "<yaml>") -> Any:
    """Parse one YAML document with the strict loader; one-line HarnessError naming ``name`` and the line."""
    loader = None
    try:
        loader = _LOADERS[0](text)  # the reader refuses non-printable characters here already
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if isinstance(e, yaml.reader.ReaderError) and isinstance(e.position, int):
            where = f" at line {text.count(chr(10), 0, e.position) + 1}"
        problem = getattr(e, "problem", None) or (str(e).splitlines() or ["malformed"])[0]
        if "nesting depth" in str(problem):  # libyaml's own cap (PyYAML >= 6.0.4's wheels) fired before ours
            problem = f"nested deeper than {MAX_DEPTH} levels"
        raise HarnessError(f"{name}: malformed YAML{where}: {problem}")
    except (ValueError, OverflowError, RecursionError, MemoryError) as e:  # belt and braces
        raise HarnessError(f"{name}: malformed YAML: {type(e).__name__}: {one_line(e, 200)}")
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse a YAML file that a stranger wrote (see the module docstring)."""
    path = Path(path)
    data = read_bytes_confined(path, max_bytes=max_bytes, what="YAML document")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text (byte {e.start})")
    if "\x00" in text:
        raise HarnessError(f"{path}: malformed YAML at line {text.count(chr(10), 0, text.index(chr(0))) + 1}: "
                           "NUL byte")
    return load_yaml_text(text, str(path))
