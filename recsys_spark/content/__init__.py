"""Content-based recommendations: item features, user profiles, cold start, explanations.

Modules: :mod:`.features` (documents, the featurizer), :mod:`.scoring` (block
scoring, neighbour tables), :mod:`.hybrid` (collaborative vectors),
:mod:`.profiles`, :mod:`.priors` (segments, trends), :mod:`.model` (the
recommender), :mod:`.explain` (reasons, term signal), :mod:`.knowledge`
(users with no ratings).

Item features (:class:`ItemFeaturizer`, all ``pyspark.ml.feature``)
--------------------------------------------------------------------
Each item becomes one L2-normalised sparse vector made of feature *groups*:

===============  ============================================================
``genres``       TF-IDF over the item's genres (``CountVectorizer`` + ``IDF``)
``tags``         TF-IDF over its normalised user tags (lower case, punctuation
                 and repeated spaces removed; each application counts once,
                 so a tag many users gave weighs more); ``tag_min_df``
                 drops tags seen on fewer items
``year``         the release decade, one-hot
``popularity``   ``log2(1 + training ratings)`` as a thermometer code
                 (``pop>=1``, ``pop>=2``, ...): items of similar popularity
                 share more dimensions
``recency``      where the item's training ratings sit in the training time
                 window (mean timestamp, tenths), thermometer code
===============  ============================================================

Each group is L2-normalised on its own, multiplied by ``sqrt(weight)`` and
the concatenation normalised again, so the cosine of two items is
``sum_g w_g cos_g / sqrt(W_a W_b)`` (``W`` the summed weights of the groups an
item has): a weight scales its group's share of the similarity linearly.  The
fitted ``PipelineModel`` (vocabularies and IDF included) is saved with the
features, so a new item is featurised by the same transform
(:meth:`ItemFeatures.transform`).  Vectors are kept as
``(item_idx, indices, values)``; :data:`VOCAB_SCHEMA` names every index.

Similarity, profiles and scores
-------------------------------
* :func:`sparse_topk` keeps each sparse row's best ``k`` items by dot
  product (scipy sparse products over blocks).  Where the item side fits
  ``broadcast_mb`` it is shipped to every task, identical item vectors folded
  into one column, and each task keeps a running top-k over the item blocks;
  above that, (left block, item block) pairs meet in one task each -- the
  layout of :func:`recsys_spark.factorization.model.factor_topk` -- and a
  window merges their partial answers.  :func:`content_neighbors` uses it for the
  item-item neighbour table ``(a, b, sim, support)`` (``support``: shared
  non-zero features), the shape of the collaborative tables so the two can be
  compared and fused.  :func:`lsh_content_neighbors` is the approximate
  version for large catalogues (``BucketedRandomProjectionLSH``).
* A user profile is kept as sums (:func:`profile_sums`): per feature
  ``s_rx = sum r x`` and ``s_x = sum x`` over the items the user rated, per
  user ``n`` and ``s_r = sum r``.  The mean-centred, rating-weighted profile
  is ``s_rx - (s_r / n) s_x = sum (r - mean_u) x``; new ratings add to the
  sums (:func:`update_profile_sums`), which equals recomputing from scratch.
* :class:`ContentBased` (registered as ``content`` and ``content_hybrid``):
  rating prediction is the bias baseline plus a similarity-weighted deviation
  over the content neighbours of the item that the user rated (the kNN
  formula of :mod:`recsys_spark.neighbors` on the content table, so an item
  nobody rated still gets a personal prediction); top-N ranks unseen items by
  ``cos(profile, item)`` plus ``prior`` times the item's normalised log
  popularity (0 turns it off).  ``features="hybrid"`` appends collaborative
  item vectors (:func:`collaborative_vectors`) to the content vectors.
* With ``segments`` (user attributes from the users table: ``age``,
  ``gender``, ``occupation``; :func:`user_segments`) the popularity is the
  user's segment's, shrunk towards the global one (:func:`segment_prior`):
  what a new user's age says about what they will rate, where their few
  ratings' features say little.  Users with an attribute unknown, and
  datasets without it, get the global prior.
* With ``trend_days`` the popularity is what was rated in the days before the
  user's latest rating (:func:`trend_prior`; never later ratings), shrunk
  towards the all-time shares, times the segment's lift where there is one:
  a catalogue's draw moves with time (new releases), and a user's time says
  which part of it they meet.  ``prior_skip_first`` leaves each user's first
  ratings out of every count (:func:`counted_ratings`).

Cold start, explanations
------------------------
:func:`knowledge_based` serves a user with no ratings from the genres they
pick; :func:`explain` gives every recommendation a reason built from data: the
rated item that contributed most and the features profile and item share.
The cold-start protocols live in :mod:`recsys_spark.coldstart`.
"""

from __future__ import annotations

from recsys_spark.content.explain import (
    explain,
    term_signal,
)
from recsys_spark.content.features import (
    DEFAULT_WEIGHTS,
    FEATURE,
    GROUPS,
    IDX,
    TFIDF_GROUPS,
    VAL,
    VALUE,
    VECTORS_DDL,
    VOCAB_SCHEMA,
    ItemFeatures,
    ItemFeaturizer,
    from_long,
    item_documents,
    normalize_tag,
    to_long,
    vectors_from,
)
from recsys_spark.content.hybrid import (
    collaborative_vectors,
    concat_vectors,
)
from recsys_spark.content.knowledge import (
    knowledge_based,
)
from recsys_spark.content.model import (
    ContentBased,
    ContentModel,
    SideData,
)
from recsys_spark.content.priors import (
    DAY_S,
    DEFAULT_AGE_EDGES,
    SEGMENT_ATTRIBUTES,
    SEGMENTS_SCHEMA,
    counted_ratings,
    segment_prior,
    trend_prior,
    user_segments,
)
from recsys_spark.content.profiles import (
    Weighting,
    profile_sums,
    profile_vectors,
    update_profile_sums,
)
from recsys_spark.content.scoring import (
    content_neighbors,
    lsh_content_neighbors,
    sparse_topk,
)

__all__ = [
    "ContentBased",
    "ContentModel",
    "DAY_S",
    "DEFAULT_AGE_EDGES",
    "DEFAULT_WEIGHTS",
    "FEATURE",
    "GROUPS",
    "IDX",
    "ItemFeatures",
    "ItemFeaturizer",
    "SEGMENTS_SCHEMA",
    "SEGMENT_ATTRIBUTES",
    "SideData",
    "TFIDF_GROUPS",
    "VAL",
    "VALUE",
    "VECTORS_DDL",
    "VOCAB_SCHEMA",
    "Weighting",
    "collaborative_vectors",
    "concat_vectors",
    "content_neighbors",
    "counted_ratings",
    "explain",
    "from_long",
    "item_documents",
    "knowledge_based",
    "lsh_content_neighbors",
    "normalize_tag",
    "profile_sums",
    "profile_vectors",
    "segment_prior",
    "sparse_topk",
    "term_signal",
    "to_long",
    "trend_prior",
    "update_profile_sums",
    "user_segments",
    "vectors_from",
]
