"""Shared set-up. Expensive things (a world, a concept pool, a finished pretraining run) are made
once per session and only read by the tests that take them; a test that changes files copies them
into its own tmp_path first."""

import contextlib
import io
import os
import sys

# One intra-op thread per process, set before torch is first imported (subprocesses inherit it).
# The tests' models are tiny, so a second thread gains little, and where the two cores are shared
# (another process, or the two DDP workers) two spinning OpenMP threads per process made steps
# 5-40x slower. OMP_NUM_THREADS=2 python -m pytest overrides it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from regionclip_cli.cli.app import main  # noqa: E402


def _run_in_process(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["regionclip", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    code = exit_info.value.code
    return (0 if code is None else code), out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def regionclip():
    """`regionclip ARGS...` in this process through the real entry point: (code, stdout, stderr).

    In-process spares each call the seconds a fresh interpreter spends importing torch and
    open_clip. Usable from fixtures of any scope (`cli`, per test, reads pytest's own capture).
    """
    return _run_in_process


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


@pytest.fixture(scope="session")
def world_concepts(tmp_path_factory):
    """The world's 20 category names as a concept pool embedded by world-tiny (a `concepts` file)."""
    from regionclip_cli.modeling.clip import load_clip
    from regionclip_cli.modeling.text import embed_names, save_text_embeddings
    from regionclip_cli.synthetic.categories import WORLD_CATEGORIES

    path = tmp_path_factory.mktemp("concept-pool") / "concepts.pt"
    clip = load_clip("world-tiny")
    names = [c.name for c in WORLD_CATEGORIES]
    templates = ["a photo of a {}."]
    embeddings = embed_names(clip, names, templates, cache_dir=path.parent / "cache", progress=False)
    save_text_embeddings(path, names, embeddings, clip, templates)
    return path
