"""Register the final job's lists in MLflow as the champion pyfunc model, with a model card.

Writes ``<paths.output>/<dataset>/publish/model_card.md`` and a new version of the
registered model ``publish.model_name`` (default ``recsys-spark-<dataset>``) with the
alias ``publish.alias`` (``champion``).  Needs the final and evaluate outputs.

Run it with::

    ./spark-submit.sh --master 'local[2]' publish --config conf/local.toml

or in-process (local mode) with ``recsys-spark publish --config conf/local.toml``.
Serving and batch scoring: docs/deploy.md.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("publish", argv)


if __name__ == "__main__":
    sys.exit(main())
