"""recsys-spark: PySpark jobs from raw rating logs to evaluated recommendations."""

__version__ = "0.1.0"
