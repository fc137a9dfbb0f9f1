"""The package list; everything else is in pyproject.toml.

The shipped recipes live in the top-level `recipes/` and install as `wsss_keras.recipes.shipped`
(pyproject.toml's `[tool.setuptools.package-dir]` maps the folder). pyproject.toml's
`packages.find` only lists packages it finds under their own names, so it cannot add that one;
finding the rest here keeps new subpackages of wsss_keras/ and export/wsss_deploy/ automatic.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(".", include=["wsss_keras", "wsss_keras.*"]),
        *find_packages("export", include=["wsss_deploy", "wsss_deploy.*"]),
        "wsss_keras.recipes.shipped",
    ],
)
