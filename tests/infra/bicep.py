"""Reading Bicep through tree-sitter-bicep: just enough of a model for tests to assert on a template.

Terminology:
- *node*: a tree-sitter syntax node. Values in a template are nodes, not Python values, because most of them
  are expressions only Azure Resource Manager evaluates; ``literal`` turns the constant ones into Python.
- *resource*: a ``resource`` declaration, nested ones included; its *type* is the full type
  (``Microsoft.Web/sites/config``) even when the declaration is nested and names only ``config``.
- *template*: ``infra/main.bicep`` and the modules it composes, by path relative to ``infra/``.
- *mutated copy*: a template with one file's text changed, built to show that a check notices the change.

The grammar is the published ``tree-sitter-bicep``; it predates a few newer keywords (``extension``, typed
``resourceInput<>``), which this template does not use.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import tree_sitter_bicep
from tree_sitter import Language, Node, Parser, Tree

INFRA = Path(__file__).resolve().parents[2] / "infra"

_LANGUAGE = Language(tree_sitter_bicep.language())
_ESCAPES = {"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}


class NotLiteral(enum.Enum):
    """What ``literal`` returns for an expression ARM evaluates (a reference, a call, an interpolation)."""

    EXPRESSION = "expression"


EXPRESSION = NotLiteral.EXPRESSION
Literal = str | bool | int | None | NotLiteral


def node_text(node: Node) -> str:
    return (node.text or b"").decode()


def named_children(node: Node) -> list[Node]:
    """Named children without comments (tree-sitter attaches comments wherever they fall)."""
    return [child for child in node.named_children if child.type != "comment"]


def is_string_literal(node: Node) -> bool:
    # `string` is also the primitive type keyword, a leaf; a string literal has its quotes as children.
    return node.type == "string" and node.child_count > 0


def string_text(node: Node) -> str:
    """A string's value with escapes decoded and each interpolation kept as ``${source}``."""
    parts: list[str] = []
    for child in node.children:
        if child.type == "string_content":
            parts.append(node_text(child))
        elif child.type == "escape_sequence":
            parts.append(_ESCAPES.get(node_text(child), node_text(child)))
        elif child.type == "interpolation":
            parts.append(node_text(child))
    return "".join(parts)


def literal(node: Node | None) -> Literal:
    """The Python value of a constant expression; ``EXPRESSION`` for anything ARM has to evaluate."""
    if node is None:
        return EXPRESSION
    if is_string_literal(node):
        if any(child.type == "interpolation" for child in node.children):
            return EXPRESSION
        return string_text(node)
    if node.type == "boolean":
        return node_text(node) == "true"
    if node.type == "number":
        return int(node_text(node))
    if node.type == "null":
        return None
    if node.type == "unary_expression" and node_text(node).startswith("-"):
        operand = literal(named_children(node)[-1])
        return -operand if isinstance(operand, int) and not isinstance(operand, bool) else EXPRESSION
    return EXPRESSION


def property_key(prop: Node) -> str | None:
    """The key of an ``object_property``, or None for a nested resource declaration."""
    children = named_children(prop)
    if not children or children[0].type == "resource_declaration":
        return None
    key = children[0]
    return string_text(key) if is_string_literal(key) else node_text(key)


def property_value(prop: Node) -> Node:
    children = named_children(prop)
    return children[-1]


def object_properties(obj: Node) -> dict[str, Node]:
    """Key → value node of an object literal (nested resource declarations are not properties)."""
    if obj.type != "object":
        return {}
    result: dict[str, Node] = {}
    for prop in named_children(obj):
        if prop.type != "object_property":
            continue
        key = property_key(prop)
        if key is not None:
            result[key] = property_value(prop)
    return result


def lookup(obj: Node | None, dotted: str) -> Node | None:
    """``lookup(body, "properties.siteConfig.minTlsVersion")``; None when a step is missing or no object."""
    current = obj
    for key in dotted.split("."):
        if current is None:
            return None
        current = object_properties(current).get(key)
    return current


