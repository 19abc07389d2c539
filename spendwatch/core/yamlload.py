"""YAML loading for config files: bounded work for any input, no silent duplicate keys.

``yaml.safe_load`` builds no objects beyond plain data, but it still trusts the
document's *shape*: nine anchors of nine aliases each (a "billion laughs" file of a few
hundred bytes) expand to 9⁹ values and take gigabytes, a recursive alias or a few
thousand nested brackets exhaust the interpreter's stack, and a key given twice
silently keeps the last value. :func:`load_yaml` refuses all of that before anything
is expanded:

* at most :data:`MAX_ALIASES` alias uses (``*name``) per document: enough for a few
  shared defaults merged with ``<<: *defaults``, never a reason to expand a bomb;
* at most :data:`MAX_NODES` values once aliases are expanded, counted on the composed
  node graph (where an alias is only a reference) before any object is built;
* at most :data:`MAX_DEPTH` levels of nesting, aliases included; no recursive alias;
* no key twice in one mapping (keys merged in by ``<<`` may be overridden: that is
  what a merge is for);
* a value its constructor rejects (``2024-02-30`` as a date) is a YAML error at its
  line, not a traceback.

Every refusal is a :class:`yaml.MarkedYAMLError` whose ``problem_mark`` is the line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ALIASES = 100
MAX_NODES = 50_000
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLLimitError(yaml.MarkedYAMLError):
    """The document exceeds a bound of this loader (aliases, size, depth) or is recursive."""


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping gives the same key twice.

    ``path`` is the mapping's key path in the data (as :func:`load_yaml` found it),
    ``key`` the repeated key and ``first_line`` (1-based) where it was first given.
    """

    def __init__(self, key: Any, key_node: Node, mapping: MappingNode, first_line: int) -> None:
        super().__init__(
            problem=f"duplicate key (first given on line {first_line})",
            problem_mark=key_node.start_mark,
        )
        self.key = key
        self.mapping = mapping
        self.first_line = first_line
        self.path: list[Any] = []


class ConfigLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` with the bounds and checks described in the module doc."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0
        self._depth = 0
        # Mappings whose explicit keys were checked: a merge later flattens a mapping in
        # place, and its overridden merged keys must then not count as duplicates.
        self._checked: set[int] = set()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(
                    problem=f"more than {MAX_ALIASES} aliases (*name); anchors and aliases "
                    "are meant for a few shared defaults",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise YAMLLimitError(
                problem=f"more than {MAX_NODES} values in one config file",
                problem_mark=self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(
                    problem=f"nested more than {MAX_DEPTH} levels deep",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, OverflowError, TypeError) as error:
            # e.g. ``start: 2024-02-30``: the timestamp resolver matches, datetime refuses.
            raise yaml.constructor.ConstructorError(
                problem=f"invalid {node.tag.rsplit(':', 1)[-1]} value ({error})",
                problem_mark=node.start_mark,
            ) from None

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._refuse_duplicates(node)
        return super().construct_mapping(node, deep)

    def _refuse_duplicates(self, node: MappingNode) -> None:
        """Explicit keys of ``node`` are distinct, and so are those of what it merges."""
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in merged:
                    if isinstance(source, MappingNode):
                        self._refuse_duplicates(source)
                continue
            key = self.construct_object(key_node)
            try:
                line = first_line.get(key)
            except TypeError:
                continue  # unhashable: the base constructor reports it with its mark
            if line is not None:
                raise DuplicateKeyError(key, key_node, node, line)
            first_line[key] = key_node.start_mark.line + 1


def check_graph(root: Node) -> None:
    """Refuse recursive aliases, and documents too big or too deep once aliases expand.

    Works on the composed graph, where an alias is a second reference to one node, so
    it costs one visit per distinct node whatever the expansion would be.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_nodes: set[int] = set()

    def children(node: Node) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    def visit(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise YAMLLimitError(
                problem="recursive alias: an anchored value contains an alias to itself",
                problem_mark=node.start_mark,
            )
        if key in measured:
            count, height = measured[key]
        elif isinstance(node, ScalarNode):
            count, height = 1, 1
        else:
            if depth > MAX_DEPTH:
                raise YAMLLimitError(
                    problem=f"nested more than {MAX_DEPTH} levels deep once aliases expand",
                    problem_mark=node.start_mark,
                )
            open_nodes.add(key)
            count, height = 1, 1
            for child in children(node):
                child_count, child_height = visit(child, depth + 1)
                count += child_count
                height = max(height, child_height + 1)
                if count > MAX_NODES:
                    raise YAMLLimitError(
                        problem=f"expands to more than {MAX_NODES} values through aliases",
                        problem_mark=node.start_mark,
                    )
            open_nodes.discard(key)
            measured[key] = (count, height)
        if depth + height - 1 > MAX_DEPTH:
            raise YAMLLimitError(
                problem=f"nested more than {MAX_DEPTH} levels deep once aliases expand",
                problem_mark=node.start_mark,
            )
        return count, height

    visit(root, 1)


def load_yaml(text: str) -> tuple[Any, Node | None]:
    """The document's data and its composed root node (for line numbers), bounded.

    Raises :class:`yaml.YAMLError` (marked where possible) for anything refused.
    """
    loader = ConfigLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        check_graph(root)
        try:
            return loader.construct_document(root), root
        except DuplicateKeyError as error:
            error.path = path_to(root, error.mapping) or []
            raise
    finally:
        loader.dispose()


def path_to(root: Node, target: Node) -> list[Any] | None:
    """Key path (as in the data) from ``root`` to ``target``, first found; ``None`` if absent."""
    stack: list[tuple[Node, list[Any]]] = [(root, [])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((child, [*path, i]) for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            for key_node, value_node in reversed(node.value):
                key = key_node.value if isinstance(key_node, ScalarNode) else "?"
                stack.append((value_node, [*path, key]))
    return None
