"""A receiver served by uvicorn on a loopback socket, over the parametrized database, with one user."""

import time
from dataclasses import dataclass

import httpx
from sqlalchemy import Connection, Engine

from creditrelay.billing.accounts import NewUser, create_user, link_key
from creditrelay.schema.database import utc
from creditrelay.schema.signing import parse_secrets
from creditrelay.schema.transactions import run_transaction
from creditrelay.settings import Settings
from tests.support.database import Database
from tests.support.signing import OTHER_SECRET, SECRET, STANDARD_SECRET

OPENING = 1000


@dataclass
class Receiver:
    url: str
    client: httpx.Client
    user_id: int


def settings_for(database: Database) -> Settings:
    return Settings(database.url, parse_secrets(f"{SECRET} {OTHER_SECRET} {STANDARD_SECRET}"))


def add_user(engine: Engine, email: str = "alice@example.com", credits: int = OPENING, key: str = "1") -> int:
    def work(connection: Connection) -> int:
        user = create_user(connection, NewUser(email, opening_credits=credits), utc(time.time()))
        link_key(connection, key, user.id, utc(time.time()))
        return user.id

    return run_transaction(engine, work)
