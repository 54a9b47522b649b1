"""Readers for MovieLens layouts and for a generic ratings table.

Every reader turns raw files into *parsed tables*: string columns with fixed
logical names, plus provenance (``source_file``, ``line_no``, ``raw``) and a
``reason`` column that is non-null when the line could not be split into the
expected fields.  Typing, range checks, references and deduplication happen
in :mod:`recsys_spark.ingest`, the same way for every dataset.

Logical columns per table:

=========  ==========================================
ratings    user, item, rating, timestamp
items      item, title, genres ('|'-separated), year
users      user, gender, age, occupation, zip
tags       user, item, tag, timestamp
=========  ==========================================

File-level problems (missing file, empty file, header only, a header that does
not match, a first data line with the wrong number of fields -- usually a wrong
delimiter) raise :class:`DataFormatError` naming the file, line and reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.config import Config
from recsys_spark.io.lines import read_lines
from recsys_spark.schemas import COL_LINE_NO, COL_RAW, COL_REASON, COL_SOURCE_FILE

log = logging.getLogger(__name__)

TABLE_FIELDS = {
    "ratings": ["user", "item", "rating", "timestamp"],
    "items": ["item", "title", "genres", "year"],
    "users": ["user", "gender", "age", "occupation", "zip"],
    "tags": ["user", "item", "tag", "timestamp"],
}

# ml-100k u.genre, in flag order
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

NO_GENRES = "(no genres listed)"

# a comma outside double quotes (RFC 4180 without embedded newlines)
CSV_SEP = ',(?=(?:[^"]*"[^"]*")*[^"]*$)'


class DataFormatError(ValueError):
    """A file that cannot be read as the declared format; the message names file, line, reason."""


@dataclass(frozen=True)
class FileSpec:
    """How one file (or directory of part files) is laid out."""

    path: str
    sep: str  # Java regex that separates fields
    sep_name: str  # the delimiter as a person would name it, for messages
    columns: list[str]  # names of the fields in file order ('' for ignored)
    header: list[str] | None = None  # expected header (the file's first line), if any
    quoted: bool = False  # fields may be "double quoted"
    encoding: str = "UTF-8"
    fmt: str = "text"  # 'text' or 'parquet'


@dataclass
class DatasetSpec:
    name: str
    kind: str
    rating_min: float
    rating_max: float
    numeric_ids: bool | dict[str, bool]  # MovieLens ids are integers; generic: per id column (dataset.generic.id_types)
    files: dict[str, FileSpec]  # table -> file; ratings is required
    folds: dict[int, tuple[FileSpec, FileSpec]] = field(default_factory=dict)  # ml-100k u1..u5
    decimal: str = "."  # the ratings' decimal separator
    hints: dict[str, str] = field(default_factory=dict)  # quarantine reason category -> the setting that may fix it


# -- dataset layouts --------------------------------------------------------
def dataset_spec(cfg: Config) -> DatasetSpec:
    """The files and format of the configured dataset."""
    d = cfg.dataset
    root = cfg.dataset_path.rstrip("/")
    kind = d.kind
    if kind == "ml-100k":
        tab = dict(sep="\t", sep_name="tab")
        rcols = ["user", "item", "rating", "timestamp"]
        spec = DatasetSpec(
            cfg.dataset_name, kind, 1.0, 5.0, True,
            {
                "ratings": FileSpec(f"{root}/u.data", columns=rcols, **tab),
                "items": FileSpec(
                    f"{root}/u.item", sep=r"\|", sep_name="'|'",
                    columns=["item", "title", "release_date", "", ""] + [f"g{i}" for i in range(19)],
                    encoding=d.encoding,
                ),
                "users": FileSpec(
                    f"{root}/u.user", sep=r"\|", sep_name="'|'",
                    columns=["user", "age", "gender", "occupation", "zip"], encoding=d.encoding,
                ),
            },
            folds={
                k: (FileSpec(f"{root}/u{k}.base", columns=rcols, **tab), FileSpec(f"{root}/u{k}.test", columns=rcols, **tab))
                for k in range(1, 6)
            },
        )  # fmt: skip
    elif kind == "ml-1m":
        dc = dict(sep="::", sep_name="'::'", encoding="ISO-8859-1")
        spec = DatasetSpec(
            cfg.dataset_name, kind, 1.0, 5.0, True,
            {
                "ratings": FileSpec(f"{root}/ratings.dat", columns=["user", "item", "rating", "timestamp"], **dc),
                "items": FileSpec(f"{root}/movies.dat", columns=["item", "title", "genres"], **dc),
                "users": FileSpec(f"{root}/users.dat", columns=["user", "gender", "age", "occupation", "zip"], **dc),
            },
        )  # fmt: skip
    elif kind in ("ml-latest", "generated"):
        csv = dict(sep=CSV_SEP, sep_name="','", quoted=True)
        files = {
            "ratings": FileSpec(
                f"{root}/ratings.csv", sep=",", sep_name="','", columns=["user", "item", "rating", "timestamp"],
                header=["userId", "movieId", "rating", "timestamp"],
            ),
            "items": FileSpec(f"{root}/movies.csv", columns=["item", "title", "genres"], header=["movieId", "title", "genres"], **csv),
            "tags": FileSpec(
                f"{root}/tags.csv", columns=["user", "item", "tag", "timestamp"], header=["userId", "movieId", "tag", "timestamp"], **csv
            ),
        }  # fmt: skip
        # the generated data also carries demographics (MovieLens latest has none)
        users = FileSpec(
            f"{root}/users.csv", columns=["user", "gender", "age", "occupation", "zip"],
            header=["userId", "gender", "age", "occupation", "zip"], **csv,
        )  # fmt: skip
        if kind == "generated":
            files["users"] = users
        scale = (0.5, 5.0)
        spec = DatasetSpec(cfg.dataset_name, kind, *scale, True, files)
    elif kind == "generic":
        spec = _generic_spec(cfg)
    else:  # guarded by the config's Literal
        raise ValueError(f"unknown dataset kind {kind!r}")
    if d.rating_min or d.rating_max:
        spec.rating_min, spec.rating_max = d.rating_min, d.rating_max
    return spec


REQUIRED_COLUMNS = {"ratings": ("user", "item", "rating"), "items": ("item",), "users": ("user",)}


def is_local(path: str) -> bool:
    """A path on this machine's file system (no scheme, or ``file:``)."""
    return "://" not in path and not re.match(r"^[A-Za-z][\w+.-]*:/", path) or path.startswith("file:")


