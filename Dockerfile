# TaskFlow's one image: `taskflow api|worker|projector|migrate` (see compose.yaml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only the packages: the build context also holds .venv/ and the local stack's .stack/.
COPY pyproject.toml ./
COPY api ./api
COPY cli ./cli
COPY events ./events
COPY migrations ./migrations
COPY projector ./projector
COPY worker ./worker
COPY scheduler ./scheduler
COPY notifier ./notifier
# The SDK: `taskflow submit` and `taskflow watch` use it.
COPY sdk/python ./sdk/python
RUN pip install . ./sdk/python \
    && useradd --system --uid 10001 --no-create-home taskflow

WORKDIR /
USER taskflow
EXPOSE 8000
ENTRYPOINT ["taskflow"]
CMD ["--help"]
