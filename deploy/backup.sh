#!/usr/bin/env bash
# Back up the database of DATABASE_URL (read from .env in the working directory when not set) into
# BACKUP_DIR (default ./backups), keeping KEEP_DAYS days (default 7). SQLite: an online backup through
# SQLite's backup API (consistent while the receiver writes). MySQL/MariaDB: mysqldump --single-transaction.
# PostgreSQL: pg_dump (one snapshot), plain SQL, gzipped: restore with `gunzip -c FILE | psql -d NEWDB`.
set -euo pipefail
umask 077  # a dump holds the whole ledger: readable by its owner only
if [ -z "${DATABASE_URL:-}" ] && [ -f .env ]; then
  DATABASE_URL=$(grep -E '^DATABASE_URL=' .env | tail -n 1 | cut -d= -f2-)
fi
url="${DATABASE_URL:-sqlite:///data/creditrelay.db}"
dir="${BACKUP_DIR:-backups}"
keep="${KEEP_DAYS:-7}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dir"
chmod 700 "$dir"
python="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[ -x "$python" ] || python=python3

# user, password, host, port and database of $url, with the server's usual user and port where it names none
url_parts() {
  mapfile -t parts < <("$python" - "$url" "$1" "$2" <<'PY'
import sys
from sqlalchemy.engine import make_url
u = make_url(sys.argv[1])
print(u.username or sys.argv[2], u.password or "", u.host or "127.0.0.1", u.port or sys.argv[3], u.database, sep="\n")
PY
)
  user=${parts[0]} password=${parts[1]} host=${parts[2]} port=${parts[3]} database=${parts[4]}
}

case "$url" in
  sqlite:*)
    source_db="${url#sqlite:///}"
    target="$dir/creditrelay-$stamp.db"
    "$python" - "$source_db" "$target" <<'PY'
import sqlite3, sys
source, target = sys.argv[1], sys.argv[2]
with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
    src.backup(dst)
PY
    ;;
  mysql*)
    url_parts root 3306
    target="$dir/creditrelay-$stamp.sql.gz"
    dump=$(command -v mysqldump || command -v mariadb-dump)
    MYSQL_PWD="$password" "$dump" --single-transaction --quick --routines -h "$host" -P "$port" -u "$user" "$database" \
      | gzip > "$target"
    ;;
  postgresql*)
    url_parts postgres 5432
    target="$dir/creditrelay-$stamp.sql.gz"
    PGPASSWORD="$password" pg_dump --no-owner --no-privileges -h "$host" -p "$port" -U "$user" "$database" | gzip > "$target"
    ;;
  *) echo "backup.sh: unsupported DATABASE_URL" >&2; exit 2 ;;
esac
find "$dir" -name 'creditrelay-*' -type f -mtime +"$keep" -delete
echo "$target"
