"""content: a content model fitted on train + valid; what it learned and why it recommends."""

from __future__ import annotations

import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.content import ContentModel, ItemFeatures, term_signal
from recsys_spark.schemas import COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage, write
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)


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
    name = name or cfg.content.model
    layout.check_model(name, "content.model")
    if not registry.uses_side(name):
        raise ValueError(f"content.model: {name!r} is not a content model")
    split_out = layout.split(cfg)
    output = layout.content(cfg, name)
    models_dir = layout.models_dir_of(cfg)
    params = registry.model_params(name, models_dir)

    def body(tmp: str) -> dict[str, Any]:
        side = layout.side_data(spark, cfg)
        ratings = layout.read_train_valid(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
        model = registry.build(name, layout.rating_scale(spark, cfg), params, models_dir).fit(ratings, side=side)
        assert isinstance(model, ContentModel)
        features = ItemFeatures(model.pipeline, model.vocabulary, model.vectors, model.params["groups"], model.params["weights"])
        if model.params["features"] == "content":
            features.save(f"{tmp}/features")
        else:  # hybrid vectors hold collaborative dimensions the transform does not produce
            write(model.vectors, f"{tmp}/features/vectors")
            write(model.vocabulary, f"{tmp}/features/vocabulary")
        write(model.neighbors, f"{tmp}/neighbors")
        write(model.sums, f"{tmp}/profile_sums")
        write(model.counts, f"{tmp}/profile_counts")
        segmented = model.grouped  # segment and / or trend priors: each user's prior group
        if segmented:
            write(model.segments, f"{tmp}/segments")
        write(term_signal(ratings, model.vectors, model.vocabulary, cfg.content.min_items, cfg.content.top_terms), f"{tmp}/terms")
        users = layout.read_split(spark, cfg, spl.TEST).select(COL_USER).distinct()
        if cfg.content.explain_users:
            users = users.orderBy(COL_USER).limit(cfg.content.explain_users)
        recs = model.recommend(users, cfg.models.k)
        write(model.explain(recs, side.items), f"{tmp}/explanations")
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
            by_segment = (
                spark.read.parquet(f"{tmp}/segments")
                .groupBy("segment_label")
                .agg(F.count("*").alias("n"), F.countDistinct("segment").alias("g"))
                .collect()
            )
            none = "(no segment)" if model.params.get("trend_days") else "(global prior)"  # with a trend, a time group
            counts["users_by_segment"] = {
                (r["segment_label"] or none): r["n"] for r in sorted(by_segment, key=lambda r: r["segment_label"] or "")
            }
            counts["prior_groups"] = sum(r["g"] for r in by_segment)  # (segment, period) groups with their own prior
        log.info(
            "content %s: %d of %d items featurised (%d dims), %d with neighbours, %d profiles, %d recommendations explained",
            name, counts["items_with_features"], counts["catalog_items"], counts["dimensions"], counts["items_with_neighbors"],
            counts["users_with_profiles"], counts["explained_rows"],
        )  # fmt: skip
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params, "k": cfg.models.k}
    return run_stage(spark, cfg, "content", output, STAGE.sections, [split_out], body, force, extra)


STAGE = Stage(
    name="content", run=run_content,
    help="fit a content model on the pipeline's split; write item features, content neighbours, profiles, "
    "term signal, explained top-N",
    sections=("content",), inputs=lambda cfg, _m=None: [layout.split(cfg)],
    outputs=lambda cfg, m=None: [layout.content(cfg, m or cfg.content.model)],
    instances=lambda cfg: [cfg.content.model] if cfg.content.model in cfg.models.names else [],
    model_key="content.model",
)  # fmt: skip
