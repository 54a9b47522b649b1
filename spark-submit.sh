#!/usr/bin/env bash
# Run a recsys-spark job with spark-submit, shipping the library with --py-files.
#
#   ./spark-submit.sh [spark-submit options] JOB [job options]
#
#   ./spark-submit.sh --master 'local[2]' pipeline --config conf/local.toml
#   ./spark-submit.sh --master 'local-cluster[2,1,1024]' ingest --config conf/local.toml
#   ./spark-submit.sh --master spark://host:7077 split --config conf/cluster.toml --set split.seed=7
#   ./spark-submit.sh --zip      only build the zip and print its path
#
# JOB is a module in jobs/ (jobs/JOB.py).  The library, with its package data
# (the tuned defaults in recsys_spark/conf/), is zipped into build/recsys_spark.zip
# on every call.  spark-submit comes from the pip-installed
# pyspark of $PYTHON (default: .venv/bin/python, else python3); executors use
# the same interpreter unless PYSPARK_PYTHON is set (on a cluster, point it at
# a shipped environment, see conf/cluster.toml).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then PYTHON="$here/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }  # the comment block above, to its first code line
zip_only=0
spark_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --zip) zip_only=1; shift ;;
    --verbose|--supervise|-v) spark_args+=("$1"); shift ;;
    --*=*) spark_args+=("$1"); shift ;;
    -*) [[ $# -ge 2 ]] || { echo "spark-submit.sh: option $1 needs a value" >&2; exit 2; }
        spark_args+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
if [[ $zip_only == 0 ]]; then
  [[ $# -ge 1 ]] || { usage >&2; exit 2; }
  job="$1"; shift
  job_file="$here/jobs/$job.py"
  if [[ ! -f "$job_file" ]]; then
    echo "spark-submit.sh: no job '$job'; jobs: $(cd "$here/jobs" && ls *.py | grep -v __init__ | sed 's/\.py$//' | tr '\n' ' ')" >&2
    exit 2
  fi
fi

mkdir -p "$here/build"
zip_file="$here/build/recsys_spark.zip"
"$PYTHON" - "$here" "$zip_file" <<'PY'
import os, pathlib, sys, zipfile
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tmp = out.with_suffix(f".zip.{os.getpid()}.tmp")  # concurrent calls each write their own, then rename
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    # the code and the package data it reads at run time (model defaults, search spaces)
    for f in sorted((root / "recsys_spark").rglob("*")):
        if f.is_file() and f.suffix in (".py", ".toml"):
            zf.write(f, f.relative_to(root))
tmp.replace(out)
PY
if [[ $zip_only == 1 ]]; then echo "$zip_file"; exit 0; fi

spark_home="$("$PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export SPARK_HOME="${SPARK_HOME:-$spark_home}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PYTHON}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYTHON}"
cd "$here"
exec "$SPARK_HOME/bin/spark-submit" ${spark_args[@]+"${spark_args[@]}"} \
  --py-files "$zip_file" \
  "$job_file" "$@"
