"""PyTorch side of the bridge: Parquet loaders, networks, the training loop and Spark scoring.

Importing this package imports ``torch`` (the ``deep`` extra); the rest of
``recsys_spark`` does not need it.
"""
