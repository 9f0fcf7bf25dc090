#!/bin/bash
# Entry point of the Spark and Airflow containers of docker-compose.yml: builds a private SPARK_CONF_DIR (mode
# 0700) from the mounted spark-defaults.conf plus the cluster's RPC secret ($SPARK_AUTH_SECRET), writes the
# pipeline's S3 key pair ($S3_ACCESS_KEY, $S3_SECRET_KEY) into the AWS shared-credentials file
# $AWS_SHARED_CREDENTIALS_FILE, makes a Java trust store holding the JDK's CAs and the MinIO CA and the same as a
# PEM bundle (SSL_CERT_FILE), then runs the container's command. The secrets go into files of mode 0600 (never
# onto a command line: printf is a shell builtin) and are removed from the environment the command sees, so the
# daemons' children (executors, Python workers) inherit none of them.
set -euo pipefail
: "${SPARK_AUTH_SECRET:?SPARK_AUTH_SECRET is not set (copy infra/docker/example.env to .env)}"
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY is not set (copy infra/docker/example.env to .env)}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY is not set (copy infra/docker/example.env to .env)}"
creds=${AWS_SHARED_CREDENTIALS_FILE:?AWS_SHARED_CREDENTIALS_FILE is not set}
src=${SPEEDPROFILE_SPARK_DEFAULTS:-/opt/speedprofile/spark-defaults.conf}
conf=${SPARK_CONF_DIR:?SPARK_CONF_DIR is not set}
ca=${SPEEDPROFILE_MINIO_CA:-/certs/client/CAs/ca.crt}
umask 077
mkdir -p "$conf"
chmod 700 "$conf"
{
  cat "$src"
  printf '\n# RPC secret of the cluster (from SPARK_AUTH_SECRET)\nspark.authenticate.secret %s\n' "$SPARK_AUTH_SECRET"
} > "$conf/spark-defaults.conf.tmp"
mv "$conf/spark-defaults.conf.tmp" "$conf/spark-defaults.conf"
mkdir -p "$(dirname "$creds")"
printf '[%s]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "${AWS_PROFILE:-default}" "$S3_ACCESS_KEY" \
  "$S3_SECRET_KEY" > "$creds.tmp"
mv "$creds.tmp" "$creds"
if [ -f "$ca" ]; then
  # The trust store holds public certificates only; its password guards nothing secret.
  store="$conf/truststore.p12" pass=speedprofile-truststore
  java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
  rm -f "$store"
  keytool -importkeystore -noprompt -srckeystore "$java_home/lib/security/cacerts" -srcstorepass changeit \
    -destkeystore "$store" -deststoretype PKCS12 -deststorepass "$pass" >/dev/null 2>&1
  keytool -importcert -noprompt -alias speedprofile-minio-ca -file "$ca" -keystore "$store" \
    -storetype PKCS12 -storepass "$pass" >/dev/null
  export JAVA_TOOL_OPTIONS="${JAVA_TOOL_OPTIONS:-} -Djavax.net.ssl.trustStore=$store -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=$pass"
  # Python's S3 client (pyarrow in speedprofile.storage: gates, CLI verbs) reads OpenSSL's SSL_CERT_FILE.
  cat /etc/ssl/certs/ca-certificates.crt "$ca" > "$conf/ca-bundle.pem" 2>/dev/null || cp "$ca" "$conf/ca-bundle.pem"
  export SSL_CERT_FILE="$conf/ca-bundle.pem"
fi
unset SPARK_AUTH_SECRET S3_ACCESS_KEY S3_SECRET_KEY
exec "$@"
