"""spark-submit entry points, one per stage (thin: all logic is in recsys_spark)."""
