"""The README and docs are true on any machine: the README's Python example runs exactly as written (on the test zoo,
which $SAFETY_SUBSPACES_ZOO makes the default zoo), and no page cites a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_python_example_runs_as_written(organism_zoo, monkeypatch, capsys):
    from safety_subspaces.checkpoints import Checkpoint
    from safety_subspaces.tables import ENERGY

    monkeypatch.setenv("SAFETY_SUBSPACES_ZOO", str(organism_zoo))
    (block,) = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["Z"] == str(organism_zoo)
    assert 1.0 <= float(capsys.readouterr().out.strip().splitlines()[-1]) <= 5.0  # the printed harm score
    rows = namespace["rows"]
    assert set(ENERGY.columns) <= set(rows[0])
    assert {(r["subspace"], r["scheme"], r["fraction"]) for r in rows if r["scope"] == "model"} == {
        (kind, scheme, fraction) for kind in ("top_k", "random") for scheme in ("parallel", "orthogonal")
        for fraction in (0.25, 0.5)}
    model, aligned = namespace["model"], Checkpoint(organism_zoo / "aligned")
    parameters = dict(model.named_parameters())
    assert all(torch.equal(parameters[name], aligned.read(name)) for name in aligned.names)  # live.restore() undid it


def test_pages_cite_only_files_in_the_repository():
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for needle in ("DESIGN.md", "DESIGN §", "/work/", "shared/"):
            if needle in text:
                problems.append(f"{page.name} mentions {needle!r}")
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+://", target) or target.startswith("#"):
                continue
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                problems.append(f"{page.name} links {target}, which is not a file in the repository")
    assert problems == []


def test_the_design_page_covers_what_the_readme_points_to():
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/design.md)" in readme and "2505.14185" in design
    for heading in ("Objects and notation", "Tensors as matrices", "Rank fractions and the k rule", "Subspace kinds",
                    "Projection schemes", "Energy kept and cosines", "MSO and its random baseline",
                    "Weight MSO and activation MSO", "Depth rules", "Evaluation metrics", "Result tables",
                    "Exact decompositions", "Architecture", "Determinism", "Security"):
        assert re.search(rf"^#+ (\d+\. )?{re.escape(heading)}$", design, flags=re.M), heading
