"""The user data an instance is launched with: a shell script, carrying the
instance's secret on a line of its own in ``secret_storage="user-data"``
mode, where verification reads it back."""

from __future__ import annotations

from cloudvm.driverkit import SECRET_TAG

__all__ = ["SECRET_USER_DATA_PREFIX", "secret_from_user_data", "user_data_script"]

#: In ``secret_storage="user-data"`` mode, the user-data line carrying the secret.
SECRET_USER_DATA_PREFIX = f"# {SECRET_TAG}: "


def user_data_script(init_command: str, secret: str | None) -> str:
    """The script that runs ``init_command``, with the ``secret`` line when
    the secret is kept in the user data (``None``: it is not)."""
    script = "#!/bin/sh\n"
    if secret is not None:
        script += f"{SECRET_USER_DATA_PREFIX}{secret}\n"
    return script + f"{init_command}\n"


def secret_from_user_data(user_data: str) -> str:
    """The secret on the user data's secret line ("" when there is none)."""
    for line in user_data.splitlines():
        if line.startswith(SECRET_USER_DATA_PREFIX):
            return line[len(SECRET_USER_DATA_PREFIX) :]
    return ""
