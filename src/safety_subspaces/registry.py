"""One registry per concept (subspace kinds, edits, judges, analyses, job kinds, executors, figures).

A registry owns its names, and each entry's options with their defaults and documentation, derived from the
registered factory's signature (a class: its __init__) and the `Args:` section of its docstring. The command line
(`--edit NAME --edit-arg k=v`) and a study YAML (`NAME` or `{name: NAME, k: v}`) go through the same `spec` and
`build`, so they accept the same options with the same checks. Built-ins are the modules of the registry's
package, imported on first use (a new file there registers itself); outside packages register through the
Python entry-point group of the registry (`NAME = package.module:factory`).
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import pkgutil
import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterable, Mapping, Sequence

from .errors import UserError
from .schema import admits_text, as_plain, convert, describe, is_list

REQUIRED = inspect.Parameter.empty
ARG_LINE = re.compile(r"^(\s*)(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+-]*$")


class RegistrationError(TypeError):
    """A registration that breaks the rules (an undocumented option, a taken name): a programming error."""


@dataclass(frozen=True)
class Option:
    """One option of a registered factory: its name, type, default (REQUIRED if none) and one-line documentation.

    parameter is the factory's parameter that takes it: the name itself, or the name with a trailing underscore when
    the name is a Python keyword (an option `lambda` is the parameter `lambda_`).
    """

    name: str
    annotation: Any
    default: Any
    doc: str
    parameter: str = ""

    @property
    def required(self) -> bool:
        """Whether the option has no default."""
        return self.default is REQUIRED

    def describe(self) -> str:
        """'name (type, default X): doc' for help texts."""
        default = "required" if self.required else f"default {self.default!r}"
        return f"{self.name} ({describe(self.annotation)}, {default}): {self.doc}"


@dataclass(frozen=True)
class Entry:
    """A registered factory under its name, with its summary and options."""

    name: str
    factory: Callable[..., Any]
    summary: str
    options: tuple[Option, ...]
    aliases: tuple[str, ...] = ()
    source: str = "built-in"

    def option(self, name: str) -> Option | None:
        """The option called name, if the factory has one."""
        return next((option for option in self.options if option.name == name), None)

    def accepts(self, name: str) -> bool:
        """Whether the factory takes an option of this name."""
        return self.option(name) is not None


@dataclass(frozen=True)
class Spec:
    """A registered thing as a config names it: its (canonical) name and the options given."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_plain(self) -> dict[str, Any]:
        """{name: NAME, k: v, ...}: the YAML form (read back by Registry.spec)."""
        return {"name": self.name, **as_plain(dict(self.options))}

    def with_options(self, **options: Any) -> "Spec":
        """A copy with more options."""
        return Spec(self.name, {**self.options, **options})

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({inner})" if inner else self.name


def docstring_args(doc: str | None) -> dict[str, str]:
    """The entries of a Google-style `Args:` section: {name: its text, continuation lines joined}."""
    lines = (doc or "").expandtabs().splitlines()
    found: dict[str, str] = {}
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Arguments:")), None)
    if start is None:
        return found
    header = len(lines[start]) - len(lines[start].lstrip())
    item_indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header:
            break
        match = ARG_LINE.match(line)
        if match and (item_indent is None or indent == item_indent):
            item_indent, current = indent, match.group(2).lstrip("*")
            found[current] = match.group(3).strip()
        elif current is not None:
            found[current] = f"{found[current]} {line.strip()}".strip()
    return found


def summary_of(doc: str | None) -> str:
    """The first line of a docstring."""
    return (doc or "").strip().splitlines()[0].strip() if (doc or "").strip() else ""


def signature_of(factory: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any], str | None]:
    """The factory's parameters, their resolved annotations and its docstring (a class: its __init__'s)."""
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    signature = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # an annotation that cannot be resolved here (a context parameter's type, for instance)
        hints = {}
    doc = factory.__doc__ if inspect.isclass(factory) and docstring_args(factory.__doc__) else target.__doc__
    return signature, hints, doc or factory.__doc__


def option_name(parameter: str) -> str:
    """The option a parameter takes: its name, less a trailing underscore that only avoids a Python keyword."""
    return parameter[:-1] if parameter.endswith("_") and keyword.iskeyword(parameter[:-1]) else parameter