def call_name(call: Node) -> str:
    """``union`` for ``union(a, b)``, ``listKeys`` for ``account.listKeys()``."""
    function = call.child_by_field_name("function") or named_children(call)[0]
    if function.type == "member_expression":
        prop = function.child_by_field_name("property")
        return node_text(prop) if prop is not None else node_text(function)
    return node_text(function)


def call_arguments(call: Node) -> list[Node]:
    arguments = call.child_by_field_name("arguments")
    return named_children(arguments) if arguments is not None else []


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def identifiers(node: Node) -> set[str]:
    """Every bare identifier an expression refers to (not member names after a dot, not object keys)."""
    found: set[str] = set()
    for child in walk(node):
        if child.type != "identifier" or child.parent is None:
            continue
        parent = child.parent
        if parent.type == "object_property" and named_children(parent)[0] == child:
            continue  # an object key
        if parent.type == "call_expression" and parent.child_by_field_name("function") == child:
            continue  # a function name
        found.add(node_text(child))
    return found


@dataclass(frozen=True)
class Resource:
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: Node
    declaration: Node

    def get(self, dotted: str) -> Node | None:
        return lookup(self.body, dotted)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: Node | None
    decorators: Mapping[str, Node]  # decorator name → the decorator's call expression
    declaration: Node

    def decorator_argument(self, name: str) -> Node | None:
        call = self.decorators.get(name)
        if call is None:
            return None
        arguments = call_arguments(call)
        return arguments[0] if arguments else None


@dataclass(frozen=True)
class Module:
    symbol: str
    path: str
    body: Node


