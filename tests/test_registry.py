"""The generic registry: options from signatures and docstrings, one checker for the command line and YAML."""

from __future__ import annotations

import math
from typing import Literal

import pytest
from hypothesis import given, settings, strategies as st

from safety_subspaces.errors import UserError
from safety_subspaces.registry import REQUIRED, RegistrationError, Registry, Spec, docstring_args


def fresh() -> Registry:
    """A registry with no built-in package and an entry-point group nobody uses."""
    registry = Registry("widget", "safety_subspaces.tests.widgets", None, context=("device",), flag="--widget")

    @registry.register("scale", aliases=("zoom",))
    def scale(factor: float, mode: Literal["up", "down"] = "up", tags: list[str] | None = None, label: str = "x",
              device: str = "cpu") -> dict:
        """Scale something by a factor.

        Args:
            factor: how much; any number
                (continued on a second line).
            mode: up or down.
            tags: free labels.
            label: a text label.
        """
        return {"factor": factor, "mode": mode, "tags": tags, "label": label, "device": device}

    @registry.register("plain")
    class Plain:
        """A widget with one integer option.

        Args:
            count: how many.
        """

        def __init__(self, count: int = 3):
            self.count = count

    return registry


def test_options_come_from_the_signature_and_the_args_section():
    entry = fresh().get("scale")
    assert [o.name for o in entry.options] == ["factor", "mode", "tags", "label"]  # device is context
    assert entry.option("factor").default is REQUIRED and entry.option("mode").default == "up"
    assert entry.option("factor").doc == "how much; any number (continued on a second line)."
    assert entry.summary == "Scale something by a factor."
    assert [o.name for o in fresh().get("plain").options] == ["count"]


def test_build_fills_defaults_converts_types_and_passes_only_accepted_context():
    registry = fresh()
    built = registry.build(Spec("zoom", {"factor": 2}), "here", device="cuda", unused=1)
    assert built == {"factor": 2.0, "mode": "up", "tags": None, "label": "x", "device": "cuda"}
    assert isinstance(built["factor"], float)
    assert registry.build("plain").count == 3


@pytest.mark.parametrize("spec,needle", [
    (Spec("scale", {}), "here: widget 'scale' needs option 'factor' (how much"),
    (Spec("scale", {"factor": 1, "speed": 2}), "here: unknown option 'speed' for widget 'scale'; its options: factor, mode"),
    (Spec("scale", {"factor": "fast"}), "here.factor: expected a number, got 'fast'"),
    (Spec("scale", {"factor": 1, "mode": "sideways"}), "here.mode: 'sideways' is not allowed; use one of 'up', 'down'"),
    (Spec("spin", {}), "here: unknown widget 'spin'; choose one of scale, plain"),
])
def test_bad_options_are_one_user_error_naming_where_and_the_option(spec, needle):
    with pytest.raises(UserError) as info:
        fresh().build(spec, "here")
    assert needle in str(info.value)


def test_an_option_named_like_a_python_keyword_is_a_parameter_with_a_trailing_underscore():
    registry = fresh()

    @registry.register("penalty")
    def penalty(lambda_: float = 1.0, class_: str = "a") -> dict:
        """A factory whose options are Python keywords.

        Args:
            lambda: the weight.
            class_: a class label.
        """
        return {"lambda": lambda_, "class": class_}

    assert [o.name for o in registry.get("penalty").options] == ["lambda", "class"]
    assert registry.build(Spec("penalty", registry.parse_pairs("penalty", ["lambda=3"], "--arg")), "here") == \
        {"lambda": 3.0, "class": "a"}
    assert registry.build(registry.spec({"name": "penalty", "lambda": 2, "class": "b"}, "cfg"), "cfg") == \
        {"lambda": 2.0, "class": "b"}
    with pytest.raises(UserError, match="unknown option 'lambda_'"):
        registry.build(Spec("penalty", {"lambda_": 2}), "here")


