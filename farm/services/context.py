"""The farm's parts wired from the settings, shared by the web app and the worker."""

from __future__ import annotations

import dataclasses
import time

from farm.db.session import Database, make_database
from farm.nodes.base import NodeEnvironment
from farm.nodes.registry import NodeRegistry, default_registry, node_module_classes
from farm.queue.dispatch import Dispatcher, team_book
from farm.queue.fair_share import TeamBook
from farm.services.group_commit import GroupCommit
from farm.services.submit import ModelNeedsIds
from farm.storage import LocalStorage, make_storage


@dataclasses.dataclass
class FarmContext:
    settings: object
    database: Database
    registry: NodeRegistry
    storage: LocalStorage  # or S3Storage: the same methods
    node_env: NodeEnvironment
    dispatcher: Dispatcher | None = None
    trigger: object | None = None  # DispatchTrigger in web processes
    control: object | None = None  # WorkerControl: interrupt and free on workers
    status: object | None = None  # farm.events.StatusPublisher in web processes with an event bus
    # The model_needs ids this process has met (submissions refer to them).
    needs_ids: ModelNeedsIds = dataclasses.field(default_factory=ModelNeedsIds)
    teams: TeamBook | None = None  # every team's share and quotas, cached
    # Concurrent submissions of this process committed together (farm.services.group_commit).
    submissions: GroupCommit | None = None

    def __post_init__(self):
        if self.submissions is None:
            self.submissions = GroupCommit(self.database)

    def node_env_for(self, team: str | None) -> NodeEnvironment:
        """The node environment `team`'s prompts are validated in: its own input files."""
        storage = self.storage.for_team(team)
        if storage is self.storage:
            return self.node_env
        return NodeEnvironment(storage, self.node_env.models_dir, self.node_env.models)

    def warm_up(self) -> None:
        """Connect to the database and the broker before the first request needs them."""
        from sqlalchemy import text

        with self.database.reading() as session:
            session.execute(text("SELECT 1"))
        sender = getattr(self.dispatcher, "sender", None)
        if sender is not None and hasattr(sender, "warm_up"):
            try:
                sender.warm_up()
            except Exception:  # noqa: BLE001 - a broker that is down now is retried on first use
                pass

    def queue_changed(self) -> None:
        """Tell every socket the new queue length (a coalesced `status` broadcast, off this thread)."""
        if self.status is not None:
            self.status.notify()

    def start_reaping(self) -> None:
        """Reap lost workers' prompts from this process too (web processes: a farm whose workers
        are all gone still ends their prompts), and deliver webhooks. Call after forking; the
        threads are daemons."""
        import threading

        from farm.services.history import queue_remaining
        from farm.services.reaping import Reaper

        bus = getattr(self.status, "bus", None)
        reaper = Reaper(self.database, self.settings, bus, lambda: queue_remaining(self.database), self.dispatch_soon,
                        storage=self.storage)

        def loop() -> None:
            while True:
                time.sleep(self.settings.heartbeat_seconds)
                reaper.run_once()

        threading.Thread(target=loop, name="farm-reaper", daemon=True).start()
        from farm.services.webhooks import WebhookLoop

        from farm.metrics import web_metrics

        deliveries = web_metrics().webhook_deliveries
        # batch.completed notices and every webhook delivery, counted by event and outcome
        WebhookLoop(self.database, on_outcome=lambda event, outcome: deliveries.labels(event, outcome).inc()).start()

    def dispatch_soon(self) -> None:
        if self.trigger is not None:
            self.trigger.request()
        elif self.dispatcher is not None:
            self.dispatcher.dispatch()


def make_context(settings, *, registry: NodeRegistry | None = None, sender=None, control=None,
                 background_dispatch=False, models=None) -> FarmContext:
    """Wire the database, nodes, storage and (when a sender is given) the dispatcher.

    `models` says where model files are listed from: by default what the live workers report
    (the web's view); workers pass their own folder.
    """
    from farm.queue.trigger import DispatchTrigger
    from farm.services.model_inventory import WorkerModelInventory

    database = make_database(settings.database_url)
    storage = make_storage(settings)
    models = models if models is not None else WorkerModelInventory(database, settings)
    context = FarmContext(
        settings=settings,
        database=database,
        registry=registry or default_registry(node_module_classes(settings.node_modules)),
        storage=storage,
        node_env=NodeEnvironment(storage, settings.models_dir, models),
        control=control,
        teams=team_book(database),
    )
    if sender is not None:
        context.dispatcher = Dispatcher(database, sender, settings, context.teams)
        if background_dispatch:
            context.trigger = DispatchTrigger(context.dispatcher)
    return context
