# The image cluster-side nbmagic code runs in: the Katib trial runner (`python -m nbmagic.tune.trial`) and
# KServe's transformer / custom predictor (`python -m nbmagic.serve.server`).
#   docker build -t REGISTRY/nbmagic:0.1.0 . && docker push REGISTRY/nbmagic:0.1.0
#   export NBMAGIC_IMAGE=REGISTRY/nbmagic:0.1.0
FROM python:3.11-slim
WORKDIR /opt/nbmagic
COPY pyproject.toml README.md ./
COPY nbmagic ./nbmagic
# s3, gcs: Katib trials record their runs in a shared run store (s3:// or gs://)
RUN pip install --no-cache-dir ".[examples,s3,gcs]" && python -c "import nbmagic.serve.server, nbmagic.tune.trial"
ENTRYPOINT []
