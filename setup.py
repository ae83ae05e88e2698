"""The package layout (the metadata lives in pyproject.toml).

The Hydra presets have one copy in git, the top-level ``configs/`` that researchers edit. ``package_dir`` maps the
package ``cod_train.configs`` onto that directory, so the sdist and the wheel carry them at ``cod_train/configs/``
(where :func:`cod_train.runs.app.config_dir` looks first); a source checkout (``pip install -e .``) reads
``configs/`` itself.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["cod_train*"]), "cod_train.configs"],
    package_dir={"cod_train.configs": "configs"},
    package_data={"cod_train.configs": ["**/*.yaml"]},
)
