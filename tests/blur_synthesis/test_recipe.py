"""Recipes: built-ins load, hashes are stable content hashes, and bad recipes fail with one clear line."""

import pytest
import yaml

from deblurdiff.blur_synthesis import Recipe, RecipeError, builtin_recipes, load_recipe
from deblurdiff.errors import UsageError


def test_builtins_load_with_stable_names_and_hashes():
    assert {"realistic", "clean-motion", "defocus", "diffbir"} <= set(builtin_recipes())
    hashes = set()
    for name in builtin_recipes():
        r = load_recipe(name)
        assert r.name == name and len(r.hash) == 64
        hashes.add(r.hash)
    assert len(hashes) == len(builtin_recipes())
    assert load_recipe().name == "realistic"  # the default


def test_hash_is_a_content_hash(tmp_path):
    data = load_recipe("realistic").to_dict()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(data, sort_keys=True))
    b.write_text("# reformatted, reordered, commented\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=True))
    assert load_recipe(a).hash == load_recipe(b).hash == load_recipe("realistic").hash
    data["jpeg"]["quality"] = [50, 95]
    a.write_text(yaml.safe_dump(data))
    assert load_recipe(a).hash != load_recipe("realistic").hash


def test_name_defaults_to_the_file_stem(tmp_path):
    p = tmp_path / "my-blur.yaml"
    p.write_text("blur:\n  families: {gaussian: 1}\n")
    r = load_recipe(p)
    assert r.name == "my-blur" and r.noise.prob == 0 and r.jpeg.prob == 0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("blur:\n  families: {gaussian: 1}\n  gaussain: {sigma: [1, 2]}\n", r"blur\.gaussain: unknown key"),
        ("blur:\n  families: {gaussian: 1}\njpeg: {prob: 1.5}\n", r"jpeg\.prob: .*less than or equal to 1"),
        ("blur:\n  families: {gaussian: 1}\nnoise: {prob: -0.1}\n", r"noise\.prob: .*greater than or equal to 0"),
        ("blur:\n  families: {gaussian: 1}\n  gaussian: {sigma: [3, 1]}\n", r"blur\.gaussian\.sigma: expected \[low, high\] with low <= high"),
        ("blur:\n  families: {trajectory: 1}\n  trajectory: {size: [15, 301]}\n", r"blur\.trajectory\.size: expected PSF sizes within \[3, 255\]"),
        ("blur:\n  families: {gaussian: 0}\n", r"blur\.families: expected at least one family with a positive weight"),
        ("jpeg: {prob: 1}\n", r"blur: required key is missing"),
        ("blur:\n  families: {gaussian: 1}\njpeg: {prob: 1, quality: [0, 90]}\n", r"jpeg\.quality: expected \[low, high\] within \[1, 100\]"),
        ("blur:\n  families: {gaussian: 1}\nnoise: {read: sometimes}\n", r"noise\.read: expected 'brooks2019' or a read-noise std range"),
        ("blur:\n  families: {gaussian: 1}\nnoise: {read: [0.02, 0.01]}\n", r"noise\.read: expected \[low, high\] with low <= high"),
        ("blur:\n  families: {gaussian: 1}\nnoise: {shot: [-1, 0.1]}\n", r"noise\.shot: expected values >= 0"),
        ("blur:\n  families: {gaussian: 1}\n  spatially_varying: {regions: [1, 2]}\n", r"blur\.spatially_varying\.regions: expected \[low, high\] within \[2, 8\]"),
        ("blur: [1, 2\n", r"not valid YAML"),
        ("- just\n- a list\n", r"expected a mapping of stages"),
    ],
)
def test_bad_recipes_fail_with_one_line_naming_file_and_field(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p))


def test_unknown_name_and_missing_file():
    with pytest.raises(RecipeError, match=r"recipe 'realstic': unknown name; built-ins are .*realistic"):
        load_recipe("realstic")
    with pytest.raises(RecipeError, match=r"recipe /no/such/recipe\.yaml: no such file"):
        load_recipe("/no/such/recipe.yaml")


def test_recipe_error_is_a_usage_error_and_a_value_error():
    # the CLI turns UsageError into one line + exit 2; library users can catch ValueError
    assert issubclass(RecipeError, UsageError) and issubclass(RecipeError, ValueError)


def test_from_dict_and_round_trip():
    r = load_recipe("defocus")
    again = Recipe.from_dict(r.to_dict())
    assert again == r and again.hash == r.hash