def test_yaml_and_command_line_forms_give_the_same_spec():
    registry = fresh()
    from_yaml = registry.spec({"name": "zoom", "factor": 0.5, "tags": ["a", "b"], "label": "3"}, "cfg")
    from_cli = Spec("scale", registry.parse_pairs("zoom", ["factor=0.5", "tags=a,b", "label=3"], "--widget-arg"))
    assert from_yaml == from_cli == Spec("scale", {"factor": 0.5, "tags": ["a", "b"], "label": "3"})
    assert registry.spec("plain", "cfg") == Spec("plain", {})
    assert registry.spec({"count": 4}, "cfg", fixed="plain") == Spec("plain", {"count": 4})
    assert registry.spec(from_yaml.as_plain(), "cfg") == from_yaml  # the config.yaml form reads back
    assert registry.parse_pairs("scale", ["tags=[x, y]"], "w") == {"tags": ["x", "y"]}
    with pytest.raises(UserError, match="given twice"):
        registry.parse_pairs("scale", ["factor=1", "factor=2"], "--widget-arg")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        registry.parse_pairs("scale", ["factor"], "--widget-arg")
    with pytest.raises(UserError, match="cfg.name: 'scale' is not 'plain'"):
        registry.spec({"name": "scale"}, "cfg", fixed="plain")


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**6, 10**6))
def test_command_line_numbers_read_back_exactly(value, count):
    registry = fresh()
    assert registry.parse_pairs("scale", [f"factor={value!r}"], "w")["factor"] == value
    assert registry.parse_pairs("plain", [f"count={count}"], "w")["count"] == count
    assert math.copysign(1, registry.parse_pairs("scale", [f"factor={value!r}"], "w")["factor"]) == math.copysign(1, value)


def test_registrations_that_break_the_rules_are_refused():
    registry = fresh()

    def undocumented(size: int = 1):
        """A widget whose option has no doc line."""

    with pytest.raises(RegistrationError, match="option 'size' .* has no line"):
        registry.register("bad")(undocumented)

    def untyped(size=1):
        """A widget.

        Args:
            size: its size.
        """

    with pytest.raises(RegistrationError, match="needs a type annotation"):
        registry.register("bad2")(untyped)
    with pytest.raises(RegistrationError, match="registered twice"):
        registry.register("zoom")(lambda: None)

    def named(name: str = ""):
        """A widget.

        Args:
            name: clashes.
        """

    with pytest.raises(RegistrationError, match="may not be called 'name'"):
        registry.register("bad3")(named)


def test_help_text_lists_names_summaries_options_and_defaults():
    text = fresh().help_text()
    assert text.startswith("widget choices (--widget):")
    assert "scale (alias zoom): Scale something by a factor." in text
    assert "factor (float, required): how much" in text and "mode ('up' | 'down', default 'up'): up or down." in text


def test_docstring_args_stops_at_the_next_section():
    doc = """Summary.

    Args:
        a: first.
        b (int): second,
            continued.

    Returns:
        c: not an argument.
    """
    assert docstring_args(doc) == {"a": "first.", "b": "second, continued."}


def test_built_in_registries_load_and_every_option_is_documented():
    from safety_subspaces.analyses import ANALYSES
    from safety_subspaces.edits import EDITS
    from safety_subspaces.evaluate.judges import JUDGES
    from safety_subspaces.study.executors import EXECUTORS
    from safety_subspaces.study.jobs import JOB_KINDS
    from safety_subspaces.study.report.figures import FIGURES
    from safety_subspaces.subspaces import SUBSPACES

    assert {"top_k", "random_k", "random"} <= set(SUBSPACES.names())
    assert {"parallel", "orthogonal", "opposite"} <= set(EDITS.names()) and EDITS.canonical("orth") == "orthogonal"
    assert {"rubric", "refusal", "classifier", "organism"} <= set(JUDGES.names())
    assert {"energy", "weight_overlap", "activation_overlap"} <= set(ANALYSES.names())
    assert {"local", "ray"} <= set(EXECUTORS.names())
    assert {"evaluate", "analysis"} <= set(JOB_KINDS.names())
    assert {"energy_kept", "metrics", "weight_mso", "activation_mso"} <= set(FIGURES.names())
    for registry in (SUBSPACES, EDITS, JUDGES, ANALYSES, EXECUTORS, JOB_KINDS, FIGURES):
        assert all(entry.summary for entry in map(registry.get, registry.names()))
