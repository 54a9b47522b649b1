"""Split the ingested ratings into persisted train/valid/test parts (and sampled negatives).

Run it with::

    ./spark-submit.sh --master 'local[2]' split --config conf/local.toml --set split.protocol=leave_last_out --set split.n_negatives=99

or in-process (local mode) with ``recsys-spark split --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("split", argv)


if __name__ == "__main__":
    sys.exit(main())
