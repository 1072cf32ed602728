# virnuc-hpc in a Docker image, installed with the versions CI tested (constraints.txt).
#   docker build -t virnuc-hpc .
#   docker run --gpus all -v /path/to/models:/models:ro -v "$PWD":/data -w /data virnuc-hpc \
#       predict reads.fastq.gz -o out --classifier 500 --expected-length 500
# The models directory (virnuc-hpc models fetch) is bind-mounted at /models: the image holds no model.
# Not built in CI (no container engine or registry there); tests/test_install_recipes.py checks that
# it installs from the same constraints file as CI and runs the virnuc-hpc entry point.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRNUC_HPC_MODELS=/models

WORKDIR /opt/virnuc-hpc
COPY constraints.txt pyproject.toml README.md LICENSE ./
COPY virnuc_hpc ./virnuc_hpc
# torch 2.13.0 from PyPI is its CUDA build (the host's driver comes in through --gpus)
RUN python -m pip install -c constraints.txt ".[gpu]" \
    && mkdir -p /models \
    && virnuc-hpc --version

VOLUME /models
WORKDIR /data
ENTRYPOINT ["virnuc-hpc"]
CMD ["--help"]
