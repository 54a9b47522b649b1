"""What each latent factor means: the titles, genres and tags that load on it most.

For non-negative factors (NMF) the loading of item ``i`` on factor ``f`` is
``q_if`` itself.  Per factor:

* ``title``: the items with the largest loading;
* ``genre`` / ``tag``: terms ranked by *lift*, the mean loading of the items
  carrying the term divided by the factor's mean loading over all items
  (terms on fewer than ``min_items`` items are skipped: one odd movie is not
  a theme).

Everything is computed in Spark; only the final top-``top`` table (factors
x kinds x ``top`` rows) is small enough to plot on the driver.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.factorization.model import FACTORS
from recsys_spark.schemas import COL_GENRES, COL_ITEM, COL_TAG, COL_TITLE

log = logging.getLogger(__name__)

INTERPRETATION_DDL = "factor int, kind string, rank int, term string, weight double, n_items long"


def factor_terms(item_factors: DataFrame, items: DataFrame, tags: DataFrame | None = None, top: int = 8,
                 min_items: int = 5) -> DataFrame:  # fmt: skip
    """``(factor, kind, rank, term, weight, n_items)``: kind ``title`` (weight = loading) or ``genre``/``tag`` (weight = lift)."""
    load = item_factors.select(COL_ITEM, F.posexplode(FACTORS).alias("factor", "loading"))
    mean = load.groupBy("factor").agg(F.avg("loading").alias("_m"))
    titles = (
        load.join(items.select(COL_ITEM, COL_TITLE), COL_ITEM)
        .select(
            "factor", F.lit("title").alias("kind"), F.col(COL_TITLE).alias("term"), F.col("loading").alias("weight"),
            F.lit(1).cast("long").alias("n_items"),
        )
    )  # fmt: skip
    parts = [titles]
    term_tables = [items.select(COL_ITEM, F.explode(COL_GENRES).alias("term")).withColumn("kind", F.lit("genre"))]
    if tags is not None:
        norm = F.lower(F.trim(F.col(COL_TAG)))
        term_tables.append(
            tags.select(COL_ITEM, norm.alias("term")).where(F.length("term") > 0).distinct().withColumn("kind", F.lit("tag"))
        )
    for terms in term_tables:
        lift = (
            load.join(terms, COL_ITEM)
            .groupBy("factor", "kind", "term")
            .agg(F.avg("loading").alias("_a"), F.count("*").alias("n_items"))
            .where(F.col("n_items") >= min_items)
            .join(mean, "factor")
            .select("factor", "kind", "term", (F.col("_a") / F.col("_m")).alias("weight"), "n_items")
        )
        parts.append(lift)
    allp = parts[0]
    for p in parts[1:]:
        allp = allp.unionByName(p)
    w = Window.partitionBy("factor", "kind").orderBy(F.desc("weight"), F.asc("term"))
    return (
        allp.withColumn("rank", F.row_number().over(w))
        .where(F.col("rank") <= top)
        .select(F.col("factor").cast("int"), "kind", F.col("rank").cast("int"), "term", "weight", "n_items")
    )


def plot_factors(table: DataFrame, path: str, title: str = "NMF factors") -> str:
    """A PNG at ``path`` (on this machine) of :func:`factors_figure`."""
    import matplotlib.pyplot as plt

    fig = factors_figure(table, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def factors_figure(table: DataFrame, title: str = "NMF factors") -> Any:
    """One panel per factor listing its top genres (lift) and titles (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.where(F.col("rank") <= 4).orderBy("factor", "kind", "rank").collect()  # bounded: factors x kinds x 4
    factors = sorted({r["factor"] for r in rows})
    n = len(factors)
    cols = min(4, max(n, 1))
    nrows = max(1, -(-n // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f in zip(axes.ravel(), factors, strict=False):
        genres = [r for r in rows if r["factor"] == f and r["kind"] == "genre"]
        titles = [r["term"] for r in rows if r["factor"] == f and r["kind"] == "title"]
        tags = [r["term"] for r in rows if r["factor"] == f and r["kind"] == "tag"]
        ax.axis("on")
        ax.barh([g["term"] for g in genres][::-1], [g["weight"] for g in genres][::-1], color="tab:blue")
        ax.set_title(f"factor {f}", fontsize=9)
        ax.tick_params(labelsize=7)
        text = "\n".join(t[:38] for t in titles[:3]) + (("\ntags: " + ", ".join(tags[:3])) if tags else "")
        ax.text(1.02, 0.5, text, transform=ax.transAxes, fontsize=6, va="center")
    fig.suptitle(title + " (bars: genre lift; text: top titles)", fontsize=10)
    fig.tight_layout()
    return fig
