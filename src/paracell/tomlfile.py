"""Reading the TOML files users give (cost profiles, sweep specifications)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from paracell.errors import ParacellError


def read_toml(
    path: Path, error: type[ParacellError], what: str, hint: str
) -> dict[str, Any]:
    """Return the TOML document at ``path``; raise ``error`` naming the file.

    ``what`` names the kind of file in messages ("profile"). ``hint``
    describes a valid file, for the error on a file that is not UTF-8 text.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start})",
            hint=hint,
        ) from None
