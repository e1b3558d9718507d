"""`make run`: serve the receiver on 127.0.0.1:4000 on the embedded SQLite database, ready to try.

With no WEBHOOK_SECRET (environment or .env) a development secret is generated once and kept in
``data/dev-webhook-secret``. A demo user (demo@example.com, 1000 credits) owns gateway key 1, so the
printed curl example charges 15 credits, and a second run is a duplicate.
"""

import argparse
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from sqlalchemy import Connection
from starlette.config import Config

from creditrelay.billing.accounts import AccountError, NewUser, User, create_user, find_user, link_key, list_keys
from creditrelay.schema.database import make_engine, utc
from creditrelay.schema.migrate import upgrade
from creditrelay.schema.transactions import run_transaction
from creditrelay.settings import load_settings

SEED_PAYLOAD = (
    '{"eventId":"test-001","eventType":"usage","timestamp":1702900800,"data":{"remoteKeyId":1,'
    '"model":"gpt-4","promptTokens":100,"completionTokens":50,"totalTokens":150,"creditCost":15}}'
)


def dev_secret(data_dir: Path) -> str:
    path = data_dir / "dev-webhook-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def ensure_demo_user(connection: Connection) -> User:
    now = utc(time.time())
    try:
        user = find_user(connection, "demo@example.com")
    except AccountError:
        user = create_user(connection, NewUser("demo@example.com", "Demo", opening_credits=1000), now)
    if not list_keys(connection, remote_key_id="1"):  # a key 1 you linked to someone else stays theirs
        link_key(connection, "1", user.id, now)
    return user


def curl_example(secret: str, base_url: str) -> str:
    return f"""\
SECRET={shlex.quote(secret)}
PAYLOAD='{SEED_PAYLOAD}'
SIGNATURE=$(echo -n "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" -hex | cut -d' ' -f2)
curl -s -X POST {base_url}/api/webhooks/events \\
  -H "Content-Type: application/json" \\
  -H "X-Webhook-Signature: $SIGNATURE" \\
  -d "$PAYLOAD"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args()

    if "DATABASE_URL" not in os.environ and Config(Path(".env") if Path(".env").is_file() else None)(
        "DATABASE_URL", default=None
    ):  # a demo user is never made in the database .env names (maybe production's)
        served = args.data_dir / "creditrelay.db"
        print(f"note: make run serves {served}; the DATABASE_URL in .env is for `creditrelay serve`")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{args.data_dir / 'creditrelay.db'}")
    settings = load_settings()
    if not settings.webhook_secrets:
        os.environ["WEBHOOK_SECRET"] = dev_secret(args.data_dir)
        settings = load_settings()
    engine = make_engine(settings.database_url)
    upgrade(engine)
    user = run_transaction(engine, ensure_demo_user)
    engine.dispose()

    base_url = f"http://{args.host}:{args.port}"
    print(f"creditrelay (development) on {base_url}, database {settings.database_url.render_as_string()}")
    print(f"demo user {user.email} owns gateway key 1; webhook secret: {settings.webhook_secrets[0].text}")
    print("\nTry it (a second run answers duplicate):\n")
    print(curl_example(settings.webhook_secrets[0].text, base_url))
    sys.stdout.flush()
    creditrelay = str(Path(sys.executable).with_name("creditrelay"))
    os.execv(creditrelay, [creditrelay, "serve", "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
