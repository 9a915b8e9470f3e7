"""Installs the captioning pipeline's packages and the `captioner` command.

Locally `make install` pins every dependency first (see requirements/) and
installs this package with --no-deps. Dataflow workers install it through
`--setup_file`, on top of an image that already has TensorFlow and Beam, so
install_requires names only what the Beam and training code imports directly.
"""

import setuptools

setuptools.setup(
    name="tfx-image-captioning",
    version="0.1.0",
    description="Train, evaluate and ship an image-captioning model with TFX.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(
        include=["captioner", "captioner.*", "components", "components.*",
                 "core", "core.*", "ingest", "ingest.*", "pipeline",
                 "pipeline.*", "serving", "serving.*", "trainer",
                 "trainer.*"]),
    install_requires=[
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "einops",
        "pillow",
        "pydantic>=2,<3",
        "pyyaml",
    ],
    entry_points={"console_scripts": ["captioner=captioner.cli:main"]},
)
