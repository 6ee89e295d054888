"""Warm interpreters: Python already started in a prepared sandbox, waiting for its
program.

A prepared Python sandbox runs ``python3 -c BOOT`` before any request exists, with the
base environment, in ``/``, with a pipe as its stdin. The bootstrap blocks reading that
pipe. At hand-out the server writes the program to ``/run/baponi/main.py`` (as for a
cold start) and sends the request down the pipe, then closes it: the CPU-time cap, the
working directory, the script's path and the environment. The bootstrap then makes the
interpreter what ``python3 /run/baponi/main.py`` would have been by then, and runs it:

- stdin becomes ``/dev/null`` (the cold path's), the environment exactly the request's,
  the working directory the attached home (entered after the attach, so the mount is
  what it sees), the CPU-time cap the request's (added to what start-up used);
- ``sys.argv``, ``sys.orig_argv`` and ``sys.path[0]`` those of the script, and the user
  site-packages of the home (absent when the interpreter started, since the home was
  not attached yet) in the place ``site`` gives it: before the system's;
- a fresh ``__main__`` module (``__file__``, ``__loader__``, ``__spec__`` None, the
  builtins), in which the file is compiled under its own name and run: tracebacks,
  ``inspect`` and ``linecache`` read the same file; an uncaught exception is printed by
  ``sys.excepthook`` without the bootstrap's frame and exits with 1, ``SystemExit``
  keeps its meaning (it leaves the bootstrap untouched), output is unbuffered
  (``PYTHONUNBUFFERED`` is in the base environment, so stdio was made that way).

It imports nothing the interpreter had not imported at start-up but ``resource`` (for
the cap), which it removes from ``sys.modules`` again. What still tells the two apart:
``/proc/self/cmdline`` and ``/proc/self/environ`` (the kernel's record of the exec),
one frame more below ``<module>`` on the stack, and the start-up's CPU time and age.

A request whose variables change how an interpreter starts (``PYTHON*``, the C
library's ``MALLOC_*`` and ``GLIBC_TUNABLES``) cannot be served by one that has started
already: :func:`serves` says so, and the execution kills the waiting interpreter and
starts a fresh one in the same prepared sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping

from baponi_core.sandbox.rootfs import BASE_ENV
from baponi_core.sandbox.spec import Command

PYTHON = "/usr/bin/python3"
STARTUP_PREFIXES = ("PYTHON", "MALLOC_")
STARTUP_NAMES = frozenset({"GLIBC_TUNABLES"})

BOOT = r"""
import os, sys
def _boot():
    data = bytearray()
    while chunk := os.read(0, 65536):
        data += chunk
    if not data:
        os._exit(0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    cpu, cwd, path, *env = bytes(data).split(b"\0")
    import resource
    spent = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime
                + resource.getrusage(resource.RUSAGE_SELF).ru_stime) + 1
    cap = int(cpu) + spent
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


def command(language: str) -> Command | None:
    """The waiting interpreter a prepared sandbox of ``language`` runs (None: none)."""
    if language != "python":
        return None
    return Command(argv=(PYTHON, "-c", BOOT), env=BASE_ENV, cwd="/", stdin=True)


def serves(env: Mapping[str, str]) -> bool:
    """Whether a warm interpreter, started with the base environment, runs a program
    with the environment ``env`` exactly as a fresh one would: every variable it adds or
    changes leaves start-up alone."""
    changed = [name for name, value in env.items() if BASE_ENV.get(name) != value]
    return not any(
        name in BASE_ENV or name in STARTUP_NAMES or name.startswith(STARTUP_PREFIXES)
        for name in changed
    )


def request(command: Command) -> bytes:
    """What the bootstrap reads: the program's CPU cap, working directory, script and
    environment, NUL-separated."""
    fields = [str(command.cpu_seconds or 0), command.cwd, command.argv[-1]]
    fields += [f"{name}={value}" for name, value in command.env.items()]
    return b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields)
