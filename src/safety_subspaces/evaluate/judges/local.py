"""What the judges that run a local model share: their data files, references, loading once on a device (bf16 on
CUDA), left-padded batches, last-position logits and greedy decoding with an explicit config."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from ...errors import UserError

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPES = ("auto", "bfloat16", "float16", "float32")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
RESOURCE_DIR = ("resources", "judges")  # the judges' prompt templates and data, package data


# ---------------------------------------------------------------- data files


def resource(name: str):
    """A judge data file of the package (an importlib Traversable)."""
    return resources.files("safety_subspaces").joinpath(*RESOURCE_DIR, name)


def read_template(name: str) -> str:
    """A judge prompt template's exact text (UTF-8 bytes decoded, no newline translation)."""
    return resource(name).read_bytes().decode("utf-8")


def read_data(name: str) -> Any:
    """A JSON data file of the judges."""
    return json.loads(resource(name).read_bytes().decode("utf-8"))


def text_digest(text: str) -> str:
    """First 16 hex digits of the sha256 of a text's UTF-8 bytes (how templates are pinned and named)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- options and items


def choice(option: str, value: Any, allowed: Sequence[str]) -> str:
    """The value if it is one of the allowed strings, else a UserError naming the option."""
    if value not in allowed:
        raise UserError(f"judge option {option}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def positive(option: str, value: Any) -> int:
    """The value if it is an integer of at least 1, else a UserError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"judge option {option}: expected an integer of at least 1, got {value!r}")
    return value


def split_item(item: Any) -> tuple[str, str, str | None]:
    """(request, reply, context or None) of an item, checking that it holds strings."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise UserError(f"judge item: expected (request, reply) or (request, reply, context), got {item!r:.80}")
    request, reply = item[0], item[1]
    context = item[2] if len(item) == 3 else None
    if not isinstance(request, str) or not isinstance(reply, str) or not isinstance(context, (str, type(None))):
        raise UserError(f"judge item: request, reply and context must be strings, got {item!r:.80}")
    return request, reply, context


def chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """(start index, slice) pairs of consecutive slices of at most size items."""
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


# ---------------------------------------------------------------- device, dtype, quiet


def judge_dtype(dtype: str, device: str) -> str:
    """A judge's dtype name: 'auto' is bfloat16 on CUDA and float32 elsewhere; else the named one."""
    choice("dtype", dtype, DTYPES)
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


@contextlib.contextmanager
def hushed(quiet: bool) -> Iterator[None]:
    """While quiet, silence transformers' warnings and progress bars; restore them afterwards."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def status(message: str, quiet: bool) -> None:
    """A status line on stderr unless quiet (the command's --quiet or the judge's own)."""
    if not quiet:
        from ...progress import info

        info(message)


# ---------------------------------------------------------------- references and loading


def check_reference(ref: str | None, role: str) -> str | None:
    """A model reference checked without loading: a local directory must exist; a hub id is noted, not fetched."""
    from ...model_dir import looks_like_hub_id

    if ref is None:
        return None
    directory = Path(ref).expanduser()
    if directory.is_dir():
        return None
    if not directory.exists() and looks_like_hub_id(str(ref)):
        return f"{role} {ref} from the hub (not fetched)"
    raise UserError(f"{role} {ref}: no such directory")


def adapter_base(adapter_dir: Path) -> str:
    """The base model an adapter names in its adapter_config.json (base_model_name_or_path)."""
    from ...files import read_json

    config = read_json(adapter_dir / "adapter_config.json", role="judge adapter",
                       missing=f"judge adapter {adapter_dir}: no adapter_config.json")
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise UserError(f"judge adapter {adapter_dir}: adapter_config.json names no base_model_name_or_path")
    return str(base)


@dataclass(frozen=True)
class Located:
    """Local directories of a judge's weights: the model, an optional adapter, and where its tokenizer lives."""

    model_dir: Path
    adapter_dir: Path | None
    tokenizer_dir: Path


def locate(model: str | None, adapter: str | None = None, *, allow_pickle: bool = False) -> Located:
    """Resolve a judge model (and adapter) from paths or hub ids; without a model, the adapter's own base."""
    from ...model_dir import resolve_model

    adapter_dir = None
    if adapter is not None:
        adapter_dir = resolve_model(adapter, role="judge adapter")
        weights = [name for name in ("adapter_model.safetensors", "adapter_model.bin")
                   if (adapter_dir / name).is_file() and (allow_pickle or name.endswith(".safetensors"))]
        if not weights:
            pickled = (adapter_dir / "adapter_model.bin").is_file()
            raise UserError(f"judge adapter {adapter}: no adapter_model.safetensors" +
                            ("; it holds pickle weights: pass --allow-pickle to load them" if pickled else ""))
        if model is None:
            model = adapter_base(adapter_dir)
    if model is None:
        raise UserError("the judge model is missing: pass --judge-arg model=PATH_OR_HUB_ID")
    model_dir = resolve_model(model, role="judge model")
    own_tokenizer = adapter_dir is not None and any((adapter_dir / name).is_file() for name in TOKENIZER_FILES)
    return Located(model_dir, adapter_dir, adapter_dir if own_tokenizer else model_dir)