def resolve_under(path: str, root: str) -> str:
    """``path`` itself when absolute or with a scheme, else ``root/path`` (``root`` = dataset.path)."""
    if not root or not path or path.startswith("/") or not is_local(path) or path.startswith("file:"):
        return path
    return f"{root.rstrip('/')}/{path}"


def _generic_spec(cfg: Config) -> DatasetSpec:
    g = cfg.dataset.generic
    if not g.ratings:
        raise ValueError("dataset.kind = 'generic' needs dataset.generic.ratings (a path)")
    if not (cfg.dataset.rating_min or cfg.dataset.rating_max):
        raise ValueError("dataset.kind = 'generic' needs the rating scale: set dataset.rating_min and dataset.rating_max")
    quoted_sep = lambda ch: (f'{re.escape(ch)}(?=(?:[^"]*"[^"]*")*[^"]*$)', repr(ch), True)  # noqa: E731
    seps = {"csv": quoted_sep(g.delimiter or ","), "tsv": ("\t", "tab", False), "whitespace": (r"\s+", "whitespace", False)}
    root = cfg.dataset.path

    def one(path: str, mapping: dict, table: str, key: str) -> FileSpec:
        for col in mapping:
            if col not in TABLE_FIELDS[table]:
                raise ValueError(f"dataset.generic.{key}: unknown column '{col}' for {table} (known: {TABLE_FIELDS[table]})")
        missing = [c for c in REQUIRED_COLUMNS[table] if c not in mapping]
        if missing:
            raise ValueError(f"dataset.generic.{key} must map {missing} (it maps {sorted(mapping)})")
        path = resolve_under(path, root)
        cols = [f"{k}={v}" for k, v in mapping.items()]
        if g.format == "parquet":
            return FileSpec(path, sep="", sep_name="", columns=cols, fmt="parquet")
        sep, sep_name, quoted = seps[g.format]
        # columns resolved against the header at read time (names) or by position (ints)
        return FileSpec(
            path, sep=sep, sep_name=sep_name, columns=cols, header=[] if g.header else None, quoted=quoted, encoding=cfg.dataset.encoding
        )

    files = {"ratings": one(g.ratings, g.columns, "ratings", "columns")}
    if g.items:
        files["items"] = one(g.items, g.items_columns, "items", "items_columns")
    if g.users:
        files["users"] = one(g.users, g.users_columns, "users", "users_columns")
    integer = {c: g.id_types.get(c, "integer") == "integer" for c in ("user", "item")}
    hints = {
        f"non-numeric {c} id": f'if the {c} ids are text, declare dataset.generic.id_types = {{{c} = "string"}}'
        for c, is_int in integer.items() if is_int
    }  # fmt: skip
    if g.decimal == ".":
        hints["unparsable rating"] = 'ratings such as "4,5" need dataset.generic.decimal = ","'
    return DatasetSpec(
        cfg.dataset_name, "generic", cfg.dataset.rating_min, cfg.dataset.rating_max, integer, files, decimal=g.decimal, hints=hints
    )


