"""The alembic migrations build exactly the schema the models describe, on SQLite, MariaDB and PostgreSQL."""

import json
from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from creditrelay.schema.migrate import current_revision, downgrade, head_revision, is_current, upgrade
from creditrelay.schema.tables import metadata
from tests.support.database import Database


def test_migrated_schema_matches_the_models(database: Database) -> None:
    """After `migrate`, autogenerate finds nothing to change, and upgrading again is a no-op."""
    assert is_current(database.engine)
    upgrade(database.engine)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
    assert head_revision() is not None


def test_usage_records_index_swap_goes_down_and_up_again(database: Database) -> None:
    """0004 (usage records indexed by time, not by user; on MySQL the foreign key keeps an index of its
    own) can be undone and redone, and the result still matches the models."""
    downgrade(database.engine, "0003")
    assert current_revision(database.engine) == "0003"
    upgrade(database.engine)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        indexes = {ix["name"] for ix in sa.inspect(connection).get_indexes("usage_records")}
    assert "ix_usage_records_usedAt" in indexes
    assert "ix_usage_records_userId_createdAt" not in indexes


def test_unread_indexes_drop_goes_down_and_up_again(database: Database) -> None:
    """0005 (no index on usage_records.eventId or credit_transactions.createdAt: no query reads them) can be
    undone and redone, and the result still matches the models."""
    downgrade(database.engine, "0004")
    with database.engine.connect() as connection:
        inspector = sa.inspect(connection)
        assert "ix_usage_records_eventId" in {ix["name"] for ix in inspector.get_indexes("usage_records")}
        assert "ix_credit_transactions_createdAt" in {ix["name"] for ix in inspector.get_indexes("credit_transactions")}
    upgrade(database.engine)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        inspector = sa.inspect(connection)
        assert "ix_usage_records_eventId" not in {ix["name"] for ix in inspector.get_indexes("usage_records")}
        indexes = {ix["name"] for ix in inspector.get_indexes("credit_transactions")}
    assert "ix_credit_transactions_createdAt" not in indexes
    assert "ix_credit_transactions_userId_id" in indexes


def test_identifier_columns_go_to_a_binary_no_pad_collation_with_their_data(database: Database) -> None:
    """0006 on MySQL: tables made with PAD SPACE utf8mb4_bin, holding rows, move to the server's NO PAD
    binary collation; after it "e1 " is a new event id beside "e1". A no-op on SQLite."""
    downgrade(database.engine, "0005")
    database.execute(
        "INSERT INTO webhook_logs (eventId, eventType, payload, payloadHash, status, createdAt)"
        " VALUES ('e1', 'usage', '{}', 'h', 'processed', '2026-01-01 00:00:00')"
    )
    upgrade(database.engine)
    database.execute(
        "INSERT INTO webhook_logs (eventId, eventType, payload, payloadHash, status, createdAt)"
        " VALUES ('e1 ', 'usage', '{}', 'h', 'processed', '2026-01-01 00:00:00')"
    )
    assert database.count("webhook_logs") == 2
    if database.kind == "mysql":
        collations = {
            collation
            for (collation,) in database.rows(
                "SELECT DISTINCT COLLATION_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL AND TABLE_NAME <> 'alembic_version'"
            )
        }
        assert collations == {"utf8mb4_nopad_bin"}


