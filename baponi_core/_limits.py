"""Request limits of the public API, identical to the official SDK's (_constants.py)."""

from __future__ import annotations

import re

LANGUAGES = ("bash", "node", "python")
MAX_CODE_BYTES = 1_048_576
MAX_REQUEST_BYTES = 8 << 20  # a JSON body: 1 MiB of code can take several MiB once escaped
MIN_TIMEOUT, MAX_TIMEOUT = 1, 3600
DEFAULT_TIMEOUT = 60

MAX_THREAD_ID_LENGTH = 128
THREAD_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$")

MAX_METADATA_KEYS = 10
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 256
METADATA_KEY_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")

MAX_ENV_VARS = 50
MAX_ENV_KEY_LENGTH = 128
MAX_ENV_VALUE_LENGTH = 4096
MAX_ENV_TOTAL = 65_536
ENV_KEY_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]*$")
RESERVED_ENV_PREFIXES = ("BAPONI_", "NSJAIL_", "LD_", "LC_", "XDG_", "_")
RESERVED_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "PWD",
        "OLDPWD",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_COLLATE",
        "LC_CTYPE",
        "LC_MESSAGES",
        "LC_MONETARY",
        "LC_NUMERIC",
        "LC_TIME",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONHASHSEED",
        "PYTHONWARNINGS",
        "PYTHONOPTIMIZE",
        "PYTHONINSPECT",
        "PYTHONDEBUG",
        "PYTHONIOENCODING",
        "PYTHONMALLOC",
        "PYTHONCOERCECLOCALE",
        "PYTHONFAULTHANDLER",
        "PYTHONPROFILEIMPORTTIME",
        "PYTHONPYCACHEPREFIX",
        "PIP_USER",
        "PIP_TARGET",
        "PIP_PREFIX",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "LD_AUDIT",
        "LD_DEBUG",
        "LD_BIND_NOW",
        "LD_TRACE_LOADED_OBJECTS",
        "LD_PROFILE",
        "LD_DYNAMIC_WEAK",
        "BASH_ENV",
        "ENV",
        "CDPATH",
        "GLOBIGNORE",
        "BASH_XTRACEFD",
        "PS1",
        "PS2",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "NODE_PATH",
        "NODE_OPTIONS",
        "NODE_EXTRA_CA_CERTS",
        "NPM_CONFIG_PREFIX",
        "NPM_CONFIG_CACHE",
        "NPM_CONFIG_GLOBALCONFIG",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "GOPATH",
        "GOMODCACHE",
        "GOBIN",
        "R_LIBS_USER",
        "JULIA_DEPOT_PATH",
        "TERM",
        "USER",
        "LOGNAME",
        "MAIL",
        "EDITOR",
        "VISUAL",
    }
)

MAX_SUB_PATHS = 10
MAX_SUB_PATH_LENGTH = 512
SUB_PATH_DANGEROUS = re.compile(r"(\.\.|%2[eEfF]|%5[cC]|%00|%25|%[cC][01]|\x00|\\)")

TRACE_ID_PATTERN = re.compile(r"^trc_[a-zA-Z0-9_-]{1,20}$")

MAX_WEBHOOK_URL_LENGTH = 2048
MAX_FILE_BYTES = 10 * 1024**3  # 10 GiB
SIGNED_URL_TTL_S = 15 * 60