# -- parsing ----------------------------------------------------------------
def _unquote(c: Column) -> Column:
    stripped = F.regexp_replace(F.trim(c), r'^"(.*)"$', "$1")
    return F.when(F.trim(c).startswith('"'), F.regexp_replace(stripped, '""', '"')).otherwise(c)


def _split_header(line: str, spec: FileSpec) -> list[str]:
    return [p.strip().strip('"') for p in _split_first(line, spec)]


def parse_file(spark: SparkSession, spec: FileSpec, table: str) -> tuple[DataFrame, int]:
    """Parsed rows of one file spec (logical string columns, provenance, ``reason``)
    and the number of data rows read (counted from the line scan, headers excluded)."""
    if spec.fmt == "parquet":
        df = _parse_parquet(spark, spec, table)
        return df, df.count()
    lines = read_lines(spark, spec.path, spec.encoding)
    stats = _file_stats(lines, has_header=spec.header is not None)
    n_read = sum(st["n"] - (1 if spec.header is not None else 0) for st in stats)
    columns = resolve_columns(spec, stats, table)
    n_fields = len(columns)

    data = lines.filter(F.col(COL_LINE_NO) > 1) if spec.header is not None else lines
    # whitespace-separated files ignore leading/trailing blanks; tab-separated
    # files tolerate trailing blanks (a stray trailing tab is not a field)
    raw = F.col(COL_RAW)
    if spec.sep == r"\s+":
        raw = F.trim(raw)
    elif spec.sep == "\t":
        raw = F.regexp_replace(raw, r"\s+$", "")
    parts = F.split(raw, spec.sep, -1)
    out = data.select(COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, parts.alias("_f"))
    reason = F.when(F.trim(F.col(COL_RAW)) == "", F.lit("empty line")).when(
        F.size("_f") != n_fields,
        F.format_string(f"expected {n_fields} fields separated by {spec.sep_name}, found %d", F.size("_f")),
    )
    selected = [COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, reason.alias(COL_REASON)]
    for i, name in enumerate(columns):
        if not name:
            continue
        value = F.col("_f").getItem(i)
        if spec.quoted:
            value = _unquote(value)
        selected.append(F.when(F.size("_f") == n_fields, value).alias(name))
    return out.select(*selected), n_read


def _file_stats(lines: DataFrame, has_header: bool) -> list[dict]:
    """Per file: number of lines, first line, first data line (one small aggregate)."""
    first_data = 2 if has_header else 1
    rows = (
        lines.groupBy(COL_SOURCE_FILE)
        .agg(
            F.count("*").alias("n"),
            F.min_by(COL_RAW, COL_LINE_NO).alias("first"),
            F.min_by(
                F.when(F.col(COL_LINE_NO) >= first_data, F.col(COL_RAW)), F.when(F.col(COL_LINE_NO) >= first_data, F.col(COL_LINE_NO))
            ).alias("first_data"),
        )
        .collect()
    )  # one row per file
    return [r.asDict() for r in rows]


NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
MISSING_TOKENS = ("", "nan", "na", "n/a", "null", "none", "inf", "-inf", "infinity")


def _check_first_line(spec: FileSpec, src: str, first: str | None, columns: list[str] | None = None, generic: bool = False) -> None:
    """A binary file, or a header in a file read without one (``columns``: its fields by position), stop with a message."""
    if first is None:
        return
    if "\x00" in first:
        raise DataFormatError(
            f"{src} line 1: NUL bytes -- a binary file (Parquet, Excel, or compressed with a codec Hadoop does not know)"
            " read as text; is the format right?"
        )
    if spec.header is not None or not columns or "rating" not in columns:
        return
    fields = _split_first(first, spec)
    if len(fields) != len(columns):
        return
    value = fields[columns.index("rating")].strip().strip('"')
    if re.search("[A-Za-z]", value) and value.lower() not in MISSING_TOKENS and not NUMBER.match(value):
        fix = "set dataset.generic.header = true and map columns by name" if generic else "is it the right file?"
        raise DataFormatError(
            f"{src} line 1: {first[:80]!r} looks like a header (rating {value!r}), but the file is read without one; {fix}"
        )


def resolve_columns(spec: FileSpec, stats: list[dict], table: str) -> list[str]:
    """Check headers and the first data line of each file; return field names in file order."""
    if not stats:
        raise DataFormatError(
            f"{spec.path}: is empty (no lines; in a folder, files whose names start with '_' or '.' are skipped)"
        )
    columns = list(spec.columns)
    generic = any("=" in c for c in columns)
    for st in stats:
        src = st[COL_SOURCE_FILE]
        n_data = st["n"] - (1 if spec.header is not None else 0)
        _check_first_line(spec, src, st["first"])  # binary content
        if spec.header is not None:
            found = _split_header(st["first"], spec)
            if generic:
                columns = _generic_columns(spec, found, src)
            elif found != spec.header:
                raise DataFormatError(
                    f"{src} line 1: header {found} does not match the expected {spec.header}"
                    + (" -- is the delimiter right?" if len(found) == 1 else "")
                )
        if n_data <= 0:
            raise DataFormatError(f"{src}: has a header but no data rows" if spec.header is not None else f"{src}: file is empty")
    if generic and spec.header is None:
        columns = _generic_columns(spec, None, spec.path)
    if spec.header is None:
        for st in stats:
            _check_first_line(spec, st[COL_SOURCE_FILE], st["first"], columns, generic)
    for st in stats:
        src, first = st[COL_SOURCE_FILE], st["first_data"]
        line = 2 if spec.header is not None else 1
        n = len(_split_first(first, spec))
        if first is not None and first.strip() and n != len(columns):
            raise DataFormatError(
                f"{src} line {line}: expected {len(columns)} fields separated by {spec.sep_name}, "
                f"found {n} in {first[:80]!r} -- is the delimiter right?"
            )
    return columns


def _split_first(line: str | None, spec: FileSpec) -> list[str]:
    if line is None:
        return []
    text = line.strip() if spec.sep == r"\s+" else line.rstrip() if spec.sep == "\t" else line
    return re.split(spec.sep, text)


