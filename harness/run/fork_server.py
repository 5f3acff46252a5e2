"""Imported by the torch families' fork server (harness.run.execution) before it forks their workers:
the one-thread environment first (torch reads it once, when it loads), then the frameworks that
each of those workers would otherwise import itself."""

from harness.run.execution import FORK_SERVER_MODULES, compute_on_one_thread, import_quietly

compute_on_one_thread()
import_quietly(FORK_SERVER_MODULES)