@dataclass(frozen=True)
class BicepFile:
    name: str
    source: bytes
    tree: Tree = field(repr=False)

    @classmethod
    def parse(cls, name: str, text: str) -> BicepFile:
        source = text.encode()
        return cls(name=name, source=source, tree=Parser(_LANGUAGE).parse(source))

    @property
    def text(self) -> str:
        return self.source.decode()

    @property
    def root(self) -> Node:
        return self.tree.root_node

    def syntax_errors(self) -> list[str]:
        return [
            f"{self.name}:{node.start_point.row + 1}:{node.start_point.column + 1}: "
            f"{'missing ' + node.type if node.is_missing else 'cannot parse'} {node_text(node)[:60]!r}"
            for node in walk(self.root)
            if node.type == "ERROR" or node.is_missing
        ]

    def _declarations(self, kind: str) -> Iterator[tuple[Node, dict[str, Node]]]:
        """Top-level declarations of one kind, each with the decorators written above it."""
        pending: dict[str, Node] = {}
        for child in named_children(self.root):
            if child.type == "decorators":
                for decorator in named_children(child):
                    call = named_children(decorator)[0]
                    name = call_name(call) if call.type == "call_expression" else node_text(call)
                    pending[name] = call
                continue
            if child.type == kind:
                yield child, pending
            pending = {}

    def params(self) -> dict[str, Param]:
        result: dict[str, Param] = {}
        for declaration, decorators in self._declarations("parameter_declaration"):
            children = named_children(declaration)
            name, type_ = node_text(children[0]), node_text(children[1])
            default = children[2] if len(children) > 2 else None
            result[name] = Param(name, type_, default, decorators, declaration)
        return result

    def variables(self) -> dict[str, Node]:
        return {
            node_text(named_children(declaration)[0]): named_children(declaration)[-1]
            for declaration, _ in self._declarations("variable_declaration")
        }

    def outputs(self) -> dict[str, Node]:
        return {
            node_text(named_children(declaration)[0]): named_children(declaration)[-1]
            for declaration, _ in self._declarations("output_declaration")
        }

    def modules(self) -> dict[str, Module]:
        result: dict[str, Module] = {}
        for declaration, _ in self._declarations("module_declaration"):
            children = named_children(declaration)
            symbol = node_text(children[0])
            result[symbol] = Module(symbol, string_text(children[1]), children[-1])
        return result

    def resources(self) -> list[Resource]:
        """Every resource declaration, nested children included, with full types."""
        found: list[Resource] = []

        def visit(node: Node, parent_type: str | None) -> None:
            for child in named_children(node):
                if child.type == "resource_declaration":
                    found.append(self._resource(child, parent_type))
                    visit(found[-1].body, found[-1].type)
                elif child.type == "object_property" and parent_type is not None:
                    visit(child, parent_type)

        visit(self.root, None)
        return found

    def _resource(self, declaration: Node, parent_type: str | None) -> Resource:
        children = named_children(declaration)
        type_and_version = string_text(children[1])
        type_, _, version = type_and_version.partition("@")
        if parent_type is not None and "/" not in type_:
            type_ = f"{parent_type}/{type_}"
        existing = any(child.type == "existing" for child in declaration.children)
        body = children[-1]
        if body.type == "if_statement":  # `= if (condition) { ... }`
            body = named_children(body)[-1]
        return Resource(node_text(children[0]), type_, version, existing, body, declaration)

    def resources_of_type(self, type_: str, *, existing: bool = False) -> list[Resource]:
        return [r for r in self.resources() if r.type.lower() == type_.lower() and r.existing == existing]

    def resource(self, symbol: str) -> Resource:
        matches = [r for r in self.resources() if r.symbol == symbol]
        assert matches, f"{self.name}: no resource named {symbol}"
        return matches[0]

    def calls(self) -> Iterator[Node]:
        return (node for node in walk(self.root) if node.type == "call_expression")

    def strings(self) -> Iterator[Node]:
        return (node for node in walk(self.root) if is_string_literal(node))

    def comments_on_row(self, row: int) -> list[str]:
        return [
            node_text(node)
            for node in walk(self.root)
            if node.type == "comment" and node.start_point.row == row
        ]

    def replaced(self, old: str, new: str) -> BicepFile:
        """A copy with ``old`` (which must occur exactly once) replaced by ``new``."""
        count = self.text.count(old)
        assert count == 1, f"{self.name}: expected exactly one {old!r} to mutate, found {count}"
        return BicepFile.parse(self.name, self.text.replace(old, new))

    def without(self, node: Node) -> BicepFile:
        """A copy with one node's text cut out (e.g. a whole resource declaration)."""
        source = self.source[: node.start_byte] + self.source[node.end_byte :]
        return BicepFile.parse(self.name, source.decode())


@dataclass(frozen=True)
class Template:
    files: Mapping[str, BicepFile]

    def __getitem__(self, name: str) -> BicepFile:
        return self.files[name]

    @property
    def main(self) -> BicepFile:
        return self.files["main.bicep"]

    def with_file(self, replacement: BicepFile) -> Template:
        assert replacement.name in self.files, replacement.name
        return Template({**self.files, replacement.name: replacement})

    def mutated(self, name: str, old: str, new: str) -> Template:
        return self.with_file(self[name].replaced(old, new))

    def resources(self, type_: str, *, existing: bool = False) -> list[tuple[BicepFile, Resource]]:
        return [
            (file, resource)
            for file in self.files.values()
            for resource in file.resources_of_type(type_, existing=existing)
        ]

    def module_file(self, symbol: str) -> BicepFile:
        """The file a module declaration of main.bicep points at."""
        return self.files[self.main.modules()[symbol].path]


def bicep_files(root: Path = INFRA) -> list[Path]:
    return sorted(root.rglob("*.bicep"))


@cache
def load_template(root: Path = INFRA) -> Template:
    return Template(
        {
            path.relative_to(root).as_posix(): BicepFile.parse(
                path.relative_to(root).as_posix(), path.read_text()
            )
            for path in bicep_files(root)
        }
    )
