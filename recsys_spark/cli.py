"""The ``recsys-spark`` command and the shared entry of every job module.

``recsys-spark STAGE [--config FILE] [--set key=value ...] [--force]`` runs one
stage in-process (local mode); ``jobs/STAGE.py`` runs the same code under
``spark-submit`` (see ``spark-submit.sh``).  Bad input and bad configuration
end with one clear ERROR line naming the file/row/key and exit code 2, not a
stack trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from recsys_spark.config import Config, ConfigError, load_config
from recsys_spark.logs import setup_logging

EXIT_BAD_INPUT = 2

DESCRIPTIONS = {
    "generate": "generate the synthetic MovieLens-shaped dataset as raw CSV",
    "ingest": "validate raw files into Parquet tables, id maps and a quarantine table",
    "split": "write train/valid/test (and sampled negatives) for the configured protocol",
    "neighbors": "write the kNN neighbour table (a, b, sim, support) of neighbors.model to Parquet",
    "predict": "fit models on the split; write their rating predictions and top-N on the valid and test parts",
    "blend": "learn on the validation part how to combine the models; write the blended test ratings and top-N",
    "final": "refit the chosen blend's members on every rating; write the explained top-N of every user (cold start included)",
    "recommend": "print one user's explained list from the final table (--user RAW_ID), or export all of it (--out FILE.csv)",
    "evaluate": "metrics of every model and the blend on the test part: Parquet, JSON, Markdown and an MLflow run",
    "publish": "register the final lists in MLflow as the champion pyfunc model (alias), with a model card",
    "report": "rebuild the evaluate stage's HTML dashboard from its outputs (no model is refit); --out FILE.html to write elsewhere; "
    "--suite: every registered model on the rating, top-N and cold-start protocols of each dataset, with intervals and Holm-adjusted tests",
    "pipeline": "run the stages the config needs, in the order of their inputs, skipping those that are up to date",
    "download": "download a MovieLens archive and verify its SHA-256 (needs a network)",
    "benchmark": "evaluate registered models on a fixed protocol (rating: ML-100K u1..u5, elsewhere one stratified split; topn; coldstart; "
    "nextitem: each user's latest rating, full ranking)",
    "tune": "Optuna search of a model's parameters (recsys_spark/conf/tuning/<model>.toml) on a validation part of ML-100K u1.base",
    "factorize": "fit a factorization model on the pipeline's split; write its factors (and NMF factor interpretation)",
    "export_features": "write the Parquet feature tables PyTorch jobs train on (interactions, negatives, item/user features, histories)",
    "train_torch": "train a deep model on the exported features (locally or with TorchDistributor) and score the test part in Spark",
    "checksum": "content checksums of every output table and result file of the configured run (--out FILE.json); "
    "--against FILE.json: compare with another run's and exit 1 on a difference",
    "content": "fit a content model on the pipeline's split; write item features, content neighbours, profiles, "
    "term signal, explained top-N",
}


def build_parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"recsys-spark {stage}", description=DESCRIPTIONS.get(stage))
    p.add_argument("--config", "-c", default=None, help="TOML config (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set split.seed=7 (repeatable)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="rerun even when the output is up to date")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging (with tracebacks of input errors)")
    if stage == "benchmark":
        p.add_argument("protocol", choices=["rating", "topn", "coldstart", "nextitem"])
        p.add_argument("--dataset", default="ml-100k", help="ml-100k, ml-latest-small, ml-1m, ml-25m, generated")
        p.add_argument("--models", default="bias", help="comma-separated registered model names")
        p.add_argument("--folds", default="1-5", help="rating protocol: folds, e.g. 1-5 or 1,3")
        p.add_argument("--k", type=int, default=10, help="topn, coldstart and nextitem protocols: list length")
        p.add_argument(
            "--slices", type=int, default=1, help="coldstart protocol: pool the new-user experiment over this many disjoint user slices"
        )
        p.add_argument("--out", default=None, help="write the JSON result here")
    if stage == "tune":
        p.add_argument("--model", required=True, help="registered model with a recsys_spark/conf/tuning/<model>.toml")
        p.add_argument("--trials", type=int, default=None, help="number of trials (default: the TOML's study.n_trials)")
        p.add_argument("--fold", type=int, default=1, help="ML-100K fold whose training part is tuned on")
        p.add_argument("--out", default=None, help="write the study (best parameters, every trial) as JSON here")
    if stage == "recommend":
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="the user's raw id, as in the ratings file")
        who.add_argument("--out", help="export every user's list to this CSV file")
        p.add_argument("--k", type=int, default=None, help="show the first K items (default: all of the list)")
    if stage == "report":
        p.add_argument(
            "--out", default=None,
            help="write the page here (default: <evaluate output>/dashboard.html); with --suite, the folder (default: <output>/suite)",
        )  # fmt: skip
        p.add_argument("--suite", action="store_true", help="run every model on every protocol it serves and report them all")
        p.add_argument("--datasets", default="ml-100k,ml-latest-small", help="--suite: comma-separated datasets")
        p.add_argument("--protocols", default="rating,topn,coldstart", help="--suite: rating, topn, coldstart, nextitem")
        p.add_argument("--models", default="all", help="--suite: all (every registered model), pipeline (models.names) or a list")
        p.add_argument("--folds", default="1-5", help="--suite: ML-100K rating folds")
        p.add_argument("--k", type=int, default=10, help="--suite: list length")
    if stage == "checksum":
        p.add_argument("--out", default=None, help="write the checksums as JSON here")
        p.add_argument("--against", default=None, help="another run's checksums (JSON from --out): list the differences, exit 1 on any")
        p.add_argument("--decimals", type=int, default=None, help="round floating-point values to this many places first (default: exact)")
        p.add_argument("--ignore", action="append", default=[], metavar="GLOB", help="leave out these relative paths (repeatable)")
    if stage == "predict":
        p.add_argument("--model", default=None, help="registered model (default: every model of models.names, in turn)")
    if stage == "factorize":
        p.add_argument("--model", default=None, help="registered factorization model (default: factorize.model)")
    if stage == "content":
        p.add_argument("--model", default=None, help="registered content model (default: content.model)")
    if stage == "train_torch":
        p.add_argument("--model", default=None, help="registered deep model (default: torch.model)")
    if stage == "download":
        p.add_argument("dataset", help="ml-100k, ml-1m, ml-latest-small, ml-25m or ml-32m")
        p.add_argument("--dest", default=None, help="directory (default: $RECSYS_DATA_DIR or ./data)")
    return p


def _run_stage(spark: Any, cfg: Config, stage: str, args: argparse.Namespace) -> Any:
    """One stage (or the pipeline); a stage that fits a model gets ``--model``, ``predict`` every model by default."""
    from recsys_spark import pipeline, stages

    if stage == "pipeline":
        return pipeline.run_pipeline(spark, cfg, force=args.force)
    declared = stages.STAGES[stage]
    model = getattr(args, "model", None)  # None: the stage's configured model
    if stage == "predict" and model is None:
        steps = [pipeline.Step(declared, m) for m in cfg.models.names]
        return {st.label: st.run(spark, cfg, force=args.force) for st in steps}
    return pipeline.Step(declared, model).run(spark, cfg, force=args.force)


def run_job(stage: str, argv: list[str] | None = None) -> int:
    """Parse arguments, load config, get the session, run one stage, stop. Returns the exit code."""
    args = build_parser(stage).parse_args(argv)
    log = setup_logging(stage, logging.DEBUG if args.verbose else logging.INFO)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return EXIT_BAD_INPUT
    if stage == "download":
        return _download(cfg, args, log)

    from recsys_spark.ingest import IngestError
    from recsys_spark.io.datasets import DataFormatError
    from recsys_spark.spark import get_spark

    try:
        preflight(cfg, stage)
    except (ConfigError, DataFormatError, FileNotFoundError, ValueError) as exc:
        log.error("%s failed: %s", stage, exc)
        return EXIT_BAD_INPUT
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"recsys-spark {stage}")
    try:
        if stage == "benchmark":
            return _benchmark(spark, args, log)
        if stage == "tune":
            return _tune(spark, cfg, args, log)
        if stage == "recommend":
            return _recommend(spark, cfg, args, log)
        if stage == "report":
            return _report(spark, cfg, args, log)
        if stage == "checksum":
            return _checksum(spark, cfg, args, log)
        _log_result(log, stage, _run_stage(spark, cfg, stage, args))
        return 0
    except (DataFormatError, IngestError, FileNotFoundError, ValueError) as exc:
        log.error("%s failed: %s", stage, exc)
        log.debug("traceback of the failure above", exc_info=True)  # shown with --verbose
        return EXIT_BAD_INPUT
    finally:
        spark.stop()


RAW_INPUT_STAGES = ("ingest", "pipeline")


def preflight(cfg: Config, stage: str) -> None:
    """What can be checked without Spark, checked before the session starts (a second, not 15).

    The dataset's settings and its local input files (existence, readability,
    header against the column mapping) for the stages that read raw input, and
    a working MLflow location for the stages that log to it.
    """
    from recsys_spark import tracking

    if stage in RAW_INPUT_STAGES and cfg.dataset.kind != "generated":
        from recsys_spark.io.datasets import dataset_spec
        from recsys_spark.io.precheck import check_inputs

        check_inputs(dataset_spec(cfg))
    tracking.check(cfg, stage)


def _log_result(log: logging.Logger, stage: str, result: Any) -> None:
    if isinstance(result, dict) and "counts" in result:
        state = "skipped (up to date)" if result.get("skipped") else f"finished in {result.get('wall_s')}s"
        log.info("%s %s; counts: %s", stage, state, result["counts"])
    elif isinstance(result, dict):
        for name, m in result.items():
            state = "skipped" if m.get("skipped") else f"{m.get('wall_s')}s"
            log.info("  %-10s %s", name, state)


def _benchmark(spark, args: argparse.Namespace, log: logging.Logger) -> int:
    from recsys_spark.benchmark import run_benchmark, summary_table, write_result

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = run_benchmark(
        spark, args.protocol, args.dataset, models, folds=args.folds, k=args.k,
        config=args.config, overrides=args.overrides, slices=args.slices,
    )  # fmt: skip
    write_result(result, args.out)
    log.info("%s on %s:\n%s", args.protocol, args.dataset, summary_table(result))
    if args.out:
        log.info("wrote %s", args.out)
    return 0


def _recommend(spark, cfg: Config, args: argparse.Namespace, log: logging.Logger) -> int:
    from recsys_spark.blend.final import contributors_text
    from recsys_spark.stages.final import read_final, user_rows

    if args.k is not None and args.k < 1:
        log.error("recommend: --k must be >= 1, got %d", args.k)
        return EXIT_BAD_INPUT
    if args.out:
        n = export_csv(spark, read_final(spark, cfg), args.out, contributors_text)
        log.info("wrote %d rows to %s", n, args.out)
        return 0
    try:
        rows = user_rows(spark, cfg, args.user, args.k).orderBy("rank").collect()  # one user's list
    except LookupError as exc:
        log.error("recommend: %s", exc.args[0])
        return EXIT_BAD_INPUT
    sys.stdout.write(format_list(args.user, rows) + "\n")
    return 0


def format_list(raw_id: str, rows: list[Any]) -> str:
    """One user's list as text: rank, title, score, contributors and the explanation on the next line."""
    if not rows:
        return f"user {raw_id}: no recommendations"
    head = f"user {raw_id}" + (" (no ratings yet: cold start)" if rows[0]["source"] == "cold_start" else "")
    lines = [head]
    for r in rows:
        by = ", ".join(f"{c['model']} {c['weight']:.2f}" for c in r["contributors"])
        lines.append(f"{r['rank']:>3}. {r['title'] or r['item_id']}  (item {r['item_id']}, score {r['score']:.4g}; {by})")
        lines.append(f"     {r['explanation']}")
    return "\n".join(lines)


