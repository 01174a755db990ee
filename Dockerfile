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
RUN pip install --no-cache-dir -e .
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["novaedge"]
CMD ["demo", "--listen", "0.0.0.0:8080"]
