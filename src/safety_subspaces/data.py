"""Datasets and prompt sets: named sources (hub ids), local JSONL/JSON/CSV/Parquet/TXT files, field mappings, mixing."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import UserError
from .files import check_csv, read_text
from .paths import zoo_data_file

Record = dict[str, Any]


@dataclass(frozen=True)
class Source:
    """A named dataset on the hub: where it is, which split, how its columns map to ours, which rows to keep."""

    hub_id: str
    split: str
    fields: Mapping[str, str]
    config: str | None = None
    keep: Callable[[Mapping[str, Any]], bool] | None = None
    shuffle_seed: int | None = None
    limit: int | None = None
    description: str = ""


def _is_unsafe(row: Mapping[str, Any]) -> bool:
    return row.get("is_safe") is False


def _is_safe(row: Mapping[str, Any]) -> bool:
    return row.get("is_safe") is True


def _xstest_label(row: Mapping[str, Any]) -> str:
    """An XSTest row's label (safe or unsafe); rows without one (an old revision of a mirror) are a UserError."""
    if "label" not in row:
        raise UserError("XSTest rows have no 'label' column (an old copy?); use the v2 prompts, whose columns are "
                        "id,prompt,type,label,focus,note")
    return str(row["label"]).strip().lower()


def _xstest_safe(row: Mapping[str, Any]) -> bool:
    return _xstest_label(row) == "safe"


def _xstest_unsafe(row: Mapping[str, Any]) -> bool:
    return _xstest_label(row) == "unsafe"



