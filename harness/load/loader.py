"""YAML loading with a safe loader that remembers the line of every field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from harness.core.errors import CaseError, CaseProblem

# Cases are small; a larger file is a mistake (or an attack), not a case.
MAX_CASE_FILE_BYTES = 1_000_000
# Aliases can make a small file expand enormously or refer to itself; cap the walk.
MAX_NODES = 200_000
MAX_DEPTH = 64

PathKey = tuple[str | int, ...]


class CaseLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`; people write both)."""


CaseLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CaseLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    """The plain data of a YAML document and the 1-based line of each field path in it."""

    data: Any
    lines: dict[PathKey, int]

    def line_of(self, path: PathKey) -> int | None:
        """The line of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def format_path(path: PathKey) -> str:
    """`('steps', 2, 'mode')` -> `steps[2].mode`; `('mode', '')` -> `mode.""`."""
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            name = key if key else '""'
            text += f".{name}" if text else name
    return text


def load_yaml(text: str, source: str) -> LoadedDocument:
    """Parse one YAML document with a safe loader (`CaseLoader`), keeping line marks.

    Raises:
        CaseError: broken YAML, a tag that would build a Python object, duplicate keys,
            several documents in one file, or a file too large to be a case.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_CASE_FILE_BYTES:
        raise CaseError(
            source,
            [CaseProblem(None, "", "file too large for a case", f"at most {MAX_CASE_FILE_BYTES} bytes")],
        )
    too_deep = _flow_nesting_problem(text)
    if too_deep is not None:  # checked before parsing: PyYAML's parser recurses once per level
        raise CaseError(source, [too_deep])
    loader = None
    try:
        loader = CaseLoader(text)  # its reader already refuses characters YAML does not allow
        root = loader.get_single_node()
        if root is None:
            raise CaseError(source, [CaseProblem(1, "", "the file is empty", "a mapping of case fields")])
        lines: dict[PathKey, int] = {}
        problems: list[CaseProblem] = []
        try:
            _record_lines(root, (), root.start_mark.line + 1, lines, problems)
        except _TooLarge as too_large:
            raise CaseError(source, [too_large.problem]) from None
        if problems:
            raise CaseError(source, problems)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(part for part in (error.context, error.problem) if part)
        opened = error.context_mark
        if opened is not None and line is not None and opened.line + 1 != line and (error.context or "").startswith(_UNCLOSED):
            # An unclosed bracket or quote is noticed lines later: point at where it opened.
            reason += f" (noticed at line {line})"
            line = opened.line + 1
        raise CaseError(source, [CaseProblem(line, "", f"invalid YAML: {reason}")]) from None
    except yaml.reader.ReaderError as error:  # a character YAML does not allow (NUL, control characters)
        character = f"#x{error.character:04x}" if isinstance(error.character, int) else repr(error.character)
        raise CaseError(
            source,
            [CaseProblem(text.count("\n", 0, error.position) + 1, "", f"invalid YAML: character {character} is not allowed in YAML text")],
        ) from None
    except yaml.YAMLError as error:
        raise CaseError(source, [CaseProblem(None, "", f"invalid YAML: {error}")]) from None
    except RecursionError:  # block nesting deep enough to exhaust the parser before the depth check
        raise CaseError(source, [CaseProblem(None, "", "nesting too deep", f"at most {MAX_DEPTH} levels")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return LoadedDocument(data, lines)


def _flow_nesting_problem(text: str) -> CaseProblem | None:
    """The first line where flow collections (`[`, `{`) nest deeper than MAX_DEPTH, outside quotes
    and comments; None when they do not."""
    depth, line, quote, comment = 0, 1, "", False
    previous = "\n"
    for character in text:
        if character == "\n":
            line, comment = line + 1, False
        elif comment:
            pass
        elif quote:
            if character == quote:
                quote = ""
        elif character in "\"'" and previous in " \t[{,:\n":
            quote = character
        elif character == "#" and previous in " \t\n":
            comment = True
        elif character in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return CaseProblem(line, "", "nesting too deep", f"at most {MAX_DEPTH} levels")
        elif character in "]}":
            depth = max(depth - 1, 0)
        previous = character
    return None


# Errors YAML notices where the document goes on without a closing bracket or quote.
_UNCLOSED = ("while parsing a flow", "while scanning a quoted scalar")
_INT_TAG, _STR_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:str"
INTEGER_LIMIT = 2**63  # what every framework's integer arguments (seeds, sizes) can hold


def _integer_in_range(text: str) -> bool:
    """Whether a YAML integer literal lies strictly within ±INTEGER_LIMIT (read without building
    integers of unbounded length)."""
    digits = text.lstrip("+-").replace("_", "")
    if len(digits) > 70:  # beyond 2**63 in every base YAML 1.1 writes integers in (binary: 0b and 64 digits)
        return False
    try:
        value = yaml.SafeLoader.construct_yaml_int(yaml.SafeLoader(""), yaml.ScalarNode(_INT_TAG, text))
    except ValueError:
        return False
    return -INTEGER_LIMIT < value < INTEGER_LIMIT


def shortened(text: str, limit: int = 60) -> str:
    """At most `limit` characters of a value a message quotes: a message never echoes a whole file
    (a case that is a symlink to another file is one YAML string)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quoted(value: Any) -> str:
    """`repr(value)`, shortened."""
    return shortened(repr(value))


class _TooLarge(Exception):
    def __init__(self, problem: CaseProblem) -> None:
        self.problem = problem


def _record_lines(
    node: yaml.Node,
    path: PathKey,
    line: int,
    lines: dict[PathKey, int],
    problems: list[CaseProblem],
) -> None:
    if len(path) > MAX_DEPTH:
        raise _TooLarge(CaseProblem(line, format_path(path[:4]) + "...", "nesting too deep", f"at most {MAX_DEPTH} levels"))
    if len(lines) >= MAX_NODES:
        raise _TooLarge(CaseProblem(line, "", "document too large (aliases expand too far)", f"at most {MAX_NODES} nodes"))
    lines[path] = line
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and not _integer_in_range(node.value):
        # Refused before construction: PyYAML's int() of thousands of digits raises ValueError.
        problems.append(CaseProblem(line, format_path(path), f"integer out of range ({shortened(node.value, 40)})", "-2**63 < n < 2**63"))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), item.start_mark.line + 1, lines, problems)
    elif isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            key_line = key_node.start_mark.line + 1
            if key_node.tag != _STR_TAG:
                allowed = f"text: quote it ('{shortened(key, 40)}')" if isinstance(key_node, yaml.ScalarNode) else "text"
                problems.append(CaseProblem(key_line, format_path((*path, key)), "a key that is not text", allowed))
            if key in seen:
                problems.append(CaseProblem(key_line, format_path((*path, key)), "duplicate key"))
            seen.add(key)
            # A field's line is where its key is written, even when its value starts below.
            _record_lines(value_node, (*path, key), key_line, lines, problems)
