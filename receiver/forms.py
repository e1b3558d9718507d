"""The console's forms, read before anything else is trusted: small, URL-encoded, no files.

Every form of ours is a handful of short fields sent as ``application/x-www-form-urlencoded``. Starlette's
own parser would take up to a thousand parts of up to a megabyte each (multipart uploads spooled to
memory or disk) before any check; here the body is read within ``FORM_LIMIT`` bytes and parsed with a cap
on its fields, anything else is refused, and the result is kept on the request for the guard and the
handler to share.
"""

from urllib.parse import parse_qsl

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from creditrelay.receiver.bodies import read_limited
from creditrelay.receiver.errors import ApiError

FORM_LIMIT = 16 * 1024  # bytes: the longest form of ours (a correction's reason) is far below
MAX_FIELDS = 32
FORM_TYPE = "application/x-www-form-urlencoded"


async def form_of(request: Request) -> FormData:
    """The request's form fields (read once); 413 past ``FORM_LIMIT``, 400 past ``MAX_FIELDS`` or when not
    UTF-8, 415 for anything but a URL-encoded form."""
    cached: FormData | None = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise ApiError(415, f"Forms are sent as {FORM_TYPE}")
    body = await read_limited(request, FORM_LIMIT)
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "A form's fields are percent-encoded UTF-8") from None
    except ValueError:
        raise ApiError(400, f"A form has at most {MAX_FIELDS} fields") from None
    fields: list[tuple[str, str | UploadFile]] = list(pairs)
    form = FormData(fields)
    request.state.form = form
    return form