SOURCES: dict[str, Source] = {
    "metamathqa": Source("meta-math/MetaMathQA", "train", {"prompt": "query", "response": "response"}, limit=20000,
                         description="useful: MetaMathQA train[:20000] (paper §5)"),
    "beavertails_unsafe": Source("PKU-Alignment/BeaverTails", "30k_train",
                                 {"prompt": "prompt", "response": "response", "category": "category"},
                                 keep=_is_unsafe, shuffle_seed=42, limit=4000,
                                 description="harmful: BeaverTails 30k_train is_safe=False, seed-42 shuffle, 4000"),
    "beavertails_unsafe_all": Source("PKU-Alignment/BeaverTails", "30k_train",
                                     {"prompt": "prompt", "response": "response", "category": "category"},
                                     keep=_is_unsafe, shuffle_seed=42,
                                     description="activation overlap: every BeaverTails 30k_train is_safe=False row, seed-42 shuffle (n = 5000 needs more than 4000)"),
    "beavertails_safe": Source("PKU-Alignment/BeaverTails", "30k_train",
                               {"prompt": "prompt", "response": "response", "category": "category"},
                               keep=_is_safe, shuffle_seed=42,
                               description="safety tuning: BeaverTails 30k_train is_safe=True"),
    "pku_saferlhf": Source("PKU-Alignment/PKU-SafeRLHF", "train",
                           {"prompt": "prompt", "response_0": "response_0", "response_1": "response_1",
                            "safer_response_id": "safer_response_id"},
                           shuffle_seed=42, limit=10000,
                           description="DPO safety tuning: PKU-SafeRLHF preference pairs, 10k"),
    "advbench": Source("walledai/AdvBench", "train", {"prompt": "prompt", "target": "target"},
                       description="harm evaluation: AdvBench harmful behaviours (520)"),
    "gsm8k": Source("openai/gsm8k", "test", {"prompt": "question", "response": "answer"}, config="main",
                    description="utility: GSM8K test"),
    "math": Source("qwedsacf/competition_math", "train", {"prompt": "problem", "response": "solution"},
                   shuffle_seed=42, description="activation overlap: MATH problems"),
    "toxigen": Source("toxigen/toxigen-data", "train", {"prompt": "text"}, config="annotated", shuffle_seed=42,
                      description="activation overlap: ToxiGen statements"),
    "xstest_safe": Source("walledai/XSTest", "test", {"prompt": "prompt", "type": "type"}, keep=_xstest_safe,
                          description="over-refusal: XSTest v2's 250 safe prompts (label safe)"),
    "xstest_unsafe": Source("walledai/XSTest", "test", {"prompt": "prompt", "type": "type"}, keep=_xstest_unsafe,
                            description="XSTest v2's 200 unsafe contrast prompts (label unsafe, type contrast_*)"),
    "or_bench_hard_1k": Source("bench-llm/or-bench", "train", {"prompt": "prompt", "category": "category"},
                               config="or-bench-hard-1k",
                               description="over-refusal: OR-Bench-Hard-1K, seemingly toxic but benign prompts"),
}
SOURCES["xstest"] = SOURCES["xstest_safe"]  # the name older configs use

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def parse_fields(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse a field mapping 'prompt=query,response=answer' (ours=theirs)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return dict(spec)
    mapping = {}
    for item in spec.split(","):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise UserError(f"field mapping {spec!r}: expected ours=theirs pairs such as prompt=query,response=answer")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def read_local_rows(path: Path) -> list[Record]:
    """Read every row of a local JSONL/JSON/CSV/Parquet/TXT file (TXT: one prompt a line)."""
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: could not read ({type(exc).__name__}: {str(exc)[:160]})") from None
    text = read_text(path)  # UTF-8 (a byte-order mark dropped); a bad byte is named by its line
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of objects")
        return data
    if suffix == ".csv":
        check_csv(text, path)
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [{"prompt": line} for line in text.splitlines() if line.strip()]


def looks_like_file(text: str) -> bool:
    """Whether a data source names a local file (a data-file suffix, or a path starting with . / ~)."""
    return Path(text).suffix.lower() in LOCAL_SUFFIXES or text.startswith((".", "/", "~"))


def map_fields(rows: Sequence[Mapping[str, Any]], fields: Mapping[str, str], *, origin: str, required: Sequence[str]) -> list[Record]:
    """Rename source columns to ours; fail naming the first missing field."""
    names = dict(fields)
    for key in required:
        names.setdefault(key, key)
    if rows and not all(isinstance(row, Mapping) for row in rows):
        raise UserError(f"{origin}: rows must be objects with named fields")
    out = []
    for number, row in enumerate(rows, 1):
        for ours in required:
            theirs = names[ours]
            if theirs not in row or row[theirs] is None:
                raise UserError(f"{origin}: row {number} has no field {theirs!r} (needed for {ours!r}); map it with a field mapping")
        record = {ours: row[theirs] for ours, theirs in names.items() if theirs in row}
        for key, value in row.items():
            if key not in names.values():
                record.setdefault(f"_{key}", value)
        out.append(record)
    return out


def _load_hub(source: Source, origin: str) -> list[Record]:
    """Load a named source's rows from the hub (needs network)."""
    try:
        import datasets

        dataset = datasets.load_dataset(source.hub_id, source.config, split=source.split)
    except Exception as exc:
        raise UserError(
            f"{origin}: could not load {source.hub_id} from the hub ({type(exc).__name__}); "
            "offline? pass a local file instead"
        ) from None
    return [dict(row) for row in dataset]


def in_zoo(source: str | Path, zoo: str | Path | None) -> str | Path:
    """'organism:NAME' as the data file of the given zoo; any other source (or no zoo) unchanged."""
    text = str(source)
    if zoo is None or not text.startswith("organism:"):
        return source
    return zoo_data_file(text.split(":", 1)[1], Path(zoo))


def _named_file(text: str) -> tuple[str, Path] | None:
    """(NAME, PATH) of 'NAME:PATH', a named source read from a local copy, else None; a missing file is a UserError."""
    name, sep, rest = text.partition(":")
    if not sep or name not in SOURCES or not rest:
        return None
    path = Path(rest).expanduser()
    if not path.is_file():
        raise UserError(f"{text}: no such file {rest!r} (NAME:PATH reads the {name} set from a local copy)")
    return name, path


def load_records(
    source: str | Path,
    *,
    fields: str | Mapping[str, str] | None = None,
    required: Sequence[str] = ("prompt",),
    limit: int | None = None,
    seed: int | None = None,
) -> list[Record]:
    """Rows with our field names from a registry name, 'organism:NAME', a local file, or a hub dataset id."""
    text = str(source)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    mapping = parse_fields(fields)
    if text.startswith("organism:"):
        path: Path | None = zoo_data_file(text.split(":", 1)[1])
    else:
        path = Path(text).expanduser()
    named_file = _named_file(text)
    if text in SOURCES or named_file is not None:
        named = SOURCES[text] if named_file is None else SOURCES[named_file[0]]
        rows = _load_hub(named, text) if named_file is None else read_local_rows(named_file[1])
        if named.keep:
            rows = [row for row in rows if named.keep(row)]
        if named.shuffle_seed is not None:
            random.Random(named.shuffle_seed).shuffle(rows)
        if named.limit is not None:
            rows = rows[: named.limit]
        records = map_fields(rows, {**named.fields, **mapping}, origin=text, required=required)
    elif path is not None and path.exists():
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give a data file ({', '.join(LOCAL_SUFFIXES)})")
        records = map_fields(read_local_rows(path), mapping, origin=str(path), required=required)
    elif looks_like_file(text):
        raise UserError(f"data file {text}: no such file")
    elif text.count("/") == 1:
        records = map_fields(_load_hub(Source(text, "train", {}), text), mapping, origin=text, required=required)
    else:
        raise UserError(f"data source {text!r}: no such file and not a known dataset ({', '.join(sorted(SOURCES))})")
    if seed is not None:
        random.Random(seed).shuffle(records)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise UserError(f"data source {text!r} is empty")
    return records


def load_prompts(source: str | Path, *, fields: str | Mapping[str, str] | None = None, limit: int | None = None,
                 seed: int | None = None) -> list[str]:
    """Just the prompt strings of a source (AdvBench CSVs recognised by their goal column)."""
    text = str(source)
    local = Path(text).expanduser()
    if fields is None and local.suffix.lower() == ".csv" and local.is_file():
        header = next(csv.reader(io.StringIO(read_text(local), newline="")), [])
        if "goal" in header and "prompt" not in header:
            fields = {"prompt": "goal"}
    records = load_records(source, fields=fields, required=("prompt",), limit=limit, seed=seed)
    prompts = [str(record["prompt"]).strip() for record in records]
    if not any(prompts):
        raise UserError(f"data source {text!r} has only empty prompts")
    return prompts


def mix(useful: Sequence[Record], harmful: Sequence[Record], percent: float, *, seed: int = 42) -> tuple[list[Record], float]:
    """Contaminated data: all useful rows plus percent% of that count of harmful rows, shuffled; returns (rows, harmful share)."""
    if not 0 <= percent <= 100:
        raise UserError(f"contamination percent must be in [0, 100], got {percent}")
    count = round(len(useful) * percent / 100)
    if count > len(harmful):
        raise UserError(f"contamination needs {count} harmful rows but only {len(harmful)} are available")
    rows = [*useful, *harmful[:count]]
    random.Random(seed).shuffle(rows)
    share = count / len(rows) if rows else 0.0
    return rows, share


def fingerprint(records: Sequence[Mapping[str, Any]]) -> str:
    """A content hash of records (order-sensitive)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- fine-tuning data sets ------------------------------------------------------------------------------------------

# Named fine-tuning data sets (the paper's): name -> (default source, fields each record needs).
TRAINING_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "useful": ("metamathqa", ("prompt", "response")),
    "harmful": ("beavertails_unsafe", ("prompt", "response")),
    "safety": ("beavertails_safe", ("prompt", "response")),
    "preference": ("pku_saferlhf", ("prompt", "chosen", "rejected")),
}
CONTAMINATED = "contaminated"


def preference_pairs(records: Sequence[Mapping[str, Any]], *, origin: str) -> list[Record]:
    """prompt/chosen/rejected records; PKU-SafeRLHF rows (response_0/1 + safer_response_id) are converted."""
    out = []
    for number, record in enumerate(records, 1):
        if "chosen" in record and "rejected" in record:
            out.append(dict(record))
            continue
        try:
            safer = int(record["safer_response_id"])
            responses = (record["response_0"], record["response_1"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{origin}: row {number} has neither chosen/rejected nor response_0/response_1/safer_response_id; "
                "map them with a field mapping"
            ) from None
        if safer not in (0, 1):
            raise UserError(f"{origin}: row {number} has safer_response_id {safer!r}; expected 0 or 1")
        out.append({"prompt": record["prompt"], "chosen": responses[safer], "rejected": responses[1 - safer]})
    return out


def _passthrough(record: Mapping[str, Any]) -> Record:
    """A record with map_fields' passed-through columns (_name) under their own names again."""
    out = dict(record)
    for key, value in record.items():
        if key.startswith("_") and key[1:] not in out:
            out[key[1:]] = value
    return out


def _load_set(source: str | Path, required: Sequence[str], *, fields, limit: int | None, origin: str) -> list[Record]:
    """Records of one source with the required fields (preference sources converted to chosen/rejected)."""
    if "chosen" in required:
        rows = load_records(source, fields=fields, required=("prompt",), limit=limit)
        return preference_pairs([_passthrough(row) for row in rows], origin=origin)
    return load_records(source, fields=fields, required=required, limit=limit)


def load_training_data(
    name: str,
    *,
    source: str | Path | None = None,
    useful_source: str | Path | None = None,
    harmful_source: str | Path | None = None,
    fields: str | Mapping[str, str] | None = None,
    useful_fields: str | Mapping[str, str] | None = None,
    harmful_fields: str | Mapping[str, str] | None = None,
    percent: float = 20.0,
    limit: int | None = None,
    seed: int = 42,
    method: str = "sft",
) -> tuple[list[Record], dict[str, Any]]:
    """Records and a description of a fine-tuning data set: a TRAINING_SETS name, 'contaminated', or a data file/hub id.

    contaminated = all useful rows plus `percent`% of that count of harmful rows (the reference code's mix); the description
    records the resulting harmful share. `fields` maps every source; useful_fields / harmful_fields override it for
    the two parts of contaminated.
    """
    if name == CONTAMINATED:
        if not 0 <= percent <= 100:
            raise UserError(f"contamination percent must be in [0, 100], got {percent}")
        useful_from = useful_source or source or TRAINING_SETS["useful"][0]
        harmful_from = harmful_source or TRAINING_SETS["harmful"][0]
        useful = _load_set(useful_from, ("prompt", "response"), fields=useful_fields or fields, limit=limit,
                           origin=str(useful_from))
        harmful = _load_set(harmful_from, ("prompt", "response"), fields=harmful_fields or fields, limit=None,
                            origin=str(harmful_from))
        records, share = mix(useful, harmful, percent, seed=seed)
        info = {"name": name, "useful_source": str(useful_from), "harmful_source": str(harmful_from),
                "percent": percent, "n_useful": len(useful), "n_harmful": len(records) - len(useful),
                "harmful_share": round(share, 6)}
        return records, info
    if name in TRAINING_SETS:
        default, required = TRAINING_SETS[name]
        chosen = source or (useful_source if name == "useful" else harmful_source if name == "harmful" else None) or default
        records = _load_set(chosen, required, fields=fields, limit=limit, origin=str(chosen))
        return records, {"name": name, "source": str(chosen), "n": len(records)}
    text = str(name)
    is_file = Path(text).expanduser().exists() or text.startswith("organism:")
    if not is_file and looks_like_file(text):
        raise UserError(f"data file {text}: no such file")
    hub_id = text.count("/") == 1
    if not (is_file or hub_id or text in SOURCES):
        known = ", ".join([*TRAINING_SETS, CONTAMINATED])
        raise UserError(f"unknown dataset {text!r}; use one of {known}, a data file, or organism:NAME")
    required = TRAINING_SETS["preference" if method == "dpo" else "useful"][1]
    records = _load_set(text, required, fields=fields, limit=limit, origin=text)
    return records, {"name": Path(text).stem if is_file and not text.startswith("organism:") else text,
                     "source": text, "n": len(records)}
