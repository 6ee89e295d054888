"""Warm interpreters: Python and Node already started in a prepared sandbox, waiting
for their program.

A prepared Python sandbox runs ``python3 -c BOOT`` before any request exists, with the
base environment, in ``/``, with a pipe as its stdin. The bootstrap blocks reading that
pipe. At hand-out the server writes the program to ``/run/baponi/main.py`` (as for a
cold start) and sends the request down the pipe, then closes it: the working
directory, the script's path and the environment. The bootstrap then makes the
interpreter what ``python3 /run/baponi/main.py`` would have been by then, and runs it:

- stdin becomes ``/dev/null`` (the cold path's), the environment exactly the request's,
  the working directory the attached home (entered after the attach, so the mount is
  what it sees);
- ``sys.argv``, ``sys.orig_argv`` and ``sys.path[0]`` those of the script, and the user
  site-packages of the home (absent when the interpreter started, since the home was
  not attached yet) in the place ``site`` gives it: before the system's;
- a fresh ``__main__`` module (``__file__``, ``__loader__``, ``__spec__`` None, the
  builtins), in which the file is compiled under its own name and run: tracebacks,
  ``inspect`` and ``linecache`` read the same file; an uncaught exception is printed by
  ``sys.excepthook`` without the bootstrap's frame and exits with 1, ``SystemExit``
  keeps its meaning (it leaves the bootstrap untouched), output is unbuffered
  (``PYTHONUNBUFFERED`` is in the base environment, so stdio was made that way).

The CPU-time cap (a backstop behind the wall clock) is the request's plus what start-up
used, set by the bootstrap with ``resource`` (imported before it waits: loading it is
half a millisecond), which it removes from ``sys.modules`` again: it imports nothing
else the interpreter had not imported at start-up. What still
tells the two apart: ``/proc/self/cmdline`` and ``/proc/self/environ`` (the kernel's
record of the exec), one frame more below ``<module>`` on the stack, and the start-up's
CPU time and age.

Node runs ``node -r /run/baponi/.boot.js /run/baponi/main.js``: the preloaded bootstrap
blocks reading its stdin before Node looks for the main script, and the pool removes it
from ``/run/baponi`` once the interpreter waits (it has read it by then). Given the
request it sets the environment and the working directory, empties ``execArgv`` and
drops itself from ``require.cache``; then Node loads ``main.js`` exactly as for
``node main.js``: same stack traces, same module. Its stdin is the emptied pipe, not
``/dev/null``: both read as at their end at once. Node has no call to lower its own
CPU-time cap, and the host may not (no ``CAP_SYS_RESOURCE`` over the sandbox's uid), so
a warm Node's backstop is the largest timeout a request may have (plus 5 s), not its
own; the wall-clock deadline ends it as it ends every program.

A request whose variables change how an interpreter starts (``PYTHON*``; ``NODE_*`` and
libuv's ``UV_*``; the C library's ``MALLOC_*`` and ``GLIBC_TUNABLES``; any base variable
changed) cannot be served by one that has started
already: :func:`serves` says so, and the execution kills the waiting interpreter and
starts a fresh one in the same prepared sandbox.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path

from baponi_core._limits import MAX_TIMEOUT
from baponi_core._sandbox import egress
from baponi_core._sandbox.spec import RUN_DIR, Command, Shape

STARTUP_PREFIXES = ("MALLOC_",)  # the C library's, read as any interpreter starts
LANGUAGE_PREFIXES = {"python": ("PYTHON",), "node": ("NODE_", "UV_")}
STARTUP_NAMES = frozenset({"GLIBC_TUNABLES"})
CPU_MARGIN_S = 5  # over the wall-clock timeout: the cap is a backstop
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(platform.machine(), "")

BOOT = r"""
import os, sys
def _boot():
    import resource
    data = bytearray()
    while chunk := os.read(0, 65536):
        data += chunk
    if not data:
        os._exit(0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cpu, cwd, path, *env = bytes(data).split(b"\0")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cap = int(cpu) + int(usage.ru_utime + usage.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cap, cap))
    del sys.modules["resource"]
    os.environ.clear()
    for item in env:
        name, _, value = item.partition(b"=")
        os.environb[name] = value
    os.chdir(cwd)
    path = os.fsdecode(path)
    import site
    if site.ENABLE_USER_SITE and os.path.isdir(site.USER_SITE):
        before = list(sys.path)
        site.addsitedir(site.USER_SITE)
        added = sys.path[len(before):]
        system = [i for i, p in enumerate(before) if p in site.getsitepackages()]
        at = system[0] if system else len(before)
        sys.path[:] = before[:at] + added + before[at:]
    sys.argv[:] = [path]
    sys.orig_argv[:] = [sys.orig_argv[0], path]
    sys.path[0] = os.path.dirname(path)
    first = vars(sys.modules["__main__"])
    main = type(sys)("__main__")
    if "__annotations__" in first:
        main.__annotations__ = {}
    main.__file__ = path
    main.__cached__ = None
    main.__builtins__ = sys.modules["builtins"]
    main.__loader__ = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    main.__spec__ = None
    main.__package__ = None
    sys.modules["__main__"] = main
    with open(path, "rb") as file:
        return path, file.read(), main.__dict__
