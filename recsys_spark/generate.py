"""Synthetic MovieLens-shaped data, generated inside Spark.

Ratings come from a planted low-rank model with biases::

    r_ui = round_to_step(clip(mu + b_u + b_i + p_u . q_i + noise))

* item popularity is Zipf-like (the item of each draw comes from the inverse
  CDF of ``rank^-s``, ranks shuffled over item ids by an affine permutation);
* which items a user rates depends on taste (``selection = "taste"``): from a
  pool of popularity draws ``candidates`` times larger than needed, the user
  keeps ``n_r`` items drawn without replacement with weights
  ``exp(taste * p_u . q_i)`` (seeded Gumbel keys, top ``n_r`` per user), so the
  chance of rating grows with both popularity and affinity, and chosen items
  are rated higher, as in real logs; ``selection = "popularity"`` draws by
  popularity alone;
* user activity is heavy-tailed (log-normal weights on top of a minimum);
* timestamps increase along each user's history; with ``selection = "taste"``
  the order has a sequential component (``sequence``, default 0.8): that
  share of a user's items is grouped into blocks by primary genre, each genre
  at a seeded place in the user's timeline (taste drifting from genre to
  genre), the rest placed uniformly; so the next item depends on the
  previous ones (its genre continues the current block).  ``sequence = 0``
  gives the order before this component exactly;
* items get 1-3 genres, a release year and a title; an item's factors lean
  towards its primary genre's direction, so genres carry real signal;
* a fraction of ratings also leave a tag drawn from the item's genre words;
* users get MovieLens-100K-like demographics.

All randomness is a hash of ``(seed, purpose, ids)`` (``xxhash64``), so the
output depends only on the parameters, not on partitioning or the cluster.
The tables are laid out like ``ml-latest`` (ratings.csv, movies.csv, tags.csv)
plus ``users.csv``, and are written as raw CSV for the ingest stage to read.
"""

from __future__ import annotations

import logging
import math

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark.config import GenerateConfig

log = logging.getLogger(__name__)