def load_tokenizer(located: Located, *, trust_remote_code: bool, quiet: bool):
    """A judge's tokenizer (the adapter's own when it ships one), padding on the left, pad = eos if it has none."""
    from ...models import load_tokenizer as load

    with hushed(quiet):
        if located.tokenizer_dir == located.model_dir:
            return load(located.model_dir, trust_remote_code=trust_remote_code, role="judge model")
        from transformers import AutoTokenizer  # an adapter's own tokenizer files (no config.json, no custom code)

        try:
            tokenizer = AutoTokenizer.from_pretrained(located.tokenizer_dir)
        except (OSError, ValueError) as exc:
            raise UserError(f"judge adapter {located.tokenizer_dir}: no usable tokenizer "
                            f"({str(exc).splitlines()[0][:200]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(located: Located, *, dtype: str, device: str, trust_remote_code: bool, allow_pickle: bool,
               quiet: bool):
    """A judge's causal LM in eval mode on its device, the adapter attached unmerged (as upstream loads it)."""
    from ...models import load_model as load

    with hushed(quiet):
        model = load(located.model_dir, dtype=dtype, device=None, trust_remote_code=trust_remote_code,
                     allow_pickle=allow_pickle, role="judge model")
        if located.adapter_dir is not None:
            try:
                model.load_adapter(str(located.adapter_dir))
            except (OSError, ValueError, RuntimeError) as exc:
                raise UserError(f"judge adapter {located.adapter_dir}: could not attach "
                                f"({str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval()


# ---------------------------------------------------------------- batches


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """input_ids and attention_mask tensors with every row padded on the left to the longest."""
    import torch

    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("left_pad needs non-empty rows")
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[index, width - len(row) :] = 1
    return ids, mask


def with_single_bos(ids: Sequence[int], bos_id: int | None) -> list[int]:
    """The ids with the BOS id in front, added only when the tokenizer did not already put it there."""
    ids = list(ids)
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids.insert(0, bos_id)
    return ids


def next_token_logits(model, rows: Sequence[Sequence[int]], pad_id: int):
    """Float32 logits (batch × vocab) of the token after each left-padded row."""
    import torch

    ids, mask = left_pad(rows, pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
    return out.logits[:, -1, :].float().cpu()


def eos_ids(model, tokenizer) -> list[int]:
    """Token ids that end a generation: the model's generation config eos ids, else the tokenizer's eos."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    return [int(i) for i in ids if i is not None]


@dataclass(frozen=True)
class Generated:
    """Greedy continuations: new ids per row (cut before the first eos), whether each row reached an eos, and
    optionally the probabilities of watched token ids at every step (steps × batch × watched)."""

    ids: list[list[int]]
    finished: list[bool]
    watched: Any = None


def greedy_generate(model, rows: Sequence[Sequence[int]], *, pad_id: int, eos: Sequence[int], max_new_tokens: int,
                    watch: Sequence[int] | None = None) -> Generated:
    """Greedy decoding of left-padded rows with an explicit config (the model's own sampling defaults ignored)."""
    import torch
    from transformers import GenerationConfig

    ids, mask = left_pad(rows, pad_id)
    device = next(model.parameters()).device
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=list(eos), output_logits=watch is not None, return_dict_in_generate=True)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        watched = None
        if watch is not None:
            watched = torch.stack([step.float().log_softmax(-1)[:, list(watch)].exp().cpu() for step in out.logits])
    stops = set(eos)
    new_ids, finished = [], []
    for row in out.sequences[:, ids.shape[1] :].cpu().tolist():
        cut = next((k for k, token in enumerate(row) if token in stops), None)
        new_ids.append(row if cut is None else row[:cut])
        finished.append(cut is not None)
    return Generated(new_ids, finished, watched)


class LocalJudge:
    """Mixin of the local-model judges: the options they share, and loading once (tokenizer checks first)."""

    title: str = ""

    def setup(self, *, model: str | None, adapter: str | None, dtype: str, batch_size: int, device: str | None,
              trust_remote_code: bool, allow_pickle: bool, quiet: bool) -> None:
        """Record the options every local judge has (checked; nothing is loaded)."""
        from ...runtime import resolve_device

        self.model_ref, self.adapter_ref = model, adapter
        self.batch_size = positive("batch_size", batch_size)
        self.device = resolve_device(device)
        self.dtype = judge_dtype(dtype, self.device)
        self.trust_remote_code, self.allow_pickle, self.quiet = bool(trust_remote_code), bool(allow_pickle), bool(quiet)
        self._loaded: tuple[Any, Any] | None = None

    def encoded_batches(self, items: Sequence[Any], *, context: bool = False) -> Iterator[tuple[int, list[list[int]]]]:
        """(start index, input-id rows) per batch of at most batch_size items; every item is checked before the first.

        context: pass (request, reply, context) to encode; otherwise (request, reply).
        """
        parsed = [split_item(item) if context else split_item(item)[:2] for item in items]
        for start, chunk in chunks(parsed, self.batch_size):
            yield start, [self.encode(*fields) for fields in chunk]

    def loaded(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded on first use and kept; the tokenizer is checked before the weights load."""
        if self._loaded is None:
            located = locate(self.model_ref, self.adapter_ref, allow_pickle=self.allow_pickle)
            what = f"{located.model_dir}" + (f" + adapter {located.adapter_dir}" if located.adapter_dir else "")
            status(f"loading judge {self.title}: {what} ({self.dtype} on {self.device})", self.quiet)
            tokenizer = load_tokenizer(located, trust_remote_code=self.trust_remote_code, quiet=self.quiet)
            self.check_tokenizer(tokenizer)
            model = load_model(located, dtype=self.dtype, device=self.device, trust_remote_code=self.trust_remote_code,
                               allow_pickle=self.allow_pickle, quiet=self.quiet)
            self._loaded = model, tokenizer
        return self._loaded

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Checks and lookups a judge makes on its tokenizer before the weights load (none by default)."""

    def local_identity(self) -> dict[str, Any]:
        """The identity parts every local judge has: its model (and adapter) references and dtype."""
        identity: dict[str, Any] = {"model": self.model_ref}
        if self.adapter_ref is not None:
            identity["adapter"] = self.adapter_ref
        return {**identity, "dtype": self.dtype}
