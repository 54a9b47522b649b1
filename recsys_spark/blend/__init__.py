"""Ensembles of fitted models: the level-1 table, rating blends and top-N rank fusion.

Level 1.  Every member predicts the validation part from a fit on the
training part only, so a blender that learns from those predictions never
sees a rating its members trained on; the test part is predicted by members
refitted on train + valid, and the blender's weights, learned on valid, are
applied to those.  :func:`level1` joins the members' rating predictions on
``(user_idx, item_idx)`` into one wide row per pair: ``p_<model>`` (the
prediction), ``s_<model>`` (its ``source``) and context features computed
from the ratings the members were fitted on (:data:`CONTEXT`).

Rating blends (:data:`RATING_METHODS`), fitted on the validation level-1
table collected to the driver (``max_rows`` caps it, by a seeded hash of the
user so the sample is whole users), chosen by K-fold cross-validation over
validation users (never on test):

* ``mean`` / ``median`` of the members' predictions (no fit);
* ``nnls``: non-negative weights plus a free intercept (``scipy.optimize.nnls``
  on centred data);
* ``ridge``: unconstrained linear weights with an L2 penalty;
* ``fwls``: feature-weighted linear stacking (Sill et al. 2009): each member's
  weight is linear in the context features, i.e. ridge over
  ``p_m * [1, f_1 .. f_c]``;
* ``segment``: NNLS weights per user-activity segment (quartiles of the
  user's training ratings), the global NNLS weights where a segment has too
  few rows: weights that depend on who is asking;
* ``switch``: a switching hybrid.  Each row takes a route, in this order:
  ``cold item`` (the item has no rating in what the members were fitted
  on), ``light user`` / ``heavy user`` (below the first / from the third
  quartile of user activity), ``other``.  Each route holds a chain of
  members, ranked by their validation RMSE on that route's rows; the first
  member of the chain that answered the row itself (its ``source`` is its
  usual one, not a fallback) answers, and the row's ``source`` says which
  and why: ``switch:item_knn (light user; als fell back)``.

A member that did not predict some pairs of a part is counted, and
:func:`fill_missing` lets a complete member answer those rows (``source``
``missing->bias``), so no blend sees a NaN or drops a row.

Top-N fusion (:data:`TOPN_METHODS`): each member's top-k list on the same
users; ``rrf`` (reciprocal rank, ``sum_m 1 / (60 + rank_m)``) and ``borda``
(``sum_m (k + 1 - rank_m)``) over a member subset, chosen on validation by
greedy forward selection on NDCG@k (numpy, over a hash sample of users).
Every fused item records its ``contributors``: the members whose list held it.

The final recommendations (:mod:`.final`): the chosen top-N blend's lists
fused with each contributor's share, explained from evidence in the ratings,
and the cold-start path.

Modules: :mod:`.level1` (the table, missing rows), :mod:`.rating` (rating
blends and the switch), :mod:`.fusion` (top-N fusion and its choice),
:mod:`.final` (the final table).
"""

from recsys_spark.blend.fusion import RRF_K, TOPN_METHODS, _ndcg_np, _weight, fuse, select_fusion
from recsys_spark.blend.level1 import (
    CONTEXT,
    DAY,
    FALLBACK_ORDER,
    BlendError,
    _p,
    _s,
    context_tables,
    fill_missing,
    level1,
    missing_counts,
    sample_users,
)  # fmt: skip
from recsys_spark.blend.rating import (
    RATING_METHODS,
    ROUTES,
    RatingBlend,
    cv_rmse,
    fit_rating_blend,
    single_rmse,
    user_folds,
)  # fmt: skip

__all__ = [
    "CONTEXT", "DAY", "FALLBACK_ORDER", "RATING_METHODS", "ROUTES", "RRF_K", "TOPN_METHODS", "BlendError", "RatingBlend",
    "_ndcg_np", "_p", "_s", "_weight", "context_tables", "cv_rmse", "fill_missing", "fit_rating_blend", "fuse", "level1",
    "missing_counts", "sample_users", "select_fusion", "single_rmse", "user_folds",
]  # fmt: skip
