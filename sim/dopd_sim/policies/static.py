"""static: a fixed P/D layout, never rescaled (DistServe's placement idea: pick the best layout offline).

`StaticPolicy(prefill, decode)` holds a given layout; `search.best_static_layout` finds the layout with
the highest SLO attainment for a GPU count by simulating the candidate splits of that count.
"""

from __future__ import annotations

from dataclasses import dataclass

from dopd_sim.policies.base import Architecture, Layout, TickInput


@dataclass
class StaticPolicy:
    prefill: int
    decode: int
    name: str = "static"
    architecture: Architecture = "disaggregated"

    def decide(self, tick: TickInput) -> Layout:
        return Layout(prefill=self.prefill, decode=self.decode)

    def initial_layout(self, tick: TickInput) -> Layout:
        return Layout(prefill=self.prefill, decode=self.decode)
