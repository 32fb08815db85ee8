"""Packaging for autoqnn: `pip install -e .[test]` installs everything the tests need."""

from setuptools import find_packages, setup

setup(
    name="autoqnn",
    version="0.1.0",
    description="Automatic neural-network quantization for Keras 3: schemes, QAG rewriter, "
    "PTQ tuner and TFLite export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["autoqnn", "autoqnn.*"]),
    package_data={"autoqnn.resources": ["*.npz"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "numpy",
        "scipy",
        "xgboost",
        "ai-edge-litert",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "ruff", "matplotlib", "keras-hub",
                 "ray", "nbformat", "nbclient", "ipykernel"],
        "notebooks": ["matplotlib", "jupyter", "nbformat", "nbclient", "ipykernel"],
        "bench": ["matplotlib", "hgq2"],
        "distributed": ["ray"],
        "peers": ["ai-edge-quantizer>=0.10"],
    },
    entry_points={"console_scripts": ["autoqnn=autoqnn.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
