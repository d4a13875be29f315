# hocba-signer, slim and non-root. `docker compose up` builds it as hocba-signer:dev.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon daemon
COPY consumers consumers
COPY producers producers
RUN python -m venv /opt/hocba-signer/.venv \
    && /opt/hocba-signer/.venv/bin/pip install .

FROM python:3.11-slim-bookworm
# softhsm2: the development token (and softhsm2-util for `dev init`); p11-kit: a
# networked HSM reached through p11-kit-client; fonts: the sample PDFs of the demo.
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 p11-kit fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/hocba-signer \
       --create-home hocba-signer \
    && install -d -o hocba-signer -g hocba-signer -m 0750 /var/lib/hocba
COPY --from=build /opt/hocba-signer/.venv /opt/hocba-signer/.venv
ENV PATH=/opt/hocba-signer/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER hocba-signer:hocba-signer
WORKDIR /var/lib/hocba-signer
EXPOSE 9464
# /healthz is cheap (no dependency is touched); readiness is /readyz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["hocba-signer"]
CMD ["run"]
