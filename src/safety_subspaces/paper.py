"""The paper's settings, declared once: the defaults of every command, analysis and study (docs/design.md §3-6).

Plain values only (no torch), so command-line parsers read them without loading the numerical stack.
"""

from __future__ import annotations

FRACTIONS = (0.01, 0.25, 0.5, 0.75, 0.99)  # rank fractions ϱ of the projection grid
SUBSPACE_KINDS = ("top_k", "random_k", "random")  # the subspace kinds compared
SCHEMES = ("parallel", "orthogonal")  # the projection schemes of the paper's tables
ETAS = (0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)  # energy fractions η of MSO
PERCENTILES = (70.0, 85.0)  # depth percentiles of weight MSO (Figure 4)
BAND = (0.65, 0.90)  # depth band of activation MSO (Figures 5, 8)
PROMPTS_PER_SET = 5000  # n of activation MSO
