#!/usr/bin/env bash
# What `make test` needs besides Python: MariaDB and PostgreSQL answering on 127.0.0.1, Debian's chromium.
# Starts or installs only what is missing (quiet otherwise) and prints the database URLs it settled on as
# `export` lines on stdout, for `make` to source or a shell to `eval "$(scripts/test-services.sh)"`.
# A URL already set in the environment is kept as is and its server left alone (`skip` included).
set -euo pipefail
# the databases' name is this checkout's own, so that two checkouts testing at once on one server (a CI run
# beside a developer's) never drop each other's tables; the workers add _gw0, _gw1 to it
TEST_DATABASE="creditrelay_test_$(printf %s "$PWD" | sha1sum | cut -c1-8)"

say() { echo "test-services: $*" >&2; }

# Run as root: directly, through sudo, or not at all (the message says what to do by hand instead).
as_root() {
  local instead=$1
  shift
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "not root and no sudo: $instead"
    exit 1
  fi
}

apt_updated=no
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install $* yourself"
    exit 1
  fi
  say "installing $*"
  if [ "$apt_updated" = no ]; then
    as_root "install $* (apt-get install $*)" apt-get update -qq
    apt_updated=yes
  fi
  as_root "install $* (apt-get install $*)" \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

quoted() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# --- MariaDB ----------------------------------------------------------------------------------------------

mariadb_up() { mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1 || mariadb-admin -uroot -h127.0.0.1 ping >/dev/null 2>&1; }

start_mysql() {
  if ! mariadb_up; then
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
      apt_install mariadb-server mariadb-client
    fi
    say "starting MariaDB"
    local instead="start MariaDB (or set CREDITRELAY_TEST_MYSQL_URL)"
    as_root "$instead" sh -c 'mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true'
    as_root "$instead" start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    for _ in $(seq 1 60); do mariadb_up && break; sleep 1; done
    mariadb_up || { say "MariaDB did not start"; exit 1; }
  fi
  # root with an empty password over TCP, as on this kind of machine; otherwise a user of our own made over
  # the socket (a fresh Debian install lets root in through unix_socket only).
  if mariadb -uroot -h127.0.0.1 -e "SELECT 1" >/dev/null 2>&1; then
    mysql="mysql+pymysql://root@127.0.0.1:3306/$TEST_DATABASE"
    return
  fi
  if ! mariadb -ucreditrelay -pcreditrelay -h127.0.0.1 -e "SELECT 1" >/dev/null 2>&1; then
    as_root "create a MariaDB user creditrelay@127.0.0.1 (password creditrelay, all privileges)" \
      mariadb --protocol=socket -uroot -e "CREATE USER IF NOT EXISTS 'creditrelay'@'127.0.0.1' IDENTIFIED BY 'creditrelay';
        GRANT ALL PRIVILEGES ON *.* TO 'creditrelay'@'127.0.0.1'; FLUSH PRIVILEGES;"
  fi
  mysql="mysql+pymysql://creditrelay:creditrelay@127.0.0.1:3306/$TEST_DATABASE"
}

# --- PostgreSQL -------------------------------------------------------------------------------------------

PG_PASSWORD=creditrelay  # set for user postgres only where TCP trust is not configured

postgres_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
postgres_login() { PGPASSWORD=${1:-} psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "SELECT 1" >/dev/null 2>&1; }

start_postgres() {
  if ! postgres_up; then
    if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      apt_install postgresql
    fi
    local version
    # shellcheck disable=SC2012  # the entries are version numbers
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version"
    as_root "start PostgreSQL on 127.0.0.1:5432 (or set CREDITRELAY_TEST_POSTGRES_URL)" \
      pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do postgres_up && break; sleep 1; done
    postgres_up || { say "PostgreSQL did not start"; exit 1; }
  fi
  # trust on 127.0.0.1, as on this kind of machine; otherwise a password for postgres, set over the socket
  # (a fresh Debian install lets postgres in through peer authentication only).
  if postgres_login; then
    postgres="postgresql+psycopg://postgres@127.0.0.1:5432/$TEST_DATABASE"
    return
  fi
  if ! postgres_login "$PG_PASSWORD"; then
    as_root "give PostgreSQL's user postgres the password $PG_PASSWORD" \
      su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD '$PG_PASSWORD'\""
    postgres_login "$PG_PASSWORD" || { say "cannot log in to PostgreSQL as postgres over TCP"; exit 1; }
  fi
  postgres="postgresql+psycopg://postgres:$PG_PASSWORD@127.0.0.1:5432/$TEST_DATABASE"
}

# --- the admin pages' browser -----------------------------------------------------------------------------

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  apt_install chromium
fi

mysql=${CREDITRELAY_TEST_MYSQL_URL:-}
if [ -z "$mysql" ]; then start_mysql; fi
postgres=${CREDITRELAY_TEST_POSTGRES_URL:-}
if [ -z "$postgres" ]; then start_postgres; fi
# the backup tests run the clients deploy/backup.sh runs, whichever server they reach
if [ "$mysql" != skip ] && ! command -v mysqldump >/dev/null 2>&1 && ! command -v mariadb-dump >/dev/null 2>&1; then
  apt_install mariadb-client
fi
if [ "$postgres" != skip ] && { ! command -v pg_dump >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; }; then
  apt_install postgresql-client
fi
echo "export CREDITRELAY_TEST_MYSQL_URL=$(quoted "$mysql")"
echo "export CREDITRELAY_TEST_POSTGRES_URL=$(quoted "$postgres")"
