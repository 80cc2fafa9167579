"""Search spaces: the bundled ones load and validate; every key and value is checked by the config
loader before a sweep launches; bad files are one-line errors naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from trixmed.config import load_config
from trixmed.errors import TrixmedError
from trixmed.tune.space import load_space

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "tune_spaces"


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path: Path, base=None) -> str:
    with pytest.raises(TrixmedError) as exc:
        space = load_space(path)
        space.check(base or load_config(None))
    return str(exc.value)


def test_the_paper_grid_is_the_papers_twelve_points_with_experts_following_k():
    space = load_space(SPACES / "paper_grid.yaml")
    configs = space.check(load_config(ROOT / "configs" / "mimic3_codes.yaml"))
    points = {(c.stratify.num_clusters, c.model.moe.top_n) for c in configs}
    assert points == {(k, n) for k in (4, 8, 16, 20) for n in (1, 2, 4)} and space.size == 12
    assert all(c.model.moe.num_experts == c.stratify.num_clusters for c in configs)


def test_lr_aux_samples_the_experts_lr_and_lambda_on_a_log_scale():
    space = load_space(SPACES / "lr_aux.yaml")
    assert set(space.sample) == {"experts.lr", "model.moe.aux_weight"} and space.num_samples == 8
    space.check(load_config(ROOT / "configs" / "mimic3_codes.yaml"))
    from ray.tune.search.sample import Float

    assert all(isinstance(v, Float) for v in space.param_space().values())


def test_demo_2x2_has_four_points_and_fits_the_demo_config():
    space = load_space(SPACES / "demo_2x2.yaml")
    assert space.size == 4 and len(space.check(load_config(ROOT / "configs" / "demo_cpu.yaml"))) == 4


def test_a_trial_config_gets_the_params_and_the_following_keys():
    space = load_space(SPACES / "paper_grid.yaml")
    cfg = space.apply(load_config(None), {"stratify.num_clusters": 16, "model.moe.top_n": 4})
    assert (cfg.stratify.num_clusters, cfg.model.moe.top_n, cfg.model.moe.num_experts) == (16, 4, 16)
    assert space.complete({"stratify.num_clusters": 16, "model.moe.top_n": 4, "other": 1}) == {
        "stratify.num_clusters": 16, "model.moe.top_n": 4, "model.moe.num_experts": 16}


def test_an_unknown_config_key_is_refused_before_launch(tmp_path):
    path = write(tmp_path, "grid:\n  model.moe.topn: [1, 2]\n")
    assert error(path) == f"{path}: model.moe.topn=1: model.moe.topn: unknown key (known: aux_weight, ep_size, " \
                          "num_experts, renormalize, router, top_n)"


def test_a_value_the_config_refuses_is_refused_before_launch(tmp_path):
    # top_n 4 with 2 experts: the third grid point is invalid, and it is named
    path = write(tmp_path, "grid:\n  model.moe.num_experts: [2]\n  model.moe.top_n: [1, 2, 4]\n")
    assert error(path) == f"{path}: model.moe.num_experts=2, model.moe.top_n=4: model.moe.top_n: must be in " \
                          "1..num_experts=2, got 4"


def test_a_value_of_another_type_is_refused_as_the_config_loader_refuses_it(tmp_path):
    path = write(tmp_path, "grid:\n  model.moe.top_n: [two]\n")
    assert error(path) == f"{path}: model.moe.top_n=two: model.moe.top_n: expected int, got 'two'"
    path = write(tmp_path, "grid:\n  seed.value: [1]\n")
    assert error(path) == f"{path}: seed.value=1: seed: expected int, got {{'value': 1}}"


def test_a_trial_config_is_a_new_config_and_the_base_is_left_as_it_was():
    base = load_config(None)
    before = copy.deepcopy(base)
    cfg = load_space(SPACES / "paper_grid.yaml").apply(base, {"stratify.num_clusters": 16, "model.moe.top_n": 4})
    assert base == before and cfg.model.moe.top_n == 4 and cfg.experts is base.experts


def test_a_sampled_range_is_checked_at_its_ends(tmp_path):
    path = write(tmp_path, "sample:\n  experts.lr: {uniform: [-1.0, 0.1]}\n")
    assert error(path) == f"{path}: experts.lr=-1.0: experts.lr: must be > 0, got -1.0"


@pytest.mark.parametrize("text, problem", [
    ("grid: [1, 2]\n", "grid: expected a mapping of dotted config keys, got [1, 2]"),
    ("grid:\n  seed: []\n", "grid.seed: expected a non-empty list of values, got []"),
    ("grid:\n  seed: [1]\nsample:\n  seed: {choice: [1, 2]}\n", "seed: set twice (grid, sample and follow keys must differ)"),
    ("sample:\n  experts.lr: {normal: [0, 1]}\n",
     "sample.experts.lr: expected one of {uniform: [...], loguniform: [...], choice: [...], randint: [...]}, "
     "got {'normal': [0, 1]}"),
    ("sample:\n  experts.lr: {loguniform: [0.0, 0.1]}\n", "sample.experts.lr.loguniform: low must be > 0, got 0.0"),
    ("sample:\n  experts.lr: {uniform: [0.1, 0.01]}\n",
     "sample.experts.lr.uniform: expected [low, high] with low < high, got [0.1, 0.01]"),
    ("grid:\n  seed: [1]\nfollow:\n  model.moe.num_experts: stratify.num_clusters\n",
     "follow.model.moe.num_experts: 'stratify.num_clusters' is not a grid or sample key of this space"),
    ("name: a/b\ngrid:\n  seed: [1]\n", "name: must be a plain directory name, got 'a/b'"),
    ("grid:\n  seed: [1]\nnum_samples: 0\n", "num_samples: must be an integer >= 1, got 0"),
    ("description: nothing\n", "varies nothing: give `grid` or `sample` keys"),
    ("grids:\n  seed: [1]\n", "grids: unknown key (known: description, follow, grid, name, num_samples, sample)"),
    ("grid: [\n", None),
])
def test_bad_space_files_are_one_line_errors(tmp_path, text, problem):
    path = write(tmp_path, text)
    message = error(path)
    assert "\n" not in message and message.startswith(f"{path}: ")
    if problem is not None:
        assert message == f"{path}: {problem}"
    else:
        assert message.startswith(f"{path}: not valid YAML: ")


def test_a_missing_space_file_is_named(tmp_path):
    assert error(tmp_path / "none.yaml") == f"{tmp_path / 'none.yaml'}: search space not found"
