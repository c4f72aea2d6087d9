# Postgres 15 with Patroni and its etcd client, for pg1 and pg2 of the HA
# topology (compose profile `ha`). The base image's PGDG apt source has both;
# curl is for the health check (Patroni's REST API).
FROM postgres:15
RUN apt-get update \
 && apt-get install -y --no-install-recommends patroni python3-etcd curl \
 && rm -rf /var/lib/apt/lists/*
