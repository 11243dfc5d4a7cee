import sys

import pytest

from regionclip_cli.cli.app import main


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `regionclip ARGS...` in-process through the real entry point; returns (code, out, err)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["regionclip", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else code), captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """Eight synthetic-world images with boxes and captions, shared by the tests that need images."""
    from regionclip_cli.synthetic.world import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("small-world")
    generate_world(root, WorldConfig(num_images=8, seed=123), progress=False)
    return root
