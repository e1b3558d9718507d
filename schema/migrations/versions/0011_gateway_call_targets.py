"""a gateway call's target holds a LiteLLM key hash

``gateway_calls.target`` names what a call changed: ``token 17``, ``user 42``, and with
``GATEWAY_ENFORCEMENT=litellm`` ``key <the key's 64-character SHA-256>`` — 68 characters, past the 64 it
had. It is widened to 80 (the longest gateway key, 64, and a word before it).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_calls") as batch:
        batch.alter_column("target", existing_type=sa.String(length=64), type_=sa.String(length=80), nullable=False)


def downgrade() -> None:
    """Back to 64: fails on a database that holds a longer target (a LiteLLM key), as it should."""
    with op.batch_alter_table("gateway_calls") as batch:
        batch.alter_column("target", existing_type=sa.String(length=80), type_=sa.String(length=64), nullable=False)
