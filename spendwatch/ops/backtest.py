"""``spendwatch backtest`` as a library function: replay history through the real dataflow.

The same Bytewax flow, sources, engine and outbox as ``run``, reading the file as fast as
possible; alerts go to a file (and, with ``deliver``, to the configured receivers), so a
backtest raises exactly the alerts a live run over the same events raises.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from spendwatch.config import JsonlSourceConfig, SpendwatchConfig
from spendwatch.core import stats


def backtest(
    config: SpendwatchConfig,
    input_path: str,
    alerts_out: str,
    *,
    dead_letter: str | None = None,
    deliver: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Replay ``input_path`` through ``config`` as fast as possible; return the summary."""
    from spendwatch.dataflows.flow import get_flow
    from spendwatch.dataflows.runner import run_flow
    from spendwatch.notifiers.file import FileConfig, FileNotifier
    from spendwatch.notifiers.outbox import build_outbox

    update: dict[str, Any] = {"source": replay_source(config, input_path)}
    if dead_letter is not None:
        update["dead_letter"] = config.dead_letter.model_copy(update={"path": dead_letter})
    replay = config.model_copy(update=update)
    os.makedirs(os.path.dirname(os.path.abspath(alerts_out)), exist_ok=True)
    open(alerts_out, "wb").close()

    # A throwaway outbox: the alerts file gets every alert once (an audit receiver, past
    # routes and silences); with ``deliver`` the configured receivers get theirs too.
    scratch = tempfile.mkdtemp(prefix="spendwatch-backtest-")
    alerts_file = FileNotifier(FileConfig(path=alerts_out, name="backtest:alerts-out"))
    outbox = build_outbox(
        replay,
        path=os.path.join(scratch, "outbox.sqlite"),
        extra=[alerts_file],
        audit=[alerts_file.name],
        deliver=deliver,
    ).start()
    stats.reset()
    started = time.perf_counter()
    try:
        run_flow(get_flow(replay, outbox=outbox), workers=workers, epoch_interval=60.0)
        outbox.flush(replay.delivery.flush_timeout)
        undelivered = outbox.pending()
    finally:
        outbox.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = stats.current().summary()
    summary["undelivered"] = undelivered
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def replay_source(config: SpendwatchConfig, input_path: str) -> Any:
    """The source a backtest reads: a FOCUS export stays FOCUS, OTLP stays OTLP, anything
    else is JSONL."""
    source = config.source
    if source.type == "otlp":
        return source.model_copy(update={"path": input_path, "follow": False})
    if source.type == "focus":
        return source.model_copy(update={"path": input_path})
    if source.type == "jsonl":
        return source.model_copy(update={"path": input_path, "follow": False})
    return JsonlSourceConfig(path=input_path, follow=False)
