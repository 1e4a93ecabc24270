#!/usr/bin/env bash
# The apache/kafka image's start (/etc/kafka/docker/run), with the SCRAM users formatted in first:
# KRaft stores SCRAM credentials in its metadata, and `kafka-storage format --add-scram` is the
# one way to have them before the broker first serves (nobody could authenticate to add them).
# Used by docker-compose.yml and the dev overlay's StatefulSet. Passwords come from the
# environment: SCRAM_PASSWORD_<USER> for each of the users below.
set -euo pipefail
. /etc/kafka/docker/bash-config

echo "===> Configuring ..."
/etc/kafka/docker/configure   # KAFKA_* variables -> /opt/kafka/config/server.properties

data="${KAFKA_LOG_DIRS%%,*}"
marker="$data/scoreboard-scram-users"
if [[ -f "$data/meta.properties" && ! -f "$marker" ]]; then
  # Formatted before SASL: no user could ever authenticate to it. Its topics are recreated by
  # scoreboard-topics; what it held was transient (PostgreSQL is the truth).
  echo "===> $data was formatted without SCRAM users: formatting it again"
  rm -rf "${data:?}"/*
fi

scram=()
for user in admin gateway score broadcaster integrator; do
  var="SCRAM_PASSWORD_${user^^}"
  scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=${!var:?$var is not set}]")
done
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$CLUSTER_ID" \
  -c /opt/kafka/config/server.properties "${scram[@]}"
touch "$marker"

# For the health check: a client config of the admin user, inside the container only.
umask 077
cat > /tmp/admin.properties <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${SCRAM_PASSWORD_ADMIN}";
PROPS

echo "===> Launching ..."
exec /etc/kafka/docker/launch
