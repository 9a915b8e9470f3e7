# The pipeline image. One image serves the three places code runs on Google
# Cloud: Vertex AI Pipelines runs every component in it (its command is set
# by the compiled pipeline), Vertex AI Training runs the Trainer in it (TFX
# sets the command), and Dataflow workers run the Beam steps in it (through
# the entrypoint below).
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/pipeline:TAG .
#   docker build --build-arg WITH_CUDA=0 ...   # CPU-only training, smaller

# Must equal apache-beam in requirements/lock.txt: the workers' boot program
# comes from the Beam SDK image of the same version.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam_sdk

FROM python:3.11-bookworm

# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT: without it Beam's boot creates a
# fresh venv that does not see /opt/venv's packages and runs the worker there.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1

WORKDIR /pipeline

# The pinned dependencies first, in their own layer, so that a code change
# does not reinstall them (install.sh below finds them satisfied).
COPY requirements/ requirements/
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install -q -r requirements/lock.txt

# The GPU build of the same TensorFlow (CUDA and cuDNN as wheels; Vertex AI
# provides the driver), for the training pool's accelerators.
ARG WITH_CUDA=1
RUN if [ "$WITH_CUDA" = 1 ]; then \
      /opt/venv/bin/python -m pip install -q \
        "$(sed -n 's/^tensorflow==/tensorflow[and-cuda]==/p' requirements/lock.txt)"; \
    fi

# Exactly what `make install` does: the --no-deps TFX packages, the tfx_bsl
# shim and this project (editable, so /pipeline is the code that runs).
COPY . .
RUN VENV=/opt/venv PYTHON=python3.11 bash scripts/install.sh

COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
