"""Generate a Mosquitto (2.x) configuration with authentication: mosquitto.conf, passwd, acl.

Who may do what, under the topic prefix (``ecard/v1``):

- the relay's user publishes anywhere under the prefix (``topic write ecard/v1/#``);
- the notifier's user (optional; the notifier comes later) reads the events and
  writes the representatives' topics;
- every other user is a representative's app, whose user name is the representative's
  id: it may subscribe to its own topics only, by Mosquitto's pattern
  ``pattern read ecard/v1/representatives/%u/#``. Anonymous clients are refused.

Passwords are stored hashed the way mosquitto_passwd does it (PBKDF2-SHA512, ``$7$``):
by ``mosquitto_passwd -U`` when the tool is installed (never with a password on its
command line), else by the same computation here. Mosquitto reads these files at
start and again on SIGHUP.

Mosquitto started as root drops to the ``user`` of its configuration (``mosquitto`` by
default) before it reads them: give ``run_as`` and, when this process is root, the
directory and the files are handed to that user.

A password file suits the relay, the notifier and a pilot's few hundred app users;
the whole city's parents (millions) would need Mosquitto's dynamic-security plugin
or an auth plugin in front of the representatives table instead.

    python -m relay mosquitto-files --dir DIR --passwords USERS_FILE [--port 1883]
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Mapping

import msgspec

from .config import TOPIC_PREFIX
from .layout import EVENTS, REPRESENTATIVES

# mosquitto_passwd's own defaults in 2.0: 12 bytes of salt, 101 rounds of PBKDF2-SHA512.
PBKDF2_SALT_BYTES = 12
PBKDF2_ITERATIONS = 101
# How long mosquitto_passwd may take to hash a file (thousands of users take a second).
MOSQUITTO_PASSWD_TIMEOUT_S = 60.0
# Service accounts (the relay, the notifier): letters, digits, '.', '_', '-'. A
# representative's user name is its id in decimal, because the ACL pattern puts the
# user name into the topic: a name with '/', '+' or '#' could reach other topics.
_SERVICE_USER = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_REPRESENTATIVE_USER = re.compile(r"^[1-9][0-9]{0,18}$")
# QoS 1 messages Mosquitto holds for one persistent (clean_session=0) subscriber that is
# away, above those in flight (Mosquitto's default is 1,000: seconds of a morning peak).
# The notifier's session must ride out a restart or a deploy: 200,000 events are several
# minutes of the city's peak at ~0.5 KiB each (~100 MiB). Beyond it Mosquitto drops
# messages for that client; the relay cannot know, so this must stay generous.
MOSQUITTO_QUEUED_MESSAGES_MAX = 200_000
# A persistent (clean_session=0) client away this long loses its session and queue (Mosquitto's
# default is never): a notifier gone for a month is a retired client id, not a restart. It also
# bounds how late an event can be redelivered, which the notifier's de-duplication must outlive
# (notifier.config.MQTT_SESSION_EXPIRY_S, checked against its retention).
MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S = 30 * 86_400


class MosquittoFiles(msgspec.Struct, frozen=True):
    conf: Path
    passwd: Path
    acl: Path


def hash_password(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The ``$7$`` hash mosquitto_passwd writes (PBKDF2-HMAC-SHA512 over the password, base64)."""
    salt = secrets.token_bytes(PBKDF2_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_user(name: str, service: bool) -> None:
    pattern = _SERVICE_USER if service else _REPRESENTATIVE_USER
    if not pattern.match(name):
        what = "a service user name ([A-Za-z][A-Za-z0-9._-]*)" if service else "a representative id (decimal)"
        raise ValueError(f"user {name!r} is not {what}")


def write_password_file(path: Path, users: Mapping[str, str], *, use_tool: bool | None = None) -> None:
    """Write ``user:hash`` lines (mode 0600). ``use_tool``: None uses mosquitto_passwd when installed."""
    for name, password in users.items():
        if ":" in name or "\n" in name or "\n" in password or not password:
            raise ValueError(f"user {name!r}: a name without ':' or newlines and a non-empty one-line password")
    tool = shutil.which("mosquitto_passwd") if use_tool is not False else None
    if use_tool and tool is None:
        raise FileNotFoundError("mosquitto_passwd is not installed (apt-get install mosquitto)")
    path = Path(path)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        if tool is None:
            f.writelines(f"{name}:{hash_password(password)}\n" for name, password in users.items())
        else:  # plain text in a 0600 file for the moment mosquitto_passwd -U hashes it in place
            f.writelines(f"{name}:{password}\n" for name, password in users.items())
    if tool is not None:
        try:
            subprocess.run([tool, "-U", str(path)], check=True, capture_output=True, timeout=MOSQUITTO_PASSWD_TIMEOUT_S)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave the plain text behind
            raise
        os.chmod(path, 0o600)


def acl_text(relay_user: str, notifier_user: str | None = None, prefix: str = TOPIC_PREFIX) -> str:
    check_user(relay_user, service=True)
    lines = [
        "# ecard's MQTT ACL (written by relay.mosquitto). Anonymous clients get nothing.",
        "",
        "# The relay publishes the outbox under the prefix.",
        f"user {relay_user}",
        f"topic write {prefix}/#",
    ]
    if notifier_user is not None:
        check_user(notifier_user, service=True)
        lines += [
            "",
            "# The notifier reads the events and writes each representative's topics.",
            f"user {notifier_user}",
            f"topic read {prefix}/{EVENTS}/#",
            f"topic write {prefix}/{REPRESENTATIVES}/#",
        ]
    lines += [
        "",
        "# Every user, and so each representative's app (its user name is the representative's",
        "# id): read its own topics, nothing else.",
        f"pattern read {prefix}/{REPRESENTATIVES}/%u/#",
        "",
    ]
    return "\n".join(lines)


def config_text(
    port: int,
    passwd: Path,
    acl: Path,
    *,
    host: str = "127.0.0.1",
    persistence_dir: Path | None = None,
    run_as: str | None = None,
) -> str:
    lines = [
        "# ecard's Mosquitto configuration (written by relay.mosquitto).",
        f"listener {port} {host}",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
    ]
    if persistence_dir is not None:
        # Persistent (clean_session=0) subscribers keep their subscriptions and queued
        # QoS 1 messages across a broker restart.
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    else:
        lines.append("persistence false")
    lines.append(f"max_queued_messages {MOSQUITTO_QUEUED_MESSAGES_MAX}")
    lines.append(f"persistent_client_expiration {MOSQUITTO_PERSISTENT_CLIENT_EXPIRATION_S // 86_400}d")
    if run_as is not None:
        lines.append(f"user {run_as}")
    lines += ["log_dest stdout", "log_type error", "log_type warning", "log_type notice", "log_type information", ""]
    return "\n".join(lines)


def write_files(
    directory: Path,
    port: int,
    *,
    relay_user: str,
    users: Mapping[str, str],
    notifier_user: str | None = None,
    representatives: Mapping[int | str, str] | None = None,
    prefix: str = TOPIC_PREFIX,
    host: str = "127.0.0.1",
    persistent: bool = False,
    run_as: str | None = None,
    use_tool: bool | None = None,
) -> MosquittoFiles:
    """Write mosquitto.conf, passwd and acl into ``directory``.

    ``users`` holds the service users' passwords (the relay's, the notifier's);
    ``representatives`` maps a representative's id to its app's password.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    accounts = dict(users)
    if relay_user not in accounts or (notifier_user is not None and notifier_user not in accounts):
        raise ValueError("users must hold the relay's (and the notifier's) password")
    for name in accounts:
        check_user(name, service=True)
    for rep_id, password in (representatives or {}).items():
        check_user(str(rep_id), service=False)
        accounts[str(rep_id)] = password
    files = MosquittoFiles(directory / "mosquitto.conf", directory / "passwd", directory / "acl")
    write_password_file(files.passwd, accounts, use_tool=use_tool)
    files.acl.write_text(acl_text(relay_user, notifier_user, prefix))
    persistence_dir = directory / "data" if persistent else None
    if persistence_dir is not None:
        persistence_dir.mkdir(exist_ok=True)
    files.conf.write_text(config_text(port, files.passwd, files.acl, host=host, persistence_dir=persistence_dir, run_as=run_as))
    if run_as is not None and os.geteuid() == 0:
        for path in (directory, files.conf, files.passwd, files.acl, *([persistence_dir] if persistence_dir else [])):
            shutil.chown(path, run_as)
    return files


def read_users_file(path: Path) -> dict[str, str]:
    """``user:password`` lines (mosquitto_passwd's plain-text input); '#' starts a comment."""
    users: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep:
            raise ValueError(f"{path}:{number}: expected user:password")
        users[name.strip()] = password
    return users
