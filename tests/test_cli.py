import subprocess
import sys

from typer.testing import CliRunner

from regionclip_cli.cli.app import app

runner = CliRunner()


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("concepts", "pseudolabel", "pretrain", "finetune", "zeroshot", "ablate", "world"):
        assert command in result.output


def test_help_does_not_import_torch():
    code = "import sys; from regionclip_cli.cli import app; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_stages_not_built_yet_say_so_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "regionclip_cli", "finetune", "recipe.yaml"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "not built yet" in result.stderr and "Traceback" not in result.stderr


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("regionclip ")
