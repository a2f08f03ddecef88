"""What every configuration model shares: the strict base and the error messages.

>>> from pydantic import ValidationError
>>> class M(StrictModel):
...     port: int
>>> try:
...     M.model_validate({"port": "x", "prot": 1})
... except ValidationError as err:
...     print("\\n".join(error_lines(err, "metrics")))
metrics.port: Input should be a valid integer, unable to parse string as an integer (got 'x')
metrics.prot: unknown key (not allowed here; check the spelling) (got 1)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["StrictModel", "error_lines", "is_secret_key", "location"]

_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


def is_secret_key(name: str) -> bool:
    """Whether an option name (``sasl.password``, ``ssl.key.pem``...) holds a secret.

    >>> is_secret_key("sasl.password"), is_secret_key("ssl.key.location")
    (True, False)
    """
    lowered = name.lower()
    return any(w in lowered for w in _SECRET_WORDS) and not lowered.endswith(".location")


class StrictModel(BaseModel):
    """Frozen; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def location(loc: tuple[int | str, ...], where: str = "") -> str:
    """A validation error's location as the YAML path a user reads (``a.b[0]."x.y"``)."""
    out = where
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "." in part or not part.isidentifier():
            out += f'."{part}"' if out else f'"{part}"'
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def error_lines(err: ValidationError, where: str = "") -> list[str]:
    """One line per problem: its path under ``where``, what is wrong, the value given
    (never the value of a key that looks like a secret, nor of webhook URLs and sinks,
    whose URLs often carry tokens)."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = location(loc, where)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here; check the spelling)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) or e["type"] == "missing" else f" (got {value!r})"
        if "got " in msg:
            shown = ""  # the message shows the value already
        if is_secret_key(path) or any(w in path.lower() for w in ("url", "sinks")):
            shown = ""
        lines.append(f"{path}: {msg}{shown}")
    return lines
