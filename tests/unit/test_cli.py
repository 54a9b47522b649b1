"""The command line: bad configuration gives one clear line and exit code 2."""

import subprocess
import sys

from tests.conftest import ROOT


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "recsys_spark.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_config_typo_is_reported_without_a_stack_trace(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[split]\nsede = 1\n")
    res = run("split", "--config", str(p))
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, res.stderr
    assert "unknown key 'split.sede'" in errors[0] and str(p) in errors[0]
    assert "Traceback" not in res.stderr


def test_unknown_command():
    res = run("frobnicate")
    assert res.returncode == 2 and "usage: recsys-spark" in res.stderr
    assert res.stderr.startswith("recsys-spark: unknown command 'frobnicate'\n")
    assert "did you mean 'recommend'?" in run("recomend").stderr


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0 and "ingest" in res.stdout and "pipeline" in res.stdout


def test_every_stage_has_a_job_module_and_a_subcommand():
    from recsys_spark.cli import DESCRIPTIONS
    from recsys_spark.stages import STAGES

    for name, stage in STAGES.items():
        assert (ROOT / "jobs" / f"{name}.py").is_file(), name
        assert name in DESCRIPTIONS, name
        assert stage.help == DESCRIPTIONS[name], name
