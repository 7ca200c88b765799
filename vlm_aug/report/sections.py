"""Sections that other parts of vlm_aug add to the report by registration (the lab's downstream
A/B registers one): each takes the output directory and returns HTML, or "" when it has nothing."""

from __future__ import annotations

from typing import Callable

Section = Callable[[str], str]
_REGISTERED: list[Section] = []


def register_section(render: Section) -> None:
    """Add `render` to every report drawn after this call (once, however often it is registered)."""
    if render not in _REGISTERED:
        _REGISTERED.append(render)


def registered_sections(out: str) -> str:
    return "\n".join(html for html in (render(out) for render in _REGISTERED) if html)
