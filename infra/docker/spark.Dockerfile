# Spark master/worker image for docker-compose.yml: Debian 12 + Java 17 + Python 3.11, like the Raspberry Pi
# nodes, with pyspark (its jars are the Spark release the daemons run) and the project installed, so executors'
# Python workers import the same stage code as the driver. Build context: the repository root.
FROM python:3.11-slim-bookworm

ARG SPARK_VERSION=4.1.3
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

# The jars of conf/jars.lock (Iceberg's Spark runtime, the catalog's JDBC drivers, hadoop-aws and the AWS SDK
# bundle) from Maven Central, sha256 checked: the files the Ansible spark role installs and the tests use.
COPY conf/jars.lock /opt/speedprofile/conf/jars.lock
COPY infra/docker/install_jars.py /opt/speedprofile/install_jars.py
RUN python /opt/speedprofile/install_jars.py --lock /opt/speedprofile/conf/jars.lock --dest /opt/speedprofile/jars

WORKDIR /src
COPY pyproject.toml README.md ./
COPY speedprofile ./speedprofile
COPY schemas ./schemas
COPY spark_apps ./spark_apps
# The project with its pinned dependencies, then pyspark itself last (the Spark provider's pyspark-client
# shares the pyspark/ folder; see scripts/bootstrap.sh).
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps --force-reinstall "pyspark==${SPARK_VERSION}" \
 && python -c "import pyspark, sys; assert pyspark.__version__ == '${SPARK_VERSION}', pyspark.__version__"

ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    SPARK_SCALA_VERSION=2.13 \
    SPARK_CONF_DIR=/opt/spark-conf \
    SPEEDPROFILE_CACHE=/opt/speedprofile \
    SPARK_NO_DAEMONIZE=1 \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python
RUN useradd --system --create-home --home-dir /opt/spark-work spark
USER spark
WORKDIR /opt/spark-work
