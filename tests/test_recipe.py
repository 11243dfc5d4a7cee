from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from regionclip_cli.engine.recipe import RecipeError, load_recipe, to_plain


@dataclass(frozen=True)
class Optim:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    steps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Toy:
    data: Path
    optimizer: Optim = field(default_factory=Optim)
    batch_size: int = 2
    resume: Optional[Path] = None
    amp: bool = False
    precision: Literal["auto", "off", "on"] = "auto"


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_valid_recipe_with_overrides(tmp_path):
    path = write(tmp_path, "data: imgs\noptimizer:\n  lr: 1e-3\n  steps: [10, 20]\n")
    recipe = load_recipe(Toy, path, ["optimizer.name=adamw", "batch_size=8", "amp=true"])
    assert recipe.data == Path("imgs") and recipe.optimizer == Optim("adamw", 0.001, [10, 20])
    assert recipe.batch_size == 8 and recipe.amp is True
    assert to_plain(recipe)["data"] == "imgs"


@pytest.mark.parametrize("text, overrides, message", [
    ("data: x\noptimiser: {}\n", [], "optimiser: unknown key; did you mean 'optimizer'"),
    ("data: x\noptimizer:\n  lrr: 1\n", [], "optimizer.lrr: unknown key; did you mean 'lr'"),
    ("data: x\nbatch_size: two\n", [], "batch_size: expected an integer, got 'two'"),
    ("data: x\noptimizer:\n  name: sdg\n", [], "did you mean 'sgd'"),
    ("batch_size: 2\n", [], "data: required key is missing"),
    ("data: x\n", ["optimizer.lr=fast"], "optimizer.lr: expected a number"),
    ("data: x\n", ["batch_size"], "expected KEY=VALUE"),
    ("data: [x\n", [], "r.yaml:2: not valid YAML"),
    ("data: x\noptimizer:\n  steps: [1, b]\n", [], r"optimizer.steps\[1\]: expected an integer"),
])
def test_errors_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(Toy, write(tmp_path, text), overrides)


def test_on_and_off_stay_words_where_the_schema_asks_for_words(tmp_path):
    """YAML 1.1 would read `off`/`on`/`yes`/`no` as booleans; recipes use YAML 1.2's true/false only."""
    recipe = load_recipe(Toy, write(tmp_path, "data: x\nprecision: off\n"))
    assert recipe.precision == "off"
    assert load_recipe(Toy, write(tmp_path, "data: x\n"), ["precision=on", "amp=True"]).precision == "on"
    with pytest.raises(RecipeError, match="amp: expected true/false, got 'yes'"):
        load_recipe(Toy, write(tmp_path, "data: x\namp: yes\n"))


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(Toy, tmp_path / "nope.yaml")