def export_csv(spark: Any, table: Any, out: str, contributors_text: Any) -> int:
    """Every row of the final table as one CSV file (contributors as text), written through a temp folder."""
    import shutil
    import tempfile
    from pathlib import Path

    cols = [c for c in table.columns if c not in ("contributors", "bucket")]
    flat = table.select(*cols[:cols.index("explanation")], contributors_text().alias("contributors"), "explanation", "source")
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        flat.orderBy("user_idx", "rank").coalesce(1).write.mode("overwrite").option("header", True).csv(f"{tmp}/csv")
        (part,) = Path(tmp, "csv").glob("part-*.csv")
        shutil.move(str(part), dest)
    return spark.read.option("header", True).option("multiLine", True).csv(str(dest)).count()


def _report(spark, cfg: Config, args: argparse.Namespace, log: logging.Logger) -> int:
    import json

    if getattr(args, "suite", False):
        from recsys_spark.suite import run_suite

        payload = run_suite(
            spark, args.config, args.overrides, _csv(args.datasets), _csv(args.protocols), args.models,
            k=args.k, folds=args.folds, out=args.out, force=args.force,
        )  # fmt: skip
        return 1 if payload["failed"] else 0

    from recsys_spark.io import fs
    from recsys_spark.stages import layout
    from recsys_spark.stages.evaluate import DASHBOARD, dashboard_page

    root = layout.evaluate(cfg)
    if not fs.exists(spark, f"{root}/results.json"):
        raise FileNotFoundError(f"{root}/results.json not found: run the evaluate stage first (recsys-spark evaluate, or the pipeline)")
    payload = json.loads(fs.read_text(spark, f"{root}/results.json"))
    segments = [r.asDict() for r in spark.read.parquet(f"{root}/segments").collect()] if fs.exists(spark, f"{root}/segments") else []
    page = dashboard_page(spark, cfg, payload, segments)
    out = args.out or f"{root}/{DASHBOARD}"
    fs.write_text(spark, out, page)
    log.info("report: wrote %s (%d models, %d KB)", out, len(payload["models"]), len(page) // 1024)
    return 0


def _checksum(spark, cfg: Config, args: argparse.Namespace, log: logging.Logger) -> int:
    import json
    from pathlib import Path

    from recsys_spark.checksum import compare, output_checksums

    root = f"{cfg.paths.output}/{cfg.dataset_name}"
    sums = output_checksums(spark, root, args.decimals)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"root": root, "decimals": args.decimals, "outputs": sums}, indent=1, sort_keys=True) + "\n")
        log.info("checksum: wrote %d entries to %s", len(sums), args.out)
    if args.against:
        other = json.loads(Path(args.against).read_text())
        if other.get("decimals") != args.decimals:
            log.error("checksum: %s was made with decimals=%s, this run with %s", args.against, other.get("decimals"), args.decimals)
            return EXIT_BAD_INPUT
        diffs = compare(other["outputs"], sums, tuple(args.ignore))
        for d in diffs:
            log.error("checksum: differs: %s", d)
        log.info("checksum: %d entries compared with %s, %d differ", len(set(sums) | set(other["outputs"])), args.against, len(diffs))
        return 1 if diffs else 0
    return 0


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _tune(spark, cfg: Config, args: argparse.Namespace, log: logging.Logger) -> int:
    from recsys_spark.tuning import run_tune, write

    result = run_tune(spark, cfg, args.model, n_trials=args.trials, fold=args.fold)
    write(result, args.out)
    log.info("best %s %.4f with %s", result["metric"], result["best_value"], result["best_params"])
    return 0


def _download(cfg: Config, args: argparse.Namespace, log: logging.Logger) -> int:
    from recsys_spark.io.download import DownloadError, download

    try:
        path = download(args.dataset, args.dest or cfg.data_dir)
    except (DownloadError, KeyError) as exc:
        log.error("download failed: %s", exc)
        return EXIT_BAD_INPUT
    log.info("%s is ready at %s", args.dataset, path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages = list(DESCRIPTIONS)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in stages:
        width = max(map(len, stages))
        lines = [f"  {s.ljust(width)}  {DESCRIPTIONS[s]}" for s in stages]
        msg = "usage: recsys-spark COMMAND [--config FILE] [--set KEY=VALUE ...]\n\ncommands:\n" + "\n".join(lines)
        asked = bool(argv) and argv[0] in ("-h", "--help")
        if argv and not asked:
            import difflib

            close = difflib.get_close_matches(argv[0], stages, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msg = f"recsys-spark: unknown command '{argv[0]}'{hint}\n\n" + msg
        (sys.stdout if asked else sys.stderr).write(msg + "\n")
        return 0 if asked else EXIT_BAD_INPUT
    return run_job(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
