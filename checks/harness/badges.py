"""Progress badges, rendered offline: an SVG per phase and overall, plus shields.io endpoint JSON.

The JSON files follow the shields.io endpoint schema, so a learner's fork can publish them (the
workflow in ``.github/workflows/katas.yml`` does) and show live badges with
``https://img.shields.io/endpoint?url=<raw url of overall.json>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anybadge

from .progress import Progress, effective_status
from .registry import Registry

# (fraction passed at least, shields colour name, hex for the SVG)
COLOURS = (
    (1.0, "brightgreen", "#4c1"),
    (0.5, "yellowgreen", "#a4a61d"),
    (0.0001, "yellow", "#dfb317"),
    (0.0, "lightgrey", "#9f9f9f"),
)


@dataclass(frozen=True)
class Badge:
    name: str  # file stem: "overall", "phase1", ...
    label: str
    passed: int
    total: int

    @property
    def message(self) -> str:
        return f"{self.passed}/{self.total}"

    def colour(self) -> tuple[str, str]:
        fraction = self.passed / self.total if self.total else 0.0
        return next((name, hex_) for floor, name, hex_ in COLOURS if fraction >= floor)

    def endpoint(self) -> dict:
        return {"schemaVersion": 1, "label": self.label, "message": self.message, "color": self.colour()[0]}

    def svg(self) -> str:
        return anybadge.Badge(self.label, self.message, default_color=self.colour()[1]).badge_svg_text


def compute(registry: Registry, progress: Progress) -> list[Badge]:
    """One badge per phase that has exercises, then the overall one. Stale passes do not count."""
    badges = []
    for phase in registry.phases:
        exercises = [e for k in phase.katas for e in k.exercises]
        if exercises:
            passed = sum(effective_status(registry, progress, e) == "passed" for e in exercises)
            badges.append(Badge(phase.id, f"phase {phase.number}", passed, len(exercises)))
    badges.append(Badge("overall", "katas", sum(b.passed for b in badges), sum(b.total for b in badges)))
    return badges


def write(badges: list[Badge], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for badge in badges:
        svg, endpoint = out_dir / f"{badge.name}.svg", out_dir / f"{badge.name}.json"
        svg.write_text(badge.svg(), encoding="utf-8")
        endpoint.write_text(json.dumps(badge.endpoint(), indent=2) + "\n", encoding="utf-8")
        written += [svg, endpoint]
    return written
