"""What the autopilot tried and chose: `Candidate` rows and the `RecipeChoice` it attaches
to the model's report (`qmodel.autoqnn_report.recipe`).

Example:
    >>> from autoqnn.autopilot.choice import Candidate, RecipeChoice
    >>> from autoqnn.autopilot.judge import Score
    >>> rows = [Candidate("defaults", None, "search", Score(0.05), 3.0, 1000.0, 1.2),
    ...         Candidate("uniform 3-bit", None, "uniform", Score(0.09), 3.0, 1000.0, 0.4)]
    >>> choice = RecipeChoice("defaults", rows, "KL on 16 held-out samples", Score(0.0), 60.0,
    ...                       1.6, [])
    >>> choice.best.name, choice.to_dict()["chosen"]
    ('defaults', 'defaults')
"""

from __future__ import annotations

import dataclasses

from autoqnn.autopilot.judge import Score


@dataclasses.dataclass
class Candidate:
    """One candidate the autopilot built and judged.

    Attributes:
        name: a short name ("defaults", "mse+bc", "uniform 3-bit", ...).
        recipe: the `PTQConfig` as a dict, or None for `quantize`'s defaults.
        kind: "search" (per-layer bits measured under the recipe), "uniform" (every
            searchable layer at one width, the baseline at the same budget) or "adaround"
            (the best policy rebuilt with learned rounding).
        score: its `Score` on the held-out data (None when it failed).
        weight_bits: its average weight bits.
        size_bytes: its size as the report counts it.
        seconds: time spent on it.
        error: why it failed or was not kept (None when it was judged).
    """

    name: str
    recipe: dict | None
    kind: str
    score: Score | None
    weight_bits: float | None
    size_bytes: float | None
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["score"] = None if self.score is None else dataclasses.asdict(self.score)
        return out


@dataclasses.dataclass
class RecipeChoice:
    """The autopilot's decision, as `qmodel.autoqnn_report.recipe`.

    Attributes:
        chosen: the name of the kept candidate.
        candidates: every `Candidate`, in the order tried.
        judge: how they were judged.
        float_score: the float model's score under the same judge.
        time_budget_seconds: the time budget.
        seconds: time spent in all.
        skipped: what the time budget left untried.
        mode: "retrain-free" or "trained".
        notes: what else the autopilot decided (e.g. the trained recipe's epochs).
    """

    chosen: str
    candidates: list
    judge: str
    float_score: Score
    time_budget_seconds: float | None
    seconds: float
    skipped: list
    mode: str = "retrain-free"
    notes: list = dataclasses.field(default_factory=list)

    @property
    def best(self) -> Candidate:
        """The chosen `Candidate`."""
        return next(c for c in self.candidates if c.name == self.chosen)

    @property
    def recipe(self) -> dict | None:
        """The chosen recipe (a `PTQConfig` dict; None: `quantize`'s defaults)."""
        return self.best.recipe

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "mode": self.mode, "judge": self.judge,
                "float_score": dataclasses.asdict(self.float_score),
                "time_budget_seconds": self.time_budget_seconds,
                "seconds": round(self.seconds, 2), "skipped": list(self.skipped),
                "notes": list(self.notes),
                "candidates": [c.to_dict() for c in self.candidates]}

    def __str__(self):
        lines = [f"autopilot ({self.mode}): chose {self.chosen!r} by {self.judge} "
                 f"(float: {self.float_score}) in {self.seconds:.1f} s"]
        width = max(len(c.name) for c in self.candidates) if self.candidates else 4
        for c in self.candidates:
            mark = "*" if c.name == self.chosen else " "
            what = str(c.score) if c.score is not None else f"not kept: {c.error}"
            bits = f"{c.weight_bits:.2f} bits" if c.weight_bits is not None else "-"
            lines.append(f" {mark} {c.name:<{width}}  {c.kind:<8} {bits:>10}  "
                         f"{c.seconds:6.1f} s  {what}")
        if self.skipped:
            lines.append(f"   not tried within {self.time_budget_seconds:g} s: "
                         + ", ".join(self.skipped))
        lines.extend(f"   {note}" for note in self.notes)
        return "\n".join(lines)