def derive_options(name: str, factory: Callable[..., Any], context: Sequence[str], concept: str) -> tuple[Option, ...]:
    """The user options of a factory (every parameter but the context ones), each documented in its `Args:`."""
    signature, hints, doc = signature_of(factory)
    documented = docstring_args(doc)
    options = []
    for parameter in signature.parameters.values():
        if parameter.name in context:
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise RegistrationError(f"{concept} {name!r}: {factory.__qualname__} takes *{parameter.name}; "
                                    "name every option")
        if parameter.name == "name":
            raise RegistrationError(f"{concept} {name!r}: an option may not be called 'name' (it names the {concept})")
        option = option_name(parameter.name)
        doc = documented.get(option) or documented.get(parameter.name)
        if not doc:
            raise RegistrationError(f"{concept} {name!r}: option {option!r} of {factory.__qualname__} has no "
                                    "line in the docstring's Args: section")
        annotation = hints.get(parameter.name, parameter.annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            raise RegistrationError(f"{concept} {name!r}: option {option!r} needs a type annotation")
        options.append(Option(option, annotation, parameter.default, doc, parameter.name))
    return tuple(options)


def scalar(text: str) -> Any:
    """A command-line value as YAML reads it (1e-3 and other number forms YAML 1.1 misses read as numbers)."""
    import yaml

    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else value
        except ValueError:
            return value
    return value


class _Names:
    """Annotated[str, ...] checker: a registered name (aliases resolved to the canonical name)."""

    def __init__(self, registry: "Registry"):
        self.registry = registry

    def convert(self, value: Any, where: str) -> str:
        """The canonical name of a registered entry (a UserError naming where otherwise)."""
        if not isinstance(value, str):
            raise UserError(f"{where}: expected the name of a {self.registry.concept}, got {value!r}")
        return self.registry.canonical(value, where)


class _Specs:
    """Annotated[Spec, ...] checker: NAME or {name: NAME, k: v} (or just the options, for a fixed name)."""

    def __init__(self, registry: "Registry", fixed: str | None):
        self.registry, self.fixed = registry, fixed

    def convert(self, value: Any, where: str) -> Spec:
        """A Spec with checked options (required ones may come later)."""
        return self.registry.spec(value, where, fixed=self.fixed)


class Registry:
    """Named factories of one concept, loaded lazily from a package of built-ins and an entry-point group."""

    def __init__(self, concept: str, group: str, package: str | None, *, context: Sequence[str] = (),
                 flag: str = ""):
        self.concept, self.group, self.package = concept, group, package
        self.context = tuple(context)  # parameters the caller supplies (never user options)
        self.flag = flag  # how a command line names one (for help texts), e.g. --edit
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False

    # ------------------------------------------------------------------ registration

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a factory (function or class) under name."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, factory, aliases=aliases)
            return factory

        return decorate

    def add(self, name: str, factory: Callable[..., Any], *, aliases: Iterable[str] = (), source: str = "built-in") -> Entry:
        """Register factory under name; its options must all be documented (RegistrationError otherwise)."""
        aliases = tuple(aliases)
        for label in (name, *aliases):
            if not NAME_PATTERN.match(label):
                raise RegistrationError(f"{self.concept} name {label!r}: use letters, digits and _ . + -")
            if label in self._entries or label in self._aliases:
                raise RegistrationError(f"{self.concept} {label!r} is registered twice")
        doc = factory.__doc__ if inspect.isclass(factory) else getattr(factory, "__doc__", None)
        summary = summary_of(doc)
        if not summary:
            raise RegistrationError(f"{self.concept} {name!r}: {factory.__qualname__} needs a docstring")
        entry = Entry(name, factory, summary, derive_options(name, factory, self.context, self.concept), aliases, source)
        if inspect.isclass(factory) and hasattr(factory, "name") and not factory.name:
            factory.name = name  # a registered class knows its name (labels, identities) without declaring it again
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        return entry

    def _load(self) -> None:
        """Import the package's modules (built-ins) and the entry points of the group (plugins), once."""
        if self._loaded:
            return
        self._loaded = True
        if self.package is not None:
            package = importlib.import_module(self.package)
            for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{module.name}")
        from importlib.metadata import entry_points

        for point in sorted(entry_points(group=self.group), key=lambda p: p.name):
            try:
                loaded = point.load()
            except Exception as exc:
                raise UserError(f"plugin {point.name} = {point.value} (entry point group {self.group}) failed to load: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
            if point.name not in self._entries and point.name not in self._aliases:
                if not callable(loaded) or inspect.ismodule(loaded):
                    raise UserError(f"plugin {point.name} = {point.value} (entry point group {self.group}) names no "
                                    f"{self.concept} factory and registered none under {point.name!r}")
                self.add(point.name, loaded, source=f"plugin {point.value}")

    # ------------------------------------------------------------------ lookup

    def names(self) -> list[str]:
        """Every registered name, built-ins first (in module, then definition order), then plugins."""
        self._load()
        return list(self._entries)

    def canonical(self, name: str, where: str = "") -> str:
        """The registered name that name is (or is an alias of); a UserError listing the names otherwise."""
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}unknown {self.concept} {name!r}; choose one of {', '.join(self._entries)}")

    def get(self, name: str, where: str = "") -> Entry:
        """The entry of a name or alias (a UserError naming the choices otherwise)."""
        return self._entries[self.canonical(name, where)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or name in self._aliases

    # ------------------------------------------------------------------ options

    def options(self, name: str, values: Mapping[str, Any], where: str, *, partial: bool = False) -> dict[str, Any]:
        """Check and convert option values by their annotations; unless partial, fill defaults and need the required."""
        entry = self.get(name, where)
        prefix = f"{where}: " if where else ""
        known = {option.name: option for option in entry.options}
        unknown = [key for key in values if key not in known]
        if unknown:
            listing = ", ".join(known) or "none"
            raise UserError(f"{prefix}unknown option {unknown[0]!r} for {self.concept} {entry.name!r}; its options: {listing}")
        converted = {key: convert(value, known[key].annotation, f"{where}.{key}" if where else key)
                     for key, value in values.items()}
        if partial:
            return converted
        missing = [option.name for option in entry.options if option.required and option.name not in converted]
        if missing:
            raise UserError(f"{prefix}{self.concept} {entry.name!r} needs option {missing[0]!r} "
                            f"({entry.option(missing[0]).doc})")  # type: ignore[union-attr]
        return {**{o.name: o.default for o in entry.options if not o.required}, **converted}

    def spec(self, value: Any, where: str, *, fixed: str | None = None) -> Spec:
        """A Spec from NAME or {name: NAME, k: v} (for a fixed name, also just {k: v}); options checked, not filled."""
        if isinstance(value, Spec):
            value = value.as_plain()
        if isinstance(value, str) and fixed is None:
            return Spec(self.canonical(value, where))
        if not isinstance(value, Mapping):
            form = "a mapping of its options" if fixed else f"the name of a {self.concept} or {{name: NAME, option: value}}"
            raise UserError(f"{where}: expected {form}, got {value!r}")
        options = dict(value)
        name = options.pop("name", fixed)
        if name is None:
            raise UserError(f"{where}: give the {self.concept}'s name as name: NAME")
        canonical = self.canonical(str(name), f"{where}.name")
        if fixed is not None and canonical != self.canonical(fixed):
            raise UserError(f"{where}.name: {name!r} is not {fixed!r}")
        return Spec(canonical, self.options(canonical, options, where, partial=True))

    def name_type(self) -> Any:
        """A type annotation for a registered name (the study schema checks it against this registry)."""
        return Annotated[str, _Names(self)]

    def spec_type(self, fixed: str | None = None) -> Any:
        """A type annotation for NAME or {name: NAME, k: v} of this registry (or the options of one fixed name)."""
        return Annotated[Spec, _Specs(self, fixed)]

    def parse_pairs(self, name: str, pairs: Sequence[str], where: str) -> dict[str, Any]:
        """KEY=VALUE strings as typed options of an entry (values read as YAML scalars unless the option is text).

        A list option takes [a, b] or a,b.
        """
        entry = self.get(name, where)
        out: dict[str, Any] = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise UserError(f"{where} {pair!r}: expected KEY=VALUE")
            if key in out:
                raise UserError(f"{where} {key}=...: given twice")
            option = entry.option(key)
            if option is None or admits_text(option.annotation):
                out[key] = text  # unknown keys are named by options() below
                continue
            value = scalar(text)
            if is_list(option.annotation) and isinstance(value, str) and "," in value:
                value = [scalar(item) for item in value.split(",")]
            out[key] = value
        unknown = [key for key in out if entry.option(key) is None]
        if unknown:
            self.options(entry.name, {unknown[0]: None}, where, partial=True)  # the error naming the options
        return {key: convert(value, entry.option(key).annotation, f"{where} {key}")  # type: ignore[union-attr]
                for key, value in out.items()}

    # ------------------------------------------------------------------ building

    def build(self, spec: Spec | str, where: str = "", **context: Any) -> Any:
        """Call the factory of a spec with its options (defaults filled) and the context it accepts."""
        if isinstance(spec, str):
            spec = Spec(spec)
        entry = self.get(spec.name, where)
        options = self.options(entry.name, spec.options, where)
        parameters = {option.name: option.parameter or option.name for option in entry.options}
        accepted = inspect.signature(entry.factory).parameters
        supplied = {key: value for key, value in context.items() if key in accepted}
        return entry.factory(**{parameters[key]: value for key, value in options.items()}, **supplied)

    def help_text(self) -> str:
        """Every entry with its summary and options (for --help epilogs and the docs)."""
        lines = []
        for entry in (self._entries[name] for name in self.names()):
            aliases = f" (alias {', '.join(entry.aliases)})" if entry.aliases else ""
            source = "" if entry.source == "built-in" else f" [{entry.source}]"
            lines.append(f"  {entry.name}{aliases}{source}: {entry.summary}")
            lines.extend(f"      {option.describe()}" for option in entry.options)
        heading = f"{self.concept} choices" + (f" ({self.flag})" if self.flag else "")
        return heading + ":\n" + "\n".join(lines)
