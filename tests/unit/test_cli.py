"""The command line's traps, each run as a real ``python -m metacart.cli`` process: one line on stderr,
exit code 2, the traceback only with ``--debug``. None of these needs a broker (the no-broker case points
at a closed local port)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metacart.console import finite, setting_variables, unknown_variables
from streams.settings import Settings
from tests.unit.policy.test_artifact import make_artifact

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("METACART_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "metacart.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=base | (env or {}), timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("metacart: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == "metacart 0.1.0", result


@pytest.mark.parametrize("args, option, choices", [
    (("publish-policy", "--artifact", "x", "--kind", "retnetion"), "--kind", "'ads', 'retention'"),
    (("publish-policy", "--artifact", "x", "--on-swap", "drop"), "--on-swap", "'keep', 'reset'"),
    (("train", "--out", "x", "--simulate", "--device", "gpu"), "--device", "'auto', 'cpu', 'cuda'"),
    (("simulate", "--segments", "some"), "--segments", "'heldout', 'train', 'all'"),
    (("broker", "begin"), "action", "'start', 'stop', 'status', 'restart'"),
])
def test_choices_are_validated(args, option, choices):
    assert_one_line_error(cli(*args), f"Invalid value for '{option}'", choices, f"metacart {args[0]} --help")


def test_unknown_command_and_missing_option():
    assert_one_line_error(cli("bench", "everything"), "No such command 'everything'")
    assert_one_line_error(cli("train", "--simulate"), "Missing option '--out'")


def test_train_needs_exactly_one_source_and_an_existing_file(tmp_path):
    assert_one_line_error(cli("train", "--out", str(tmp_path / "a")), "give exactly one of --logs PATH or --simulate")
    assert_one_line_error(cli("train", "--out", str(tmp_path / "a"), "--logs", str(tmp_path / "none.npz")),
                          "no logged-bandit file or v2 log directory at", "metacart logs --out FILE")
    assert_one_line_error(cli("train", "--kind", "retention", "--out", str(tmp_path / "r"), "--simulate"),
                          "--simulate is for --kind ads")


def test_debug_shows_the_traceback(tmp_path):
    result = cli("--debug", "train", "--out", str(tmp_path / "a"), "--logs", str(tmp_path / "none.npz"))
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "UserError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("metacart: error: no logged-bandit file")
    after = cli("train", "--out", str(tmp_path / "a"), "--logs", str(tmp_path / "none.npz"), "--debug")
    assert after.returncode == 2 and "Traceback" in after.stderr  # --debug after the subcommand works too


def test_publish_refuses_an_artifact_of_the_wrong_kind(tmp_path):
    ads = make_artifact().save(tmp_path / "ads")
    retention = tmp_path / "retention"
    retention.mkdir()
    (retention / "retention.json").write_text(json.dumps({"format": 1}))
    env = {"METACART_KAFKA__BOOTSTRAP": "127.0.0.1:1"}  # the check comes before any connection
    assert_one_line_error(cli("publish-policy", "--artifact", str(ads), "--kind", "retention", env=env),
                          "is an ads policy artifact, not a retention one", "--kind ads")
    assert_one_line_error(cli("publish-policy", "--artifact", str(retention), "--kind", "ads", env=env),
                          "is a retention artifact, not an ads one", "--kind retention")
    assert_one_line_error(cli("publish-policy", "--artifact", str(tmp_path / "none"), env=env), str(tmp_path / "none"))


def test_no_broker_fails_fast_in_one_line():
    env = {"METACART_KAFKA__BOOTSTRAP": "127.0.0.1:1", "METACART_BROKER_WAIT_S": "2",
           "METACART_PRIVACY__PSEUDONYM_KEY": "k" * 40}
    for args in (("worker",), ("simulate", "--duration-s", "1")):
        result = cli(*args, env=env, timeout=30)
        assert_one_line_error(result, "no Kafka broker answered at 127.0.0.1:1 within 2s", "metacart broker start")
        assert "Connection refused" not in result.stdout


def test_invalid_setting_is_one_line_naming_the_variable():
    result = cli("worker", env={"METACART_KAFKA__SEGMENT_PARTITIONS": "eight"})
    assert_one_line_error(result, "invalid setting METACART_KAFKA__SEGMENT_PARTITIONS", "'eight'")


def test_misspelt_variable_is_warned_about():
    result = cli("settings", env={"METACART_KAFKA_BOOTSTRAP": "10.0.0.1:9092"})
    assert result.returncode == 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("metacart: warning:")]
    assert warning == ["metacart: warning: METACART_KAFKA_BOOTSTRAP names no setting and is ignored "
                       "(did you mean METACART_KAFKA__BOOTSTRAP?); `metacart settings` lists them"]
    assert "METACART_KAFKA__BOOTSTRAP=127.0.0.1:9092" in result.stdout  # still the default: it was ignored


def test_every_setting_is_a_known_variable():
    known = setting_variables(Settings)
    assert {"METACART_KAFKA__BOOTSTRAP", "METACART_WEB_PORT", "METACART_RETENTION__ARTIFACT"} <= known
    env = {v: "1" for v in known} | {"METACART_BROKER_PORT": "9092", "PATH": "/bin"}
    assert unknown_variables(env, known) == []
    assert len(unknown_variables({"METACART_NOPE": "1"}, known)) == 1


def test_finite_makes_json_valid():
    value = finite({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf"), "e": 2}})
    assert json.dumps(value, allow_nan=False) == '{"a": null, "b": [1.0, null], "c": {"d": null, "e": 2}}'


def test_help_texts_name_the_choices():
    result = cli("publish-policy", "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    assert "ads" in result.stdout and "retention" in result.stdout and "keep" in result.stdout


def test_every_command_has_help_and_make_bench_names_a_real_command(capsys):
    import typer

    from metacart.cli import app, main

    group = typer.main.get_command(app)
    commands = [n for n in group.commands if n != "bench"] + [f"bench {n}" for n in group.commands["bench"].commands]
    assert "bench all" in commands and "status" in commands
    for command in commands:
        assert main([*command.split(), "--help"]) == 0, command
        assert "Usage: metacart " + command in " ".join(capsys.readouterr().out.split())
    makefile = (ROOT / "Makefile").read_text()
    for line in makefile.splitlines():
        if "bin/metacart " in line:
            invoked = line.split("bin/metacart ")[1].split(" ||")[0].split()
            words = list(itertools.takewhile(lambda w: not w.startswith("-"), invoked))
            assert " ".join(words) in commands, line
