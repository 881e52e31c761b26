"""Task graphs: implied edges, validation and cycle naming. Pure Python, no database.

Validation happens before anything is stored, and reports every problem at
once as field errors in the shape the API answers with
(``tasks[3].depends_on: unknown task key 'x'``).
"""

import graphlib
from collections.abc import Hashable, Sequence
from typing import TypeVar

from taskqueue.errors import ProjectInvalid

SEQUENTIAL, PARALLEL, DAG = "sequential", "parallel", "dag"

# A task's key before it is stored, its id after.
_Node = TypeVar("_Node", bound=Hashable)


def graph_edges(
    *, keys: Sequence[str], depends_on: Sequence[Sequence[str]], mode: str
) -> dict[str, list[str]]:
    """Each task's dependencies, with the edges that sequential mode implies."""
    if mode == SEQUENTIAL:
        return {key: ([keys[index - 1]] if index else []) for index, key in enumerate(keys)}
    if mode == PARALLEL:
        return {key: [] for key in keys}
    return {key: list(dict.fromkeys(deps)) for key, deps in zip(keys, depends_on, strict=True)}


def graph_validate(
    *, keys: Sequence[str], depends_on: Sequence[Sequence[str]], mode: str, max_tasks: int
) -> dict[str, list[str]]:
    """The dependency map of a valid project, or ``ProjectInvalid`` naming every problem."""
    if not keys:
        raise ProjectInvalid(
            "A project needs at least one task.",
            fields={"tasks": ["a project needs at least one task"]},
        )
    if len(keys) > max_tasks:
        message = f"a project has at most {max_tasks} tasks; this one has {len(keys)}"
        raise ProjectInvalid("The project is too large.", fields={"tasks": [message]})
    fields: dict[str, list[str]] = {}
    first_index: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in first_index:
            fields.setdefault(f"tasks[{index}].key", []).append(
                f"duplicate key {key!r} (also tasks[{first_index[key]}])"
            )
        else:
            first_index[key] = index
    for index, deps in enumerate(depends_on):
        if deps and mode != DAG:
            fields.setdefault(f"tasks[{index}].depends_on", []).append(
                f"a {mode} project implies its dependencies; use mode 'dag' to name them"
            )
        for dep in deps:
            if dep not in first_index:
                fields.setdefault(f"tasks[{index}].depends_on", []).append(
                    f"unknown task key {dep!r}"
                )
    if fields:
        raise ProjectInvalid("The project's tasks are not valid.", fields=fields)
    edges = graph_edges(keys=keys, depends_on=depends_on, mode=mode)
    cycle = graph_find_cycle(edges)
    if cycle:
        named = " → ".join(cycle)
        raise ProjectInvalid(
            f"The tasks form a dependency cycle: {named}.",
            fields={"tasks": [f"dependency cycle: {named}"]},
        )
    return edges


def graph_find_cycle(edges: dict[str, list[str]]) -> list[str]:
    """One cycle as ``[a, b, c, a]`` (a depends on b, ...), or [] when the graph is acyclic.

    ``graphlib`` finds it (without recursion, so a 10,000-task chain is
    fine); it lists each node before the one that depends on it, so the
    cycle is turned round, then started at its task that comes first.
    """
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        nodes = list(reversed(error.args[1]))[:-1]
        order = {key: index for index, key in enumerate(edges)}
        first = min(range(len(nodes)), key=lambda index: order.get(nodes[index], len(order)))
        return [*nodes[first:], *nodes[:first], nodes[first]]
    return []


def graph_descendants(*, edges: dict[_Node, list[_Node]], roots: set[_Node]) -> set[_Node]:
    """Every task that depends, directly or not, on one of ``roots`` (roots excluded)."""
    dependents: dict[_Node, list[_Node]] = {key: [] for key in edges}
    for key, deps in edges.items():
        for dep in deps:
            dependents[dep].append(key)
    seen: set[_Node] = set()
    frontier = list(roots)
    while frontier:
        for child in dependents.get(frontier.pop(), []):
            if child not in seen:
                seen.add(child)
                frontier.append(child)
    return seen - roots
