"""Packaging: the recipes ship from the top-level recipes/ folder inside a built wheel (issue #25
item 6), the wheel holds every module, and a source checkout on PYTHONPATH finds recipes/ in place.

The wheel is built from a copy of the files a build reads (no build isolation: the test venv's
setuptools, so no network), then read as a zip and imported from its extracted contents with
`python -S` (no site-packages, so the editable install cannot answer instead)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "recipes", "wsss_keras", "export")
# Loads a recipe with an `extends` chain (toco_doei_coco -> toco_coco -> toco_voc) and reports where.
LOAD = ("import json, wsss_keras.recipes as r; recipe = r.load_recipe('toco_doei_coco'); "
        "print(json.dumps({'dir': r.RECIPE_DIR, 'path': recipe['recipe']['path'], 'available': r.available(), "
        "'steps': recipe['train']['steps']}))")


def _shipped():
    return sorted(name for name in os.listdir(os.path.join(ROOT, "recipes")) if name.endswith(".toml"))


def _load_without_site(pythonpath, cwd):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, "-S", "-c", LOAD], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools (the dev extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in BUILD_INPUTS:
        origin = os.path.join(ROOT, name)
        if os.path.isdir(origin):
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            os.makedirs(source, exist_ok=True)
            shutil.copy2(origin, source / name)
    out = tmp / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", "-w", str(out),
         str(source)], check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("wsss_keras-*.whl")
    return path, source


def test_the_wheel_ships_every_recipe_inside_the_package(wheel, tmp_path):
    path, source = wheel
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    shipped = _shipped()
    assert len(shipped) >= 10 and "toco_voc.toml" in shipped
    missing = [name for name in shipped if f"wsss_keras/recipes/shipped/{name}" not in names]
    assert not missing, f"recipes missing from the wheel: {missing}"
    assert not any(name.startswith("recipes/") for name in names)  # no top-level `recipes` package
    # Every module of both packages is there too (setup.py finds the package list).
    modules = [
        os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/")
        for base, package in ((source, "wsss_keras"), (source / "export", "wsss_deploy"))
        for folder, _, files in os.walk(os.path.join(base, package)) for name in files if name.endswith(".py")
    ]
    assert "wsss_deploy/__init__.py" in modules and "wsss_keras/cli.py" in modules
    assert not [module for module in modules if module not in names]

    loaded = _load_without_site(str(tmp_path / "site"), cwd=str(tmp_path))
    installed = os.path.join(str(tmp_path / "site"), "wsss_keras", "recipes", "shipped")
    assert os.path.samefile(loaded["dir"], installed)
    assert os.path.samefile(loaded["path"], os.path.join(installed, "toco_doei_coco.toml"))
    assert loaded["available"] == [name[:-5] for name in shipped]
    assert loaded["steps"] > 0


def test_a_source_checkout_on_pythonpath_reads_the_top_level_folder(tmp_path):
    loaded = _load_without_site(ROOT, cwd=str(tmp_path))
    assert os.path.samefile(loaded["dir"], os.path.join(ROOT, "recipes"))
    assert os.path.samefile(loaded["path"], os.path.join(ROOT, "recipes", "toco_doei_coco.toml"))
    assert loaded["available"] == [name[:-5] for name in _shipped()]
