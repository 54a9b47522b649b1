"""Refit the chosen blend's members on every rating; write the explained top-N of every user.

Reads the blend stage's choice (``blend/_manifest.json``) and the ingested tables, and
writes ``final/recommendations/bucket=<b>/``: ``user_idx, user_id, rank, item_idx,
item_id, title, score, contributors, explanation, source`` (see ``recsys_spark.blend.final``).
Users without ratings get the cold-start path.

Run it with::

    ./spark-submit.sh --master 'local[2]' final --config conf/local.toml

or in-process (local mode) with ``recsys-spark final --config conf/local.toml``; then
``recsys-spark recommend --user 1`` prints one user's list.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("final", argv)


if __name__ == "__main__":
    sys.exit(main())
