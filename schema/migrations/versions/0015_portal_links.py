"""members' portal links can be revoked: ``users.portalEpoch``

A portal link (``creditrelay portal link``) carries the epoch its user had when it was made; ``portal
revoke`` moves the epoch on, so every link made before stops working at once. Nothing else is stored per
link: a link is a signed, expiring token (``schema.portal_tokens``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("portalEpoch", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # in place: a batch would copy users, which others refer to
        op.execute('ALTER TABLE users DROP COLUMN "portalEpoch"')
        return
    op.drop_column("users", "portalEpoch")