_path, _source, _globals = _boot()
del _boot
try:
    exec(compile(_source, _path, "exec", dont_inherit=True), _globals)
except SystemExit:
    raise
except BaseException as _error:
    _tb = _error.__traceback__
    while _tb is not None and _tb.tb_frame.f_code.co_filename == "<string>":
        _tb = _tb.tb_next
    sys.excepthook(type(_error), _error.with_traceback(_tb), _tb)
    del _error, _tb
    sys.exit(1)
"""


NODE_BOOT = b"""\
"use strict";
{
  const fs = require("fs");
  const chunks = [];
  const buffer = Buffer.alloc(65536);
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, buffer);
    } catch (error) {
      if (error.code === "EAGAIN" || error.code === "EINTR") continue;
      if (error.code === "EOF") break;
      throw error;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buffer.subarray(0, n)));
  }
  if (chunks.length === 0) process.reallyExit(0);
  const [, cwd, path, ...env] = Buffer.concat(chunks).toString("utf8").split("\\0");
  if (path !== process.argv[1]) process.reallyExit(70);
  for (const name of Object.keys(process.env)) delete process.env[name];
  for (const item of env) {
    const at = item.indexOf("=");
    process.env[item.slice(0, at)] = item.slice(at + 1);
  }
  process.chdir(cwd);
  process.execArgv.length = 0;
  delete require.cache[__filename];
}
"""
NODE_BOOT_FILE = ".boot.js"  # removed once it is read: the program never sees it


def base_env(shape: Shape) -> dict[str, str]:
    """What every program in a sandbox of ``shape`` starts with, before its request's
    variables: its runtime's environment and, with egress, the proxy's."""
    return {**shape.runtime.base_env(), **egress.env(shape.network)}


def command(language: str, shape: Shape) -> Command | None:
    """The waiting interpreter a prepared sandbox of ``language`` runs (None: none, or
    the runtime has no interpreter for it)."""
    interpreter = shape.runtime.interpreter(language)
    if interpreter is None:
        return None
    if language == "python":
        argv = (*interpreter, "-c", BOOT)
        return Command(argv=argv, env=base_env(shape), cwd="/", stdin=True)
    if language == "node":
        boot, main = f"{RUN_DIR}/{NODE_BOOT_FILE}", f"{RUN_DIR}/main.js"
        return Command(
            argv=(*interpreter, "-r", boot, main),
            env=base_env(shape),
            cwd="/",
            files={NODE_BOOT_FILE: NODE_BOOT},
            cpu_seconds=MAX_TIMEOUT + CPU_MARGIN_S,  # Node cannot lower it later
            stdin=True,
        )
    return None


def serves(language: str, shape: Shape, env: Mapping[str, str]) -> bool:
    """Whether a warm interpreter of ``language``, started with the shape's base
    environment, runs a program with the environment ``env`` exactly as a fresh one
    would: every variable it adds or changes leaves start-up alone."""
    base = base_env(shape)
    prefixes = STARTUP_PREFIXES + LANGUAGE_PREFIXES.get(language, ())
    changed = [name for name, value in env.items() if base.get(name) != value]
    return not any(
        name in base or name in STARTUP_NAMES or name.startswith(prefixes) for name in changed
    )


def request(command: Command) -> bytes:
    """What the bootstrap reads: the CPU-time cap, the working directory, the script and
    the environment, NUL-separated."""
    fields = [str(command.cpu_seconds or 0), command.cwd, command.argv[-1]]
    fields += [f"{name}={value}" for name, value in command.env.items()]
    return b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields)


def reading_stdin(pid: int) -> bool:
    """Whether the host's process ``pid`` is blocked reading its stdin: a warm
    interpreter done starting (``/proc/<pid>/syscall``: the call and its first argument)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == READ_SYSCALL and int(fields[1], 16) == 0
