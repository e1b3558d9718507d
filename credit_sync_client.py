"""The credit API's Python SDK under the name the credit API's integration snippets import it by::

    from credit_sync_client import CreditSyncClient

It is ``creditrelay.sender.credit_sync_client``; this module only re-exports it, so that code written
against those snippets runs unchanged after ``pip install creditrelay``.
"""

from creditrelay.sender.credit_sync_client import (
    CreditSyncClient,
    CreditSyncError,
    Member,
    SyncResult,
    by_email,
    by_user_id,
)

__all__ = ["CreditSyncClient", "CreditSyncError", "Member", "SyncResult", "by_email", "by_user_id"]
