"""Maps the three package roots: src/freshrec, components/ and pipelines/."""

from setuptools import find_packages, setup

ROOTS = {"freshrec": "src/freshrec", "freshrec.components": "components", "freshrec.pipelines": "pipelines"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, path in ROOTS.items():
    package_dir[name] = path
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(path))]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"freshrec": ["datasets/*.yaml", "py.typed"], "freshrec.pipelines": ["*/*.yaml"]},
    include_package_data=True,
)
