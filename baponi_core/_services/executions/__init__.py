"""Executions, split by job: admission (:mod:`admission`), the life of one execution
(:mod:`lifecycle`), the log in the store (:mod:`log`), how endings show (:mod:`status`);
:class:`Executions` (:mod:`service`) is what adapters call, :class:`Submission` what
they hold of one execution."""

from baponi_core._services.executions.run import Submission
from baponi_core._services.executions.service import Executions

__all__ = ["Executions", "Submission"]