def _generic_columns(spec: FileSpec, header: list[str] | None, src: str) -> list[str]:
    """Field names in file order for a generic table from its column mapping."""
    mapping = dict(c.split("=", 1) for c in spec.columns)
    if header is None:
        width = 0
        positions = {}
        for logical, where in mapping.items():
            if not where.lstrip("-").isdigit():
                raise DataFormatError(
                    f"{src}: column '{logical}' is mapped to {where!r}, but the file has no header; map it to a 0-based position instead"
                )
            positions[int(where)] = logical
            width = max(width, int(where) + 1)
        return [positions.get(i, "") for i in range(width)]
    names = []
    index = {name: i for i, name in enumerate(header)}
    for logical, where in mapping.items():
        if where.isdigit():
            continue
        if where not in index:
            data_like = any(NUMBER.match(h) for h in header)
            raise DataFormatError(
                f"{src} line 1: column {where!r} (for '{logical}') is not in the header {header}"
                + (" -- is the delimiter right?" if len(header) == 1 else "")
                + (
                    "; line 1 looks like data: if the file has no header, set dataset.generic.header = false"
                    " and map columns to 0-based positions"
                    if data_like and len(header) > 1 else ""
                )
            )  # fmt: skip
    for i, name in enumerate(header):
        logical = next((k for k, v in mapping.items() if v == name or v == str(i)), "")
        names.append(logical)
    return names


def _parse_parquet(spark: SparkSession, spec: FileSpec, table: str) -> DataFrame:
    from pyspark.errors import AnalysisException

    try:
        df = spark.read.parquet(spec.path)
        df.schema  # noqa: B018 -- footer errors surface here
    except AnalysisException as exc:
        first = str(exc).splitlines()[0][:200]
        raise DataFormatError(f"{spec.path}: cannot be read as Parquet ({first}); is it a 0-byte or truncated file?") from exc
    mapping = dict(c.split("=", 1) for c in spec.columns)
    missing = [v for v in mapping.values() if v not in df.columns]
    if missing:
        raise DataFormatError(f"{spec.path}: column(s) {missing} not found; it has {df.columns}")
    cols = [F.col(v).cast("string").alias(k) for k, v in mapping.items()]
    return df.select(
        F.input_file_name().alias(COL_SOURCE_FILE),
        F.lit(None).cast("long").alias(COL_LINE_NO),
        F.to_json(F.struct(*df.columns)).alias(COL_RAW),
        F.lit(None).cast("string").alias(COL_REASON),
        *cols,
    )


def normalise(df: DataFrame, table: str, kind: str) -> DataFrame:
    """Bring a parsed table to its logical columns (derive genres/year per layout)."""
    base = [COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, COL_REASON]
    if table == "items":
        if kind == "ml-100k":
            flags = [F.col(f"g{i}") for i in range(19)]
            bad_flag = F.exists(F.array(*flags), lambda f: ~f.isin("0", "1"))
            genres = F.concat_ws(
                "|",
                F.filter(
                    F.array(*[F.when(f == "1", F.lit(g)) for f, g in zip(flags, ML100K_GENRES, strict=True)]), lambda x: x.isNotNull()
                ),
            )
            year = F.regexp_extract(F.col("release_date"), r"(\d{4})\s*$", 1)
            reason = F.coalesce(F.col(COL_REASON), F.when(bad_flag, F.lit("genre flag not 0/1")))
            df = df.withColumn(COL_REASON, reason).withColumn("genres", genres).withColumn("year", year)
        else:
            if "year" not in df.columns:
                df = df.withColumn("year", F.regexp_extract(F.col("title"), r"\((\d{4})\)\s*$", 1))
            if "genres" not in df.columns:
                df = df.withColumn("genres", F.lit(""))
            if "title" not in df.columns:
                df = df.withColumn("title", F.lit(None).cast("string"))
    for name in TABLE_FIELDS[table]:
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast("string"))
    return df.select(*base, *TABLE_FIELDS[table])


def read_dataset(spark: SparkSession, spec: DatasetSpec) -> dict[str, tuple[DataFrame, int]]:
    """Parsed and normalised tables of a dataset with rows read per table.

    The DataFrames are lazy; the file-level checks run eagerly (small aggregates).
    """
    from recsys_spark.io.fs import exists as path_exists

    missing = [f.path for f in spec.files.values() if not path_exists(spark, f.path)]
    if missing:
        raise FileNotFoundError(f"dataset {spec.name!r} ({spec.kind}): input file(s) not found: {', '.join(missing)}")
    tables = {}
    for table, fspec in spec.files.items():
        log.info("reading %s from %s", table, fspec.path)
        df, n_read = parse_file(spark, fspec, table)
        tables[table] = (normalise(df, table, spec.kind), n_read)
    return tables
