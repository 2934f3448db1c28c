"""Named form components: handlers receive `{name: value}` and return `{name: value}`, never long positional lists.

Gradio passes a dict `{component: value}` to a handler whose `inputs` is a set, and accepts a dict
`{component: update}` as its return value; this class translates both to and from field names.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from gradio.components import Component

C = TypeVar("C", bound=Component)


class NamedComponents:
    """An ordered name → component map for one form."""

    def __init__(self) -> None:
        self._by_name: dict[str, Component] = {}

    def add(self, name: str, component: C) -> C:
        if name in self._by_name:
            raise ValueError(f"form field {name!r} added twice")
        self._by_name[name] = component
        return component

    def __getitem__(self, name: str) -> Component:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    @property
    def inputs(self) -> set[Component]:
        return set(self._by_name.values())

    @property
    def outputs(self) -> list[Component]:
        return list(self._by_name.values())

    def values(self, data: Mapping[Component, Any]) -> dict[str, Any]:
        """Gradio's `{component: value}` → `{name: value}` for the fields of this form."""
        return {name: data[component] for name, component in self._by_name.items() if component in data}

    def updates(self, values: Mapping[str, Any]) -> dict[Component, Any]:
        """`{name: value}` → `{component: value}`; names this form lacks are ignored."""
        return {self._by_name[name]: value for name, value in values.items() if name in self._by_name}
