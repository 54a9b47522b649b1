"""Learned item-item models: EASE, RP3beta and SLIM (see :mod:`recsys_spark.itemitem.models`)."""

from recsys_spark.itemitem.models import EASE, SLIM, ItemItemModel, RP3beta

__all__ = ["EASE", "SLIM", "ItemItemModel", "RP3beta"]