def test_an_outbox_made_before_exact_ids_is_converted_when_opened(database: Database) -> None:
    """An outbox table created with PAD SPACE (before 0006's rule) is rebuilt by Outbox on open."""
    from creditrelay.sender.outbox import Outbox, metadata

    if database.kind != "mysql":
        pytest.skip("a MySQL collation")
    database.execute("DROP TABLE outbox_attempts")  # the ledger's own (alerts), put back below
    try:
        database.execute(
            "CREATE TABLE outbox_attempts (id BIGINT AUTO_INCREMENT PRIMARY KEY, eventId VARCHAR(64) NOT NULL)"
            " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )
        Outbox(database.engine)
        found = database.scalar(
            "SELECT TABLE_COLLATION FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'outbox_attempts'"
        )
        assert found == "utf8mb4_nopad_bin"
    finally:
        from creditrelay.schema.tables import outbox_attempts, outbox_events

        metadata.drop_all(database.engine)
        for table in (outbox_events, outbox_attempts):  # as the ledger's migrations made them
            table.create(database.engine)


def test_the_logs_gateway_keys_are_filled_in_from_their_payloads(database: Database) -> None:
    """0010 copies each stored usage's gateway key out of its payload, exactly as the receiver now writes it
    (an integer's digits, a string as it is, any characters), and leaves other events without one."""
    from creditrelay.billing.deliveries import _log_row
    from creditrelay.schema.wire import parse_event

    downgrade(database.engine, "0009")
    keys: list[object] = [7, 9223372036854775807, "k-a", 'quote"s and \\ back', "ключ 🔑", "0"]
    payloads = [
        json.dumps({"eventId": f"e{i}", "eventType": "usage", "timestamp": 1, "data": {"remoteKeyId": key,
                    "model": "m", "creditCost": 1}}, ensure_ascii=i % 2 == 0)
        for i, key in enumerate(keys)
    ] + ['{"eventId": "p", "eventType": "ping", "timestamp": 1}']  # fmt: skip
    for i, payload in enumerate(payloads):
        database.execute(
            "INSERT INTO webhook_logs (eventId, eventType, payload, payloadHash, status, createdAt)"
            " VALUES (:e, :t, :p, 'h', 'processed', '2026-01-01 00:00:00')",
            e=f"e{i}", t=json.loads(payload)["eventType"], p=payload,
        )  # fmt: skip
    upgrade(database.engine)
    stored = dict(database.rows("SELECT payload, remoteKeyId FROM webhook_logs"))
    expected = {p: _log_row(parse_event(p.encode()), datetime(2026, 1, 1), None)["remoteKeyId"] for p in payloads}
    assert stored == expected
    assert stored[payloads[-1]] is None
    indexes = {ix["name"] for ix in sa.inspect(database.engine).get_indexes("webhook_logs")}
    assert "ix_webhook_logs_remoteKeyId_status_id" in indexes


def test_credit_clients_made_before_rights_keep_every_right(database: Database) -> None:
    """0012 gives a client registered before rights existed every right it had: balance, all records,
    credit and debit."""
    downgrade(database.engine, "0011")
    database.execute(
        "INSERT INTO api_clients (source, apiKeyHash, apiKeyPrefix, secret, status, createdAt, updatedAt)"
        " VALUES ('old_bot', :h, 'crk_old', 's', 'active', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        h="0" * 64,
    )
    upgrade(database.engine)
    assert database.rows("SELECT source, rights FROM api_clients") == [
        ("old_bot", "balance,records,records:all,credit,debit")
    ]


def test_gateway_user_ids_become_text_and_a_shared_one_is_cleared(database: Database) -> None:
    """0014 keeps each user's numeric gateway user id as text, clears one several users held (it names
    nobody in particular), marks existing key links as the operator's, and goes down again."""
    downgrade(database.engine, "0013")
    for i, gateway_user in enumerate([42, 7, 7, None]):
        database.execute(
            "INSERT INTO users (email, balance, openPollUsages, gatewayUserId, createdAt, updatedAt)"
            " VALUES (:e, 0, 0, :g, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            e=f"u{i}@example.com", g=gateway_user,
        )  # fmt: skip
    user = database.scalar("SELECT id FROM users WHERE email = 'u0@example.com'")
    database.execute(
        "INSERT INTO api_keys (remoteKeyId, userId, openPollUsages, createdAt, updatedAt)"
        " VALUES ('5', :u, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        u=user,
    )
    upgrade(database.engine)
    assert database.rows("SELECT email, gatewayUserId FROM users ORDER BY email") == [
        ("u0@example.com", "42"), ("u1@example.com", None), ("u2@example.com", None), ("u3@example.com", None)
    ]  # fmt: skip
    assert database.rows("SELECT remoteKeyId, automatic FROM api_keys") in ([("5", False)], [("5", 0)])
    database.execute("UPDATE users SET gatewayUserId = 'litellm-user' WHERE email = 'u1@example.com'")
    downgrade(database.engine, "0013")
    assert database.rows("SELECT email, gatewayUserId FROM users WHERE gatewayUserId IS NOT NULL") == [
        ("u0@example.com", 42)
    ]
    upgrade(database.engine)
