"""Stage runners: the one layer that knows output paths.

Each ``run_<stage>(spark, cfg)`` reads its inputs, calls the library's pure
DataFrame functions and writes its outputs atomically with a manifest
(``_manifest.json``) that records the config hash of the sections it depends
on, fingerprints of its inputs, row accounting and timings.  A stage whose
manifest matches the current config and inputs is skipped; ``force=True``
reruns it.  Jobs in ``jobs/`` and the pipeline call these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import __version__, registry, tracking
from recsys_spark import evaluate as ev
from recsys_spark import generate as gen
from recsys_spark import ingest as ing
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.content import SideData
from recsys_spark.io import fs
from recsys_spark.io.datasets import DataFormatError, dataset_spec, parse_file, read_dataset
from recsys_spark.recommender import Scale
from recsys_spark.schemas import (
    COL_ITEM,
    COL_ITEM_ID,
    COL_MODEL,
    COL_TIMESTAMP,
    COL_USER,
    COL_USER_ID,
    ITEM_MAP,
    NEGATIVES,
    QUARANTINE,
    RATINGS,
    USER_MAP,
)

log = logging.getLogger(__name__)


# -- fingerprints and manifests ----------------------------------------------
def fingerprint(spark: SparkSession, path: str) -> str:
    """Hash of an input: its manifest's id for a stage output, else file names, sizes and mtimes."""
    manifest = fs.read_manifest(spark, path)
    if manifest is not None and "output_id" in manifest:
        return manifest["output_id"]
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    hfs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not hfs.exists(hpath):
        return "missing"
    it = hfs.listFiles(hpath, True)
    entries = []
    while it.hasNext():
        st = it.next()
        entries.append(f"{st.getPath().getName()}:{st.getLen()}:{st.getModificationTime()}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]


def _up_to_date(spark: SparkSession, output: str, config_hash: str, inputs: dict[str, str]) -> dict | None:
    manifest = fs.read_manifest(spark, output)
    if manifest is None:
        return None
    if manifest.get("config_hash") != config_hash or manifest.get("inputs") != inputs:
        return None
    return manifest


def run_stage(
    spark: SparkSession,
    cfg: Config,
    stage: str,
    output: str,
    sections: tuple[str, ...],
    input_paths: list[str],
    body: Callable[[str], dict[str, Any]],
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``body(tmp_dir)`` unless ``output`` is up to date; write its manifest atomically.

    ``body`` writes its tables under ``tmp_dir`` and returns the manifest's
    ``counts``.  The returned manifest has ``skipped`` set when nothing ran.
    """
    config_hash = cfg.section_hash(*sections, extra=extra)
    inputs = {p: fingerprint(spark, p) for p in input_paths}
    if not force:
        manifest = _up_to_date(spark, output, config_hash, inputs)
        if manifest is not None:
            log.info("%s: up to date at %s (config %s), skipped", stage, output, config_hash)
            return {**manifest, "skipped": True}
    log.info("%s: running -> %s", stage, output)
    start = time.perf_counter()
    with fs.atomic_output(spark, output) as tmp:
        counts = body(tmp)
        wall = round(time.perf_counter() - start, 3)
        manifest = {
            "stage": stage,
            "version": __version__,
            "config_hash": config_hash,
            "config": {**{s: cfg.to_dict()[s] for s in sections}, **({"extra": extra} if extra else {})},
            "inputs": inputs,
            "counts": counts,
            "wall_s": wall,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        manifest["output_id"] = hashlib.sha256(
            f"{config_hash}|{sorted(inputs.items())}|{manifest['created']}".encode()
        ).hexdigest()[:16]
        fs.write_json(spark, f"{tmp}/{fs.MANIFEST}", manifest)
    log.info("%s: done in %.1fs", stage, wall)
    return {**manifest, "skipped": False}


def _write(df: DataFrame, path: str, partitions: int | None = None) -> None:
    if partitions:
        df = df.coalesce(partitions)
    df.write.mode("error").parquet(path)


# -- generate ------------------------------------------------------------------
def run_generate(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the synthetic dataset as raw CSV files (ml-latest layout + users.csv)."""
    output = cfg.dataset_path

    def body(tmp: str) -> dict[str, Any]:
        tables = gen.generate(spark, cfg.generate)
        counts = {}
        for name, df in tables.items():
            df = df.persist(StorageLevel.MEMORY_AND_DISK)
            n_files = max(1, cfg.generate.n_ratings // 2_000_000) if name == "ratings" else 1
            # RFC 4180 quoting (a quote inside a field is doubled), as the ml-latest reader expects
            df.coalesce(n_files).write.option("header", True).option("quote", '"').option("escape", '"').csv(
                f"{tmp}/{name}.csv"
            )
            counts[name] = df.count()
            df.unpersist()
        log.info("generated %s", counts)
        return counts

    return run_stage(spark, cfg, "generate", output, ("generate",), [], body, force)


# -- ingest --------------------------------------------------------------------
def run_ingest(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Raw files -> validated Parquet tables, id maps, quarantine and row accounting."""
    spec = dataset_spec(cfg)
    output = cfg.stage_path("ingest")
    input_paths = [f.path for f in spec.files.values()]

    def body(tmp: str) -> dict[str, Any]:
        parsed = read_dataset(spark, spec)
        result = ing.ingest_tables(parsed, (spec.rating_min, spec.rating_max), spec.numeric_ids)
        rejected = f"{output}.rejected/{QUARANTINE}"
        try:
            ing.check_accounting(result.counts, cfg.ingest.max_quarantine_fraction, rejected)
        except ing.IngestError:
            fs.delete(spark, rejected)
            _write(result.quarantine, rejected, 1)
            raise
        for name, df in result.tables.items():
            _write(df, f"{tmp}/{name}")
        _write(result.quarantine, f"{tmp}/{QUARANTINE}", 1)
        return {
            "tables": result.counts,
            "users": spark.read.parquet(f"{tmp}/{USER_MAP}").count(),
            "items": spark.read.parquet(f"{tmp}/{ITEM_MAP}").count(),
            "ratings": result.counts["ratings"][ing.KEPT],
            "rating_scale": [spec.rating_min, spec.rating_max],
        }

    return run_stage(spark, cfg, "ingest", output, ("dataset", "ingest"), input_paths, body, force)


def read_ingested(spark: SparkSession, cfg: Config, table: str = RATINGS) -> DataFrame:
    path = cfg.stage_path("ingest", table)
    if not fs.exists(spark, path):
        raise FileNotFoundError(f"{path} not found: run the ingest stage first (recsys-spark ingest)")
    return spark.read.parquet(path)


def side_data(spark: SparkSession, cfg: Config) -> SideData:
    """The side tables content models read: ``items`` and, where the dataset has them, ``tags`` and ``users``."""
    tags_path, users_path = cfg.stage_path("ingest", "tags"), cfg.stage_path("ingest", "users")
    return SideData(
        read_ingested(spark, cfg, "items"),
        spark.read.parquet(tags_path) if fs.exists(spark, tags_path) else None,
        spark.read.parquet(users_path) if fs.exists(spark, users_path) else None,
    )


# -- split -----------------------------------------------------------------------
def split_name(cfg: Config) -> str:
    """Folder of a split: the protocol plus a hash of its parameters, so that
    splits with different ratios/seeds (the pipeline's, the benchmark's) coexist."""
    if cfg.split.protocol == "ml100k_folds":
        return "ml100k_folds"
    return f"{cfg.split.protocol}-{cfg.section_hash('split')[:8]}"


def run_split(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Persist train/valid/test (and sampled negatives) for the configured protocol."""
    output = cfg.stage_path("splits", split_name(cfg))
    ingest_out = cfg.stage_path("ingest")
    s = cfg.split
    extra_inputs = []
    if s.protocol == "ml100k_folds":
        spec = dataset_spec(cfg)
        if not spec.folds:
            raise ValueError(f"split.protocol = 'ml100k_folds' needs dataset.kind = 'ml-100k', not {cfg.dataset.kind!r}")
        extra_inputs = [f.path for k in s.folds for f in spec.folds[k]]

    def body(tmp: str) -> dict[str, Any]:
        ratings = spark.read.parquet(f"{ingest_out}/{RATINGS}")
        if s.protocol == "ml100k_folds":
            return _write_folds(spark, cfg, ratings, tmp)
        assigned = spl.split_ratings(ratings, s.protocol, s.ratio, s.seed, s.valid_ratio)
        assigned = assigned.persist(StorageLevel.MEMORY_AND_DISK)
        counts = _write_parts(assigned, tmp)
        counts["input"] = ratings.count()
        _check_split_counts(counts)
        if s.n_negatives:
            n_items = spark.read.parquet(f"{ingest_out}/{ITEM_MAP}").count()
            test = spark.read.parquet(f"{tmp}/{spl.TEST}")
            neg, short = spl.sample_negatives(test, ratings, n_items, s.n_negatives, s.seed)
            _write(neg, f"{tmp}/{NEGATIVES}")
            counts["negatives"] = spark.read.parquet(f"{tmp}/{NEGATIVES}").count()
            counts["negatives_short_rows"] = short
        assigned.unpersist()
        return counts

    return run_stage(spark, cfg, "split", output, ("split",), [ingest_out, *extra_inputs], body, force)


def _write_parts(assigned: DataFrame, tmp: str, prefix: str = "") -> dict[str, int]:
    counts = {
        r[spl.COL_PART]: r["count"] for r in assigned.groupBy(spl.COL_PART).count().collect()
    }  # at most three rows
    for name, df in spl.parts(assigned).items():
        _write(df, f"{tmp}/{prefix}{name}")
    return {p: counts.get(p, 0) for p in (spl.TRAIN, spl.VALID, spl.TEST)}


def _check_split_counts(counts: dict[str, int]) -> None:
    total = counts[spl.TRAIN] + counts[spl.VALID] + counts[spl.TEST]
    if total != counts["input"]:
        raise RuntimeError(f"split accounting broken: {counts['input']} rows in, {total} rows out ({counts})")


def _write_folds(spark: SparkSession, cfg: Config, ratings: DataFrame, tmp: str) -> dict[str, Any]:
    """The canonical ML-100K folds, mapped to the ingested indices.

    A fold row that fails validation or whose user or item ingest quarantined
    (absent from the side tables) is left out *and counted* per fold
    (``<part>_dropped``); the manifest keeps ``read = kept + dropped``.
    """
    spec = dataset_spec(cfg)
    umap = spark.read.parquet(cfg.stage_path("ingest", USER_MAP))
    imap = spark.read.parquet(cfg.stage_path("ingest", ITEM_MAP))
    counts: dict[str, Any] = {}
    for k in cfg.split.folds:
        fold_counts = {}
        for part, fspec in zip((spl.TRAIN, spl.TEST), spec.folds[k], strict=True):
            parsed, n_read = parse_file(spark, fspec, "ratings")
            events = ing.validate_events(parsed, True, (spec.rating_min, spec.rating_max))
            mapped = (
                events.where(F.col("reason").isNull())
                .join(umap, COL_USER_ID, "left")
                .join(imap, COL_ITEM_ID, "left")
            )
            ok = mapped.where(F.col(COL_USER).isNotNull() & F.col(COL_ITEM).isNotNull())
            path = f"{tmp}/u{k}/{part}"
            _write(ok.select(*[F.col(c).cast(ratings.schema[c].dataType) for c in ratings.columns]), path)
            kept = spark.read.parquet(path).count()
            fold_counts[part] = kept
            fold_counts[f"{part}_read"] = n_read
            fold_counts[f"{part}_dropped"] = n_read - kept
            if n_read - kept > 0:
                log.warning("fold u%d %s: %d rows refer to quarantined users/items", k, part, n_read - kept)
        counts[f"u{k}"] = fold_counts
    return counts


def read_split(spark: SparkSession, cfg: Config, part: str, fold: int | None = None) -> DataFrame:
    base = cfg.stage_path("splits", split_name(cfg))
    path = f"{base}/u{fold}/{part}" if fold is not None else f"{base}/{part}"
    if not fs.exists(spark, path):
        raise FileNotFoundError(f"{path} not found: run the split stage first (recsys-spark split)")
    return spark.read.parquet(path)


# -- models: fit, predict, recommend -----------------------------------------------
def rating_scale(spark: SparkSession, cfg: Config) -> Scale:
    """The dataset's declared rating scale, as ingest recorded it."""
    manifest = fs.read_manifest(spark, cfg.stage_path("ingest"))
    if manifest is None:
        raise FileNotFoundError(f"{cfg.stage_path('ingest')} not found: run the ingest stage first")
    lo, hi = manifest["counts"]["rating_scale"]
    return Scale(lo, hi)


def models_dir_of(cfg: Config) -> Path:
    """`models.models_dir`, else the project's conf/models: where every model's tuned defaults are read."""
    return Path(cfg.models.models_dir) if cfg.models.models_dir else registry.MODELS_DIR


def run_model(spark: SparkSession, cfg: Config, name: str, force: bool = False) -> dict[str, Any]:
    """Fit ``name`` and write its predictions in the contract shapes.

    ``valid/``: fitted on train, rating predictions for every valid row and
    top-N for every valid user (the blend selects on these).  ``test/``: refitted
    on train + valid, rating predictions for every test row and top-N for every
    test user, unseen items only.  Row accounting: rows asked = rows predicted.
    """
    if name not in registry.REGISTRY:
        raise ValueError(f"models.names: unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    split_out = cfg.stage_path("splits", split_name(cfg))
    output = cfg.stage_path("predictions", name)
    models_dir = models_dir_of(cfg)
    params = registry.model_params(name, models_dir)
    k = cfg.models.k

    def body(tmp: str) -> dict[str, Any]:
        scale = rating_scale(spark, cfg)
        train = read_split(spark, cfg, spl.TRAIN)
        valid = read_split(spark, cfg, spl.VALID)
        test = read_split(spark, cfg, spl.TEST)
        counts: dict[str, Any] = {}
        for part, fit_on, target in (("valid", train, valid), ("test", train.unionByName(valid), test)):
            n_rows = target.count()
            if n_rows == 0:
                counts[part] = {"rows": 0, "predicted": 0, "users": 0, "users_with_lists": 0}
                continue
            side = side_data(spark, cfg) if registry.uses_side(name) else None
            model = registry.build(name, scale, params, models_dir, side=side).fit(fit_on)
            pair_cols = [c for c in (COL_USER, COL_ITEM, COL_TIMESTAMP) if c in target.columns]  # time-aware models use the timestamp
            model.predict(target.select(*pair_cols)).write.parquet(f"{tmp}/{part}/ratings")
            users = target.select(COL_USER).distinct()
            model.recommend(users, k).write.parquet(f"{tmp}/{part}/topn")
            predicted = spark.read.parquet(f"{tmp}/{part}/ratings").count()
            if predicted != n_rows:
                raise RuntimeError(f"{name}: {n_rows} {part} rows asked, {predicted} predicted")
            topn = spark.read.parquet(f"{tmp}/{part}/topn")
            counts[part] = {
                "rows": n_rows, "predicted": predicted, "users": users.count(),
                "users_with_lists": topn.select(COL_USER).distinct().count(),
            }  # fmt: skip
            log.info("%s %s: %d rows predicted, top-%d for %d users", name, part, predicted, k, counts[part]["users_with_lists"])
        return counts

    extra = {"model": name, "params": params, "k": k}
    return run_stage(spark, cfg, f"predict:{name}", output, (), [split_out], body, force, extra)


def run_neighbors(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the neighbour table ``(a, b, sim, support)`` of ``neighbors.model`` over train + valid.

    Accounting: ``ratings`` in, ``ratings_paired`` (after the per-key cap) used
    for pair generation, ``entities`` with at least one rating and
    ``entities_with_neighbors``; ``pairs`` rows written.
    """
    from recsys_spark.neighborhood import KNN

    name = cfg.neighbors.model
    if name not in registry.REGISTRY:
        raise ValueError(f"neighbors.model: unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    split_out = cfg.stage_path("splits", split_name(cfg))
    output = cfg.stage_path("neighbors", name)
    models_dir = models_dir_of(cfg)
    params = {**registry.model_params(name, models_dir), "max_neighbors": cfg.neighbors.max_neighbors or None}
    if not isinstance(registry.build(name, Scale(), {}, models_dir), KNN):
        raise ValueError(f"neighbors.model: {name!r} is not a neighbourhood model")

    def body(tmp: str) -> dict[str, Any]:
        est = registry.build(name, rating_scale(spark, cfg), params, models_dir)
        assert isinstance(est, KNN)
        ratings = read_split(spark, cfg, spl.TRAIN).unionByName(read_split(spark, cfg, spl.VALID))
        ratings = ratings.select(COL_USER, COL_ITEM, "rating").persist(StorageLevel.MEMORY_AND_DISK)
        key, entity = (COL_ITEM, COL_USER) if est.user_based else (COL_USER, COL_ITEM)
        _, table = est.neighbor_table(ratings)
        _write(table, f"{tmp}/table")
        written = spark.read.parquet(f"{tmp}/table")
        per_key = ratings.groupBy(key).count()
        paired = per_key.agg(F.sum(F.least(F.col("count"), F.lit(est.cap)) if est.cap else F.col("count"))).first()[0]
        counts = {
            "ratings": ratings.count(), "ratings_paired": int(paired or 0),
            "entities": ratings.select(entity).distinct().count(),
            "entities_with_neighbors": written.select("a").distinct().count(), "pairs": written.count(),
            "direction": "user-user" if est.user_based else "item-item",
        }  # fmt: skip
        log.info("neighbors %s: %d pairs for %d of %d entities", name, counts["pairs"], counts["entities_with_neighbors"], counts["entities"])
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params}
    return run_stage(spark, cfg, "neighbors", output, ("neighbors",), [split_out], body, force, extra)


def run_factorize(spark: SparkSession, cfg: Config, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Fit ``factorize.model`` on train + valid; write its factors and what each factor means.

    Output: ``user_factors`` / ``item_factors`` (Parquet, the
    :class:`~recsys_spark.factorization.model.FactorModel` tables),
    ``interpretation`` (per factor: top titles by loading, genres and tags by
    lift) and ``interpretation.png``.  Accounting: ratings in, users and items
    with factors (every user and item of the ratings; none dropped).
    """
    from recsys_spark.factorization.interpret import factor_terms, plot_factors
    from recsys_spark.factorization.model import FactorModel

    name = name or cfg.factorize.model
    if name not in registry.REGISTRY:
        raise ValueError(f"factorize.model: unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    split_out = cfg.stage_path("splits", split_name(cfg))
    output = cfg.stage_path("factors", name)
    models_dir = models_dir_of(cfg)
    params = registry.model_params(name, models_dir)

    def body(tmp: str) -> dict[str, Any]:
        ratings = read_split(spark, cfg, spl.TRAIN).unionByName(read_split(spark, cfg, spl.VALID)).persist(StorageLevel.MEMORY_AND_DISK)
        model = registry.build(name, rating_scale(spark, cfg), params, models_dir).fit(ratings)
        if not isinstance(model, FactorModel):
            raise ValueError(f"factorize.model: {name!r} is not a factorization model")
        _write(model.user_factors, f"{tmp}/user_factors")
        _write(model.item_factors, f"{tmp}/item_factors")
        side = side_data(spark, cfg)
        items, tags = side.items, side.tags
        table = factor_terms(spark.read.parquet(f"{tmp}/item_factors"), items, tags, top=cfg.factorize.top_terms)
        _write(table, f"{tmp}/interpretation")
        with tempfile.TemporaryDirectory() as local:
            png = plot_factors(spark.read.parquet(f"{tmp}/interpretation"), f"{local}/interpretation.png", f"{name} factors ({cfg.dataset_name})")
            fs.copy_from_local(spark, png, f"{tmp}/interpretation.png")
        counts = {
            "ratings": ratings.count(),
            "users": ratings.select(COL_USER).distinct().count(),
            "items": ratings.select(COL_ITEM).distinct().count(),
            "users_with_factors": spark.read.parquet(f"{tmp}/user_factors").count(),
            "items_with_factors": spark.read.parquet(f"{tmp}/item_factors").count(),
            "rank": model.rank,
            "interpretation_rows": spark.read.parquet(f"{tmp}/interpretation").count(),
        }
        if counts["users_with_factors"] != counts["users"] or counts["items_with_factors"] != counts["items"]:
            raise RuntimeError(f"factorize {name}: factors for {counts['users_with_factors']}/{counts['users']} users, {counts['items_with_factors']}/{counts['items']} items")
        log.info("factorize %s: rank %d factors for %d users and %d items", name, counts["rank"], counts["users"], counts["items"])
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params}
    return run_stage(spark, cfg, "factorize", output, ("factorize",), [split_out], body, force, extra)


def run_content(spark: SparkSession, cfg: Config, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Fit ``content.model`` on train + valid; write what it learned and why it recommends.

    Output: ``features/`` (the fitted Spark ML transform, its ``vocabulary``
    and the item ``vectors``: a new item is featurised by loading the
    transform), ``neighbors`` (content item-item table ``(a, b, sim,
    support)``), ``profile_sums`` / ``profile_counts`` (updatable user
    profiles), ``terms`` (term signal: terms whose items are rated above or
    below the baseline) and ``explanations`` (top-N of ``content.explain_users``
    test users, each with its reason); with segment or trend priors,
    ``segments`` (``user_idx, segment, segment_label``: the user's prior group
    and demographic label).  Accounting: ratings in; catalogue items, items
    with features and with neighbours; users with profiles; rows explained;
    users per segment and prior groups.
    """
    from recsys_spark.content import ContentModel, ItemFeatures, term_signal

    name = name or cfg.content.model
    if name not in registry.REGISTRY:
        raise ValueError(f"content.model: unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    if not registry.uses_side(name):
        raise ValueError(f"content.model: {name!r} is not a content model")
    split_out = cfg.stage_path("splits", split_name(cfg))
    output = cfg.stage_path("content", name)
    models_dir = models_dir_of(cfg)
    params = registry.model_params(name, models_dir)

    def body(tmp: str) -> dict[str, Any]:
        side = side_data(spark, cfg)
        ratings = read_split(spark, cfg, spl.TRAIN).unionByName(read_split(spark, cfg, spl.VALID)).persist(StorageLevel.MEMORY_AND_DISK)
        model = registry.build(name, rating_scale(spark, cfg), params, models_dir, side=side).fit(ratings)
        assert isinstance(model, ContentModel)
        features = ItemFeatures(model.pipeline, model.vocabulary, model.vectors, model.params["groups"], model.params["weights"])
        if model.params["features"] == "content":
            features.save(f"{tmp}/features")
        else:  # hybrid vectors hold collaborative dimensions the transform does not produce
            _write(model.vectors, f"{tmp}/features/vectors")
            _write(model.vocabulary, f"{tmp}/features/vocabulary")
        _write(model.neighbors, f"{tmp}/neighbors")
        _write(model.sums, f"{tmp}/profile_sums")
        _write(model.counts, f"{tmp}/profile_counts")
        segmented = model.grouped  # segment and / or trend priors: each user's prior group
        if segmented:
            _write(model.segments, f"{tmp}/segments")
        _write(term_signal(ratings, model.vectors, model.vocabulary, cfg.content.min_items, cfg.content.top_terms), f"{tmp}/terms")
        users = read_split(spark, cfg, spl.TEST).select(COL_USER).distinct()
        if cfg.content.explain_users:
            users = users.orderBy(COL_USER).limit(cfg.content.explain_users)
        recs = model.recommend(users, cfg.models.k)
        _write(model.explain(recs, side.items), f"{tmp}/explanations")
        explained = spark.read.parquet(f"{tmp}/explanations")
        counts = {
            "ratings": ratings.count(),
            "catalog_items": side.items.count(),
            "items_with_features": spark.read.parquet(f"{tmp}/features/vectors").where(F.size("indices") > 0).count(),
            "items_with_neighbors": spark.read.parquet(f"{tmp}/neighbors").select("a").distinct().count(),
            "users_with_profiles": spark.read.parquet(f"{tmp}/profile_counts").count(),
            "dimensions": model.dim,
            "explained_rows": explained.count(),
            "explained_without_reason": explained.where(F.col("reason").isNull() | (F.col("reason") == "")).count(),
        }
        if segmented:  # one row per segment
            by_segment = spark.read.parquet(f"{tmp}/segments").groupBy("segment_label").agg(F.count("*").alias("n"), F.countDistinct("segment").alias("g")).collect()
            none = "(no segment)" if model.params.get("trend_days") else "(global prior)"  # with a trend, a time group
            counts["users_by_segment"] = {(r["segment_label"] or none): r["n"] for r in sorted(by_segment, key=lambda r: r["segment_label"] or "")}
            counts["prior_groups"] = sum(r["g"] for r in by_segment)  # (segment, period) groups with their own prior
        log.info(
            "content %s: %d of %d items featurised (%d dims), %d with neighbours, %d profiles, %d recommendations explained",
            name, counts["items_with_features"], counts["catalog_items"], counts["dimensions"], counts["items_with_neighbors"],
            counts["users_with_profiles"], counts["explained_rows"],
        )  # fmt: skip
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params, "k": cfg.models.k}
    return run_stage(spark, cfg, "content", output, ("content",), [split_out], body, force, extra)


def run_export(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the feature tables a PyTorch job trains on (:mod:`recsys_spark.features`).

    Output under ``<output>/<dataset>/features/<split>``: ``interactions/{train,
    valid,test}``, ``negatives`` (for the training positives), ``items``,
    ``users``, ``histories`` (training part, chronological) and
    ``metadata.json`` (vocabulary sizes, the split they came from, schemas).
    Row groups are ``export.row_group_mb`` MB, each table in ``export.files``
    files.  Accounting: rows in = rows out per part; negatives asked and drawn.
    """
    from recsys_spark import features as fe

    split_out = cfg.stage_path("splits", split_name(cfg))
    output = cfg.stage_path("features", split_name(cfg))
    ingest_out = cfg.stage_path("ingest")
    content_vectors = cfg.stage_path("content", cfg.export.content_model, "features", "vectors")
    e = cfg.export

    def body(tmp: str) -> dict[str, Any]:
        def write(df: DataFrame, name: str) -> int:
            df.repartition(e.files).write.option("parquet.block.size", e.row_group_mb * 1024 * 1024).parquet(f"{tmp}/{name}")
            return spark.read.parquet(f"{tmp}/{name}").count()

        counts: dict[str, Any] = {}
        parts = {p: read_split(spark, cfg, p) for p in (spl.TRAIN, spl.VALID, spl.TEST)}
        for p, df in parts.items():
            n_in = df.count()
            n_out = write(fe.interactions(df), f"interactions/{p}")
            if n_in != n_out:
                raise RuntimeError(f"export: {n_in} {p} ratings in, {n_out} written")
            counts[f"interactions_{p}"] = n_out
        train = parts[spl.TRAIN]
        n_users = spark.read.parquet(f"{ingest_out}/{USER_MAP}").count()
        n_items = spark.read.parquet(f"{ingest_out}/{ITEM_MAP}").count()
        neg = fe.sample_negatives(train, n_items, e.negatives, e.seed)
        counts["negatives"] = write(neg, NEGATIVES)
        counts["negatives_short"] = fe.negatives_shortfall(train, spark.read.parquet(f"{tmp}/{NEGATIVES}"), n_items, e.negatives)
        items = read_ingested(spark, cfg, "items")
        genres = fe.genre_vocabulary(items)
        vectors = spark.read.parquet(content_vectors) if fs.exists(spark, content_vectors) else None
        counts["items"] = write(fe.item_features(items, genres, vectors, e.top_terms), "items")
        users_path = f"{ingest_out}/users"
        users = spark.read.parquet(users_path) if fs.exists(spark, users_path) else None
        user_table, occupations = fe.user_features(users, parts[spl.TRAIN].unionByName(parts[spl.VALID]).unionByName(parts[spl.TEST]))
        counts["users"] = write(user_table, "users")
        counts["histories"] = write(fe.histories(train), "histories")
        n_terms = spark.read.parquet(content_vectors.rsplit("/", 1)[0] + "/vocabulary").count() if vectors is not None else 0
        meta = fe.metadata(n_users, n_items, genres, occupations, n_terms, split_name(cfg), negatives_per_positive=e.negatives,
                           row_group_mb=e.row_group_mb, terms_from=content_vectors if vectors is not None else None, counts=counts)  # fmt: skip
        fs.write_json(spark, f"{tmp}/metadata.json", meta)
        log.info("export: %s", counts)
        return counts

    inputs = [split_out, ingest_out] + ([content_vectors.rsplit("/features", 1)[0]] if fs.exists(spark, content_vectors) else [])
    return run_stage(spark, cfg, "export_features", output, ("export",), inputs, body, force)


def run_train_torch(spark: SparkSession, cfg: Config, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Train ``torch.model`` on the exported features; write the model and its test predictions.

    Trains on ``interactions/train`` with early stopping on
    ``interactions/valid`` (locally or through TorchDistributor, per
    ``[torch]``), then scores the test part in Spark (``predict_batch_udf``):
    ``predictions/ratings`` and ``predictions/topn`` in the contract shapes,
    ``model/`` (:class:`~recsys_spark.torch.recommender.DeepModel`), and the
    run's ``best.pt`` / ``result.json``.  Accounting: test rows asked =
    predicted; users with lists.
    """
    name = name or cfg.torch.model
    models_dir = models_dir_of(cfg)
    if not registry.is_deep(name):
        deep = sorted(n for n in registry.REGISTRY if registry.is_deep(n))
        raise ValueError(f"torch.model: {name!r} is not a registered deep model; choose one of {', '.join(deep)}")
    export_out = cfg.stage_path("features", split_name(cfg))
    output = cfg.stage_path("torch", name)
    params = {
        **registry.model_params(name, models_dir), "distributor": cfg.torch.distributor, "num_processes": cfg.torch.num_processes,
        "backend": cfg.torch.backend, "use_gpu": cfg.torch.use_gpu,
    }  # fmt: skip

    if not fs.exists(spark, f"{export_out}/metadata.json"):
        raise FileNotFoundError(f"{export_out}/metadata.json not found: run the export_features stage first (recsys-spark export_features)")

    def body(tmp: str) -> dict[str, Any]:
        meta = json.loads(fs.read_text(spark, f"{export_out}/metadata.json"))
        local = lambda p: p[len("file:"):] if p.startswith("file:") else p  # noqa: E731 - the loader reads local or mounted paths
        mlflow = None
        if cfg.torch.log_mlflow and cfg.tracking.enabled:
            uri, _ = tracking.tracking_uri(cfg)
            mlflow = {"uri": uri, "experiment": cfg.tracking.experiment, "run_name": f"train_torch:{name}"}
        model_est = registry.build(name, rating_scale(spark, cfg), {**params, "mlflow": mlflow}, models_dir)
        train = spark.read.parquet(f"{export_out}/interactions/{spl.TRAIN}")
        with tempfile.TemporaryDirectory(prefix=f"train_torch-{name}-") as work:
            valid = f"{export_out}/interactions/{spl.VALID}"
            has_valid = spark.read.parquet(valid).limit(1).count() > 0
            model = model_est.fit_exported(
                train, local(f"{export_out}/interactions/{spl.TRAIN}"), local(valid) if has_valid else None, work,
                n_users=meta["n_users"], n_items=meta["n_items"],
            )  # fmt: skip
            fs.copy_from_local(spark, model.info.pop("state"), f"{tmp}/best.pt")
        model.save(f"{tmp}/model")
        fs.write_json(spark, f"{tmp}/result.json", model.info)
        test = spark.read.parquet(f"{export_out}/interactions/{spl.TEST}")
        asked = test.count()
        model.predict(test.select(COL_USER, COL_ITEM)).write.parquet(f"{tmp}/predictions/ratings")
        users = test.select(COL_USER).distinct()
        model.recommend(users, cfg.models.k).write.parquet(f"{tmp}/predictions/topn")
        predicted = spark.read.parquet(f"{tmp}/predictions/ratings").count()
        if predicted != asked:
            raise RuntimeError(f"train_torch {name}: {asked} test rows asked, {predicted} predicted")
        counts = {
            "train_rows": train.count(), "test_rows": asked, "predicted": predicted, "users": users.count(),
            "users_with_lists": spark.read.parquet(f"{tmp}/predictions/topn").select(COL_USER).distinct().count(),
            "best_epoch": model.info["best_epoch"], "valid": model.info["valid"], "metric": model.info["metric"],
            "distributor": cfg.torch.distributor,
        }  # fmt: skip
        log.info("train_torch %s: %s", name, counts)
        return counts

    extra = {"model": name, "params": params, "k": cfg.models.k}
    return run_stage(spark, cfg, "train_torch", output, ("torch",), [export_out], body, force, extra)


def read_predictions(spark: SparkSession, cfg: Config, name: str, part: str, kind: str) -> DataFrame:
    return spark.read.parquet(cfg.stage_path("predictions", name, part, kind))


def _report(
    spark: SparkSession, cfg: Config, name: str, part: str, truth: DataFrame, train: DataFrame,
    items: DataFrame, n_catalog: int, pred_root: str | None = None, per_user: list[DataFrame] | None = None,
) -> dict[str, Any]:  # fmt: skip
    root = pred_root or cfg.stage_path("predictions", name)
    k = cfg.evaluate.k
    thr = cfg.evaluate.relevance_threshold or None
    ratings = spark.read.parquet(f"{root}/{part}/ratings")
    topn = spark.read.parquet(f"{root}/{part}/topn")
    rep = ev.rating_report(ratings, truth, primary_is_fallback=name == "global_mean")
    rep.update(ev.topn_report(topn, truth, train, items, n_catalog, k, thr, per_user=per_user, name=name))
    return rep


# -- blend ------------------------------------------------------------------------
def run_blend(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """For now: the single model that is best on the validation part, relabelled ``blend``."""
    names = cfg.models.names
    output = cfg.stage_path("blend")
    metric = cfg.evaluate.select_metric

    def body(tmp: str) -> dict[str, Any]:
        valid = read_split(spark, cfg, spl.VALID)
        train = read_split(spark, cfg, spl.TRAIN)
        items = read_ingested(spark, cfg, "items")
        n_catalog = items.count()
        scores: dict[str, float] = {}
        if valid.limit(1).count() == 0:
            chosen = names[0]
            log.warning("no validation rows (split.valid_ratio = 0): the blend takes the first model, %s", chosen)
        else:
            for name in names:
                rep = _report(spark, cfg, name, "valid", valid, train, items, n_catalog)
                if metric not in rep:
                    raise ValueError(f"evaluate.select_metric = {metric!r} is not one of {sorted(k for k in rep if k != 'sources')}")
                scores[name] = rep[metric]
            chosen = names[0]
            for name in names[1:]:
                if ev.better(metric, scores[name], scores[chosen]):
                    chosen = name
            log.info("blend: %s is best on validation by %s (%s)", chosen, metric, {k: round(v, 4) for k, v in scores.items()})
        for kind in ("ratings", "topn"):
            df = read_predictions(spark, cfg, chosen, "test", kind).withColumn(COL_MODEL, F.lit("blend"))
            df.write.parquet(f"{tmp}/test/{kind}")
        return {"chosen": chosen, "select_metric": metric, "valid_scores": scores}

    inputs = [cfg.stage_path("predictions", n) for n in names]
    return run_stage(spark, cfg, "blend", output, ("evaluate",), inputs, body, force, {"models": names})


# -- evaluate ----------------------------------------------------------------------
def run_evaluate(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Metrics of every model and the blend on the test part: Parquet + JSON + Markdown, MLflow."""
    names = cfg.models.names
    output = cfg.stage_path("evaluate")

    def body(tmp: str) -> dict[str, Any]:
        test = read_split(spark, cfg, spl.TEST).persist()
        train = read_split(spark, cfg, spl.TRAIN).unionByName(read_split(spark, cfg, spl.VALID)).persist()
        items = read_ingested(spark, cfg, "items").persist()
        n_catalog = items.count()
        rows: dict[str, dict[str, Any]] = {}
        per_user: list[DataFrame] = []
        for name in names:
            rows[name] = _report(spark, cfg, name, "test", test, train, items, n_catalog, per_user=per_user)
        rows["blend"] = _report(
            spark, cfg, "blend", "test", test, train, items, n_catalog, pred_root=cfg.stage_path("blend"), per_user=per_user
        )
        # per-user values of every model, for significance tests and slicing by user segment
        union = per_user[0]
        for df in per_user[1:]:
            union = union.unionByName(df)
        union.write.partitionBy("model").parquet(f"{tmp}/per_user")
        blend = fs.read_manifest(spark, cfg.stage_path("blend"))
        flat = {m: {k: v for k, v in r.items() if k != "sources"} for m, r in rows.items()}
        metric_names = sorted({k for r in flat.values() for k in r})
        table = spark.createDataFrame(
            [(m, *[float(r.get(c, float("nan"))) for c in metric_names]) for m, r in flat.items()],
            "model string, " + ", ".join(f"`{c}` double" for c in metric_names),
        )
        table.coalesce(1).write.parquet(f"{tmp}/results")
        payload = {"dataset": cfg.dataset_name, "split": split_name(cfg), "k": cfg.evaluate.k, "blend": blend["counts"], "models": rows}
        md = (
            f"# Results: {cfg.dataset_name}, split {split_name(cfg)}\n\n"
            f"Test rows: {test.count()}; blend = {blend['counts']['chosen']} (best on validation by "
            f"{blend['counts']['select_metric']}).\n\n" + ev.results_markdown(rows, cfg.evaluate.k)
        )
        fs.write_json(spark, f"{tmp}/results.json", payload)
        fs.write_text(spark, f"{tmp}/results.md", md)
        log.info("results:\n%s", md)
        run_id = None
        if cfg.tracking.enabled:
            with tempfile.TemporaryDirectory() as local:
                for fname, text in (("results.md", md), ("results.json", json.dumps(payload, indent=2, default=str))):
                    Path(local, fname).write_text(text)
                params = {**tracking.flatten("", {s: cfg.to_dict()[s] for s in ("dataset", "split", "models", "evaluate")})}
                metrics = tracking.flatten("", flat)
                run_id = tracking.log_run(cfg, f"evaluate {cfg.dataset_name}", params, metrics, [str(Path(local, "results.md")), str(Path(local, "results.json"))])
        for df in (test, train, items):
            df.unpersist()
        return {"models": flat, "blend": blend["counts"]["chosen"], "mlflow_run_id": run_id}

    inputs = [cfg.stage_path("predictions", n) for n in names] + [cfg.stage_path("blend")]
    return run_stage(spark, cfg, "evaluate", output, ("evaluate", "tracking"), inputs, body, force, {"models": names})


STAGES = {
    "generate": run_generate, "ingest": run_ingest, "split": run_split, "neighbors": run_neighbors,
    "factorize": run_factorize, "content": run_content, "export_features": run_export, "train_torch": run_train_torch,
    "blend": run_blend, "evaluate": run_evaluate,
}  # fmt: skip

__all__ = ["DataFormatError", "STAGES", "fingerprint", "read_ingested", "read_split", "run_stage"]
