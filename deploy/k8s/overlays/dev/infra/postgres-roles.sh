#!/bin/sh
# Runs once, when PostgreSQL initialises its data directory (/docker-entrypoint-initdb.d): the
# services' login roles beside the owner (POSTGRES_USER, who alone runs migrations). Their rights
# come with every scoreboard-migrate (libs/common/src/common/db_access.py). Used by
# docker-compose.yml and the dev overlay. Passwords: SCOREBOARD_PG_<SERVICE>_PASSWORD.
set -eu
for svc in auth score broadcaster; do
  var="SCOREBOARD_PG_$(echo "$svc" | tr a-z A-Z)_PASSWORD"
  eval "password=\${$var:?$var is not set}"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="scoreboard_$svc" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
SQL
done
