"""`regionclip demo --quick`: every stage runs, the table and pictures come out, a rerun skips all."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from regionclip_cli.stages.demo.plan import DemoConfig, demo_steps


def test_demo_steps_are_the_pipeline_in_order(tmp_path):
    steps = demo_steps(DemoConfig(out=tmp_path, quick=True))
    commands = [step.argv[0] if step.argv[0] != "world" else "world " + step.argv[1] for step in steps]
    assert commands == ["world generate", "world generate", "rpn", "concepts", "pseudolabel", "pretrain",
                        "zeroshot", "zeroshot"]
    rpn, pseudolabel = steps[2], steps[4]
    assert str(rpn.done) in pseudolabel.argv  # the teacher labels the RPN's regions
    assert all(step.command.startswith("regionclip ") for step in steps)
    # the student is evaluated on the teacher's images, boxes and prompts: only the weights differ
    teacher, student = steps[-2].argv, steps[-1].argv
    assert set(student) - set(teacher) == {"--weights", str(tmp_path / "pretrain" / "student.pt"),
                                            str(tmp_path / "zeroshot-student")}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    import sys

    from regionclip_cli.cli.app import main

    out = tmp_path_factory.mktemp("demo") / "run"
    argv = sys.argv
    sys.argv = ["regionclip", "demo", "--quick", "--out", str(out), "--device", "cpu"]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    return out, exit_info.value.code


def test_quick_demo_runs_every_step_and_compares(quick_demo, capsys):
    out, code = quick_demo
    assert code in (0, None)
    for name in ("zeroshot-teacher", "zeroshot-student"):
        summary = json.loads((out / name / "metrics.json").read_text())
        accuracy = summary["region_accuracy"]
        assert accuracy["counts"]["all"]["total"] > 0
        assert 0 <= accuracy["top1"]["all"] <= 100
        assert accuracy["chance"] == pytest.approx(5.0)
    pictures = sorted((out / "compare").glob("*.png"))
    assert pictures
    with Image.open(pictures[0]) as picture:  # two panels side by side
        with Image.open(sorted((out / "eval" / "images").iterdir())[0]) as original:
            assert picture.width > 2 * original.width


def test_demo_rerun_skips_finished_steps(quick_demo, cli):
    out, _ = quick_demo
    code, stdout, stderr = cli("demo", "--quick", "--out", out, "--device", "cpu")
    assert code == 0
    assert stderr.count("skipped") == 8
    assert "0 steps run, 8 skipped" in stdout
    assert "teacher" in stdout and "student" in stdout and "chance" in stdout
