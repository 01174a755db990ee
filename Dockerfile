# NovaEdge node image. The data plane needs nothing from the OS beyond Python;
# iproute2 is for the anycast address, bird2 can run beside it in the pod.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/novaedge
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY geodb ./geodb
COPY config ./config
# gcc only for the build: the C parts listed in setup.py (the hot per-request
# steps; without them the Python versions run, slower)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir -e . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["novaedge"]
CMD ["demo", "--listen", "0.0.0.0:8080"]
