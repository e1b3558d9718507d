"""creditrelay: charge prepaid credits from an AI gateway's signed usage events, exactly once.

One import namespace over the project's folders, so nothing of ours installs under a generic top-level
name: ``creditrelay.schema`` (tables, wire formats, database), ``creditrelay.billing`` (the ledger's
rules), ``creditrelay.receiver`` (the HTTP service), ``creditrelay.sender`` (signing, delivery, outbox),
``creditrelay.cli`` (the command line).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("creditrelay")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
