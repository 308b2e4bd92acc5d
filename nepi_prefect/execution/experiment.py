"""What a resource manager or a recorder may use of its experiment controller.

:class:`Experiment` is the EC as the modules below it see it: the
:class:`~nepi_prefect.execution.ec.ExperimentController` provides all of it,
and those modules type against this protocol instead of importing the EC
(which imports them).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol


class Experiment(Protocol):
    @property
    def exp_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...

    @property
    def local_dir(self) -> str: ...

    @property
    def exp_dir(self) -> str: ...

    @property
    def run_dir(self) -> str: ...

    @property
    def logger(self) -> logging.Logger: ...

    @property
    def resources(self) -> list[int]: ...

    def get_resource(self, guid: int) -> Any:
        """The RM of ``guid``."""

    def save(self, path: str) -> str:
        """Write the experiment's description to ``path``."""

    def schedule(self, date: Any, callback: Callable[[], Any], track: bool = False) -> int:
        """Run ``callback`` at ``date`` on the experiment's dispatcher."""

    def start(self, guid: int) -> Any: ...

    def stop(self, guid: int) -> Any: ...

    def start_with_conditions(self, guid: int) -> None: ...

    def stop_with_conditions(self, guid: int) -> None: ...

    def set_with_conditions(self, name: str, value: Any, guids1: Any, guids2: Any, state: int,
                            time: str | None = None) -> None: ...

    def on_state_changed(self, rm: Any) -> None:
        """An RM's state changed (the RM calls it)."""

    def register_secret(self, value: Any) -> None:
        """Mask ``value`` in every log line of the experiment."""

    def redact(self, text: str) -> str:
        """``text`` with every secret of the experiment masked."""

    def log_for(self, rm: Any, level: int, text: str) -> None:
        """Log ``text`` for ``rm`` (None: the EC itself)."""

    def summary(self) -> dict[str, Any]:
        """What happened, RM by RM."""
