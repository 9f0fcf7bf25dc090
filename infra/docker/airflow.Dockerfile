# Airflow image for docker-compose.yml: the official image plus Java 17 (tasks spark-submit in client mode) and
# the project (DAG helpers, stage apps, the Spark provider and pyspark of the cluster's release).
# Build context: the repository root.
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

ARG AIRFLOW_VERSION=3.3.2
ARG SPARK_VERSION=4.1.3
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
# The jars of conf/jars.lock, sha256 checked (the tasks' Spark drivers run here): same files as the Spark image.
COPY conf/jars.lock /opt/speedprofile/conf/jars.lock
COPY infra/docker/install_jars.py /opt/speedprofile/install_jars.py
RUN python /opt/speedprofile/install_jars.py --lock /opt/speedprofile/conf/jars.lock --dest /opt/speedprofile/jars \
 && chown airflow:root /opt/speedprofile
USER airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/speedprofile/
COPY --chown=airflow:root speedprofile /opt/speedprofile/speedprofile
COPY --chown=airflow:root schemas /opt/speedprofile/schemas
COPY --chown=airflow:root spark_apps /opt/speedprofile/spark_apps
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/speedprofile \
 && pip install --no-cache-dir --no-deps --force-reinstall "pyspark==${SPARK_VERSION}"
ENV SPARK_CONF_DIR=/opt/spark-conf \
    SPEEDPROFILE_CACHE=/opt/speedprofile \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python
