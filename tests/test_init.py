"""`coxp init` (proxy/init.py): every preset passes `coxp check`, stdout without -o, an existing
file is never overwritten without --force, unknown presets name the known ones."""
from __future__ import annotations

import pytest

from harness import REPO, run_cli

PRESETS = ["local-dev", "legacy-api", "staging-hardening"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_is_a_commented_config_check_accepts(tmp_path, preset):
    result = run_cli("init", "--preset", preset, "-o", "coxp.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "coxp.toml").read_text()
    assert sum(line.startswith("#") for line in text.splitlines()) >= 5  # it explains itself
    check = run_cli("check", "-c", "coxp.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "Traceback" not in check.stderr


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_is_the_example_config_of_the_same_name(preset):
    result = run_cli("init", "--preset", preset)
    assert result.stdout.encode() == (REPO / "config" / f"{preset}.toml").read_bytes()


def test_without_preset_or_output_prints_local_dev_on_stdout(tmp_path):
    result = run_cli("init", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == run_cli("init", "--preset", "local-dev").stdout
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_without_force(tmp_path):
    target = tmp_path / "coxp.toml"
    target.write_text("# mine\n")
    result = run_cli("init", "--preset", "legacy-api", "-o", "coxp.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "coxp init: coxp.toml exists; add --force to overwrite it\n"
    assert target.read_text() == "# mine\n"


def test_force_overwrites_the_file(tmp_path):
    target = tmp_path / "coxp.toml"
    target.write_text("# mine\n")
    result = run_cli("init", "--preset", "legacy-api", "-o", "coxp.toml", "--force", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == (REPO / "config" / "legacy-api.toml").read_bytes()


def test_force_without_output_changes_nothing(tmp_path):
    (tmp_path / "coxp.toml").write_text("# mine\n")
    result = run_cli("init", "--force", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == run_cli("init").stdout
    assert [p.name for p in tmp_path.iterdir()] == ["coxp.toml"]
    assert (tmp_path / "coxp.toml").read_text() == "# mine\n"


def test_unknown_preset_exits_2_naming_the_presets(tmp_path):
    result = run_cli("init", "--preset", "nginx", "-o", "coxp.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert all(name in result.stderr for name in PRESETS), result.stderr
    assert not (tmp_path / "coxp.toml").exists()


def test_an_unwritable_output_is_a_one_line_error(tmp_path):
    result = run_cli("init", "-o", "no/such/dir/coxp.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("coxp init: cannot write no/such/dir/coxp.toml: ")
    assert result.stderr.count("\n") == 1


def test_a_directory_as_output_is_a_one_line_error(tmp_path):
    (tmp_path / "conf").mkdir()
    for flags in ([], ["--force"]):
        result = run_cli("init", "-o", "conf", *flags, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr == "coxp init: conf is a directory; give the path of the file to write\n"


def test_a_symlink_is_never_followed_without_force(tmp_path):
    """Even a dangling link is an existing name: its target is not created or written."""
    (tmp_path / "coxp.toml").symlink_to(tmp_path / "elsewhere.toml")
    result = run_cli("init", "-o", "coxp.toml", cwd=tmp_path)
    assert result.returncode == 1 and "exists" in result.stderr
    assert not (tmp_path / "elsewhere.toml").exists()