GENRES = [
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip
TAG_WORDS = ["classic", "atmospheric", "funny", "slow", "twist ending", "visually stunning", "overrated", "quotable"]
OCCUPATIONS = [
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
]  # fmt: skip
T0 = 946_684_800  # 2000-01-01
SPAN = 20 * 365 * 86_400
_MASK = (1 << 52) - 1
# the generator before selection by taste: these settings reproduce its data exactly
POPULARITY_SETTINGS = {"selection": "popularity", "zipf_exponent": 0.9, "activity_sigma": 1.0, "mu": 3.55}
POOL_EXPONENT = 0.9  # the steepest popularity the pool of candidates is drawn with (selection by taste)


def _unif(seed: int, purpose: str, *cols: Column) -> Column:
    """Uniform in [0, 1) from a hash of the seed, a purpose tag and columns."""
    h = F.xxhash64(F.lit(seed), F.lit(purpose), *cols)
    return h.bitwiseAND(F.lit(_MASK)).cast("double") / float(1 << 52)


def _normal(seed: int, purpose: str, *cols: Column) -> Column:
    """Standard normal (Box-Muller over two hashed uniforms)."""
    u1 = _unif(seed, purpose + "/1", *cols)
    u2 = _unif(seed, purpose + "/2", *cols)
    return F.sqrt(-2.0 * F.log(F.greatest(u1, F.lit(1e-12)))) * F.cos(2 * math.pi * u2)


def _vector(seed: int, purpose: str, rank: int, sd: float, *cols: Column) -> Column:
    return F.transform(F.sequence(F.lit(0), F.lit(rank - 1)), lambda k: _normal(seed, purpose, *cols, k) * sd)


def _coprime_step(n: int) -> int:
    step = int(n * 0.6180339887) | 1
    while math.gcd(step, n) != 1:
        step += 2
    return step


def generate(spark: SparkSession, cfg: GenerateConfig, latent: bool = False) -> dict[str, DataFrame]:
    """The raw tables ``ratings``, ``movies``, ``tags``, ``users`` (ml-latest column names); with
    ``latent``, also the planted factors ``user_factors`` (userId, p) and ``item_factors`` (movieId, q)."""
    s, n_u, n_i, k = cfg.seed, cfg.n_users, cfg.n_items, cfg.rank
    parts = cfg.partitions or max(2, min(200, cfg.n_ratings // 250_000))
    factor_sd = (0.6 / k) ** 0.25  # var(p . q) ~= 0.6
    uid, iid = F.col("userId"), F.col("movieId")

    # -- items ----------------------------------------------------------------
    g0 = F.floor(_unif(s, "genre0", iid) * len(GENRES)).cast("int")
    genre_names = F.array(*[F.lit(g) for g in GENRES])
    extra = F.filter(
        F.array(
            F.when(_unif(s, "g1?", iid) < 0.5, F.floor(_unif(s, "genre1", iid) * len(GENRES)).cast("int")),
            F.when(_unif(s, "g2?", iid) < 0.2, F.floor(_unif(s, "genre2", iid) * len(GENRES)).cast("int")),
        ),
        lambda x: x.isNotNull(),
    )
    items = (
        spark.range(1, n_i + 1, numPartitions=max(1, parts // 4))
        .withColumnRenamed("id", "movieId")
        .withColumn("g0", g0)
        .withColumn("gidx", F.array_distinct(F.concat(F.array("g0"), extra)))
        .withColumn("year", (2020 - F.floor(90 * F.pow(_unif(s, "year", iid), 2))).cast("int"))
        .withColumn(
            "q",
            F.zip_with(
                _vector(s, "q", k, factor_sd, iid),
                _vector(s, "genre-dir", k, factor_sd, F.col("g0")),
                lambda a, b: (a + b) * (0.5**0.5),
            ),
        )
        .withColumn("b_i", _normal(s, "b_i", iid) * 0.4)
    )
    movies = items.select(
        "movieId",
        F.format_string("Synthetic Movie %d (%d)", iid, F.col("year")).alias("title"),
        F.array_join(F.transform("gidx", lambda g: genre_names[g]), "|").alias("genres"),
    )

    # -- users and their activity ------------------------------------------------
    users = (
        spark.range(1, n_u + 1, numPartitions=max(1, parts // 4))
        .withColumnRenamed("id", "userId")
        .withColumn("w", F.exp(_normal(s, "activity", uid) * cfg.activity_sigma))
        .withColumn("p", _vector(s, "p", k, factor_sd, uid))
        .withColumn("b_u", _normal(s, "b_u", uid) * 0.35)
        .withColumn("start", F.lit(T0) + (_unif(s, "start", uid) * SPAN * 0.7).cast("long"))
    )
    # ratings per user: a minimum plus a share of the rest by weight, capped at
    # half the catalogue; what the cap cuts off is handed to the uncapped users
    cap = max(cfg.min_ratings_per_user, n_i // 2)
    total_w = users.agg(F.sum("w")).first()[0]  # a scalar
    spare = cfg.n_ratings - n_u * cfg.min_ratings_per_user
    n0 = F.lit(cfg.min_ratings_per_user) + F.col("w") / total_w * spare
    users = users.withColumn("n0", n0)
    agg = users.agg(
        F.sum(F.least(F.lit(cap), F.col("n0"))).alias("capped"),
        F.sum(F.when(F.col("n0") < cap, F.col("w"))).alias("w_free"),
    ).first()  # scalars
    deficit = max(0.0, cfg.n_ratings - agg["capped"])
    extra = F.col("w") / F.lit(agg["w_free"] or 1.0) * deficit
    n_r = F.least(F.lit(cap), F.floor(F.col("n0") + F.when(F.col("n0") < cap, extra).otherwise(0))).cast("int")
    # popularity draws per user: enough that the distinct items reach n_r (taste:
    # a pool ``candidates`` times larger, from which the affinity picks n_r)
    pool = 1.0 if cfg.selection == "popularity" else cfg.candidates
    users = users.withColumn("n_r", n_r).withColumn(
        "draws", (F.col("n_r") * (1.2 + 4.0 * F.col("n_r") / n_i) * pool + 10).cast("int")
    )

    # -- rating events --------------------------------------------------------
    # popularity: item ids by rank through an affine permutation; the pool of draws uses the
    # exponent s, or under taste min(s, POOL_EXPONENT) (steeper pools run out of distinct items
    # for heavy users), the rest of the popularity weight, rank^-(s - pool exponent), entering the key
    step, offset = _coprime_step(n_i), int(n_i * 0.37)
    pool_s = cfg.zipf_exponent if cfg.selection == "popularity" else min(cfg.zipf_exponent, POOL_EXPONENT)
    e = 1.0 - pool_s
    u = _unif(s, "item", uid, F.col("j"))
    if abs(e) < 1e-9:
        rank0 = F.pow(F.lit(float(n_i)), u)
    else:
        rank0 = F.pow(1 + u * (n_i**e - 1), 1.0 / e)
    item_rank = F.least(F.greatest(F.floor(rank0).cast("long") - 1, F.lit(0)), F.lit(n_i - 1))
    inv_step = pow(step, -1, n_i) if n_i > 1 else 0
    items = items.withColumn("pop_rank", (((iid - 1 - offset) % n_i + n_i) % n_i * inv_step % n_i).cast("long"))
    dot = F.aggregate(F.zip_with("p", "q", lambda a, b: a * b), F.lit(0.0), lambda acc, x: acc + x)
    item_side = F.broadcast(items.select("movieId", "q", "b_i", "gidx", "pop_rank"))
    if cfg.selection == "popularity":
        events = (
            users.repartition(parts, "userId")
            .select("userId", "n_r", "start", F.explode(F.sequence(F.lit(1), F.col("draws"))).alias("j"))
            .withColumn("movieId", ((item_rank * step + offset) % n_i + 1).cast("long"))
        )
        # distinct items per user, each at its first draw (grouping within the userId partitioning: no shuffle);
        # the first n_r of them in draw order: popularity alone
        first_draw = events.groupBy("userId", "movieId").agg(
            F.min("j").alias("j"), F.first("n_r").alias("n_r"), F.first("start").alias("start")
        )
        events = first_draw.withColumn("pos", F.row_number().over(Window.partitionBy("userId").orderBy("j")))
        events = events.where(F.col("pos") <= F.col("n_r"))
        scored = events.join(users.select("userId", "p", "b_u"), "userId").join(item_side, "movieId").withColumn("dot", dot)
    else:
        # taste: the n_r distinct candidates with the largest taste * p_u.q_i - (s - pool s) log(1 + rank)
        # + Gumbel(u, i), i.e. a draw without replacement with weights
        # exp(taste * p_u.q_i) * (1 + rank)^-(s - pool s) from the popularity pool (Plackett-Luce by
        # Gumbel keys).  De-duplicating, both windows and the broadcast joins stay within the
        # userId partitioning (no shuffle of the pool); timestamps follow a seeded order of the chosen.
        gumbel = -F.log(-F.log(F.greatest(_unif(s, "choose", uid, iid), F.lit(1e-12))))
        key = F.lit(cfg.taste) * F.col("dot") - F.lit(cfg.zipf_exponent - pool_s) * F.log1p(F.col("pop_rank")) + gumbel
        by_key = Window.partitionBy("userId").orderBy(F.desc("key"), "movieId")
        # the order in time: with probability ``sequence`` an item sits in its primary genre's block of
        # the user's history (each genre a seeded place in the user's timeline), else anywhere; ties
        # within a block by the plain order key.  sequence = 0 is the order before this component.
        plain = _unif(s, "order", uid, iid)
        place = F.when(_unif(s, "seq?", uid, iid) < F.lit(cfg.sequence), _unif(s, "genre-order", uid, F.col("gidx")[0])).otherwise(plain)
        in_time = Window.partitionBy("userId").orderBy(place, plain, "movieId")
        scored = (
            users.repartition(parts, "userId")
            .select("userId", "n_r", "start", F.explode(F.sequence(F.lit(1), F.col("draws"))).alias("j"))
            .select("userId", "n_r", "start", ((item_rank * step + offset) % n_i + 1).cast("long").alias("movieId"))
            .dropDuplicates(["userId", "movieId"])
            .join(F.broadcast(users.select("userId", "p", "b_u")), "userId")  # one row per user, small
            .join(item_side, "movieId")
            .withColumn("dot", dot)
            .withColumn("key", key)
            .withColumn("chosen", F.row_number().over(by_key))
            .where(F.col("chosen") <= F.col("n_r"))
            .withColumn("pos", F.row_number().over(in_time))
        )

    mu = cfg.mu
    step_size = 0.5 if cfg.half_stars else 1.0
    lo = 0.5 if cfg.half_stars else 1.0
    scored = scored.withColumn(
        "raw_r", F.lit(mu) + F.col("b_u") + F.col("b_i") + F.col("dot") + _normal(s, "noise", uid, iid) * cfg.noise
    )
    rating = F.least(F.lit(5.0), F.greatest(F.lit(lo), F.round(F.col("raw_r") / step_size) * step_size))
    gap = (F.lit(T0 + SPAN) - F.col("start")) / (F.col("n_r") + 1)
    ts = (F.col("start") + F.col("pos") * gap * (0.5 + 0.5 * _unif(s, "gap", uid))).cast("long")
    scored = scored.withColumn("rating", rating).withColumn("timestamp", ts)
    ratings = scored.select("userId", "movieId", F.format_number("rating", 1).alias("rating"), "timestamp")

    tag_words = F.array(*[F.lit(t) for t in TAG_WORDS])
    # from the ratings table itself, so that a caller who caches ratings computes the events once
    tags = ratings.where(_unif(s, "tag?", uid, iid) < cfg.tag_fraction).join(
        F.broadcast(items.select("movieId", "gidx")), "movieId"
    ).select(
        "userId",
        "movieId",
        F.concat_ws(
            " ",
            F.lower(genre_names[F.col("gidx")[0]]),
            tag_words[F.floor(_unif(s, "tagword", uid, iid) * len(TAG_WORDS)).cast("int")],
        ).alias("tag"),
        (F.col("timestamp") + 60).alias("timestamp"),
    )

    age = F.least(F.lit(73), F.greatest(F.lit(7), F.round(F.lit(33.0) + _normal(s, "age", uid) * 11))).cast("int")
    occupation = F.array(*[F.lit(o) for o in OCCUPATIONS])[F.floor(_unif(s, "occ", uid) * len(OCCUPATIONS)).cast("int")]
    demo = users.select(
        "userId",
        F.when(_unif(s, "gender", uid) < 0.71, "M").otherwise("F").alias("gender"),
        age.alias("age"),
        occupation.alias("occupation"),
        F.lpad((_unif(s, "zip", uid) * 99999).cast("int").cast("string"), 5, "0").alias("zip"),
    )
    out = {"ratings": ratings, "movies": movies, "tags": tags, "users": demo}
    if latent:
        out.update(user_factors=users.select("userId", "p"), item_factors=items.select("movieId", "q"))
    return out
