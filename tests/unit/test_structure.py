"""Structural rules: the web never imports torch, one migration head, models match migrations."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from farm.db.migrate import alembic_config
from farm.db.models import Base
from farm.db.session import make_database


def test_web_app_and_node_registry_never_import_torch_diffusers_or_worker_code(tmp_path):
    code = (
        "import sys\n"
        "from farm.config import load_settings\n"
        "from farm.nodes.registry import default_registry\n"
        "from web import create_app\n"
        f"settings = load_settings(env={{}}, data_dir={str(tmp_path)!r})\n"
        "from farm.db.migrate import upgrade\n"
        "upgrade(settings.database_url)\n"
        "app = create_app(settings)\n"
        "client = app.test_client()\n"
        "for path in ('/system_stats', '/object_info', '/queue', '/history', '/models/checkpoints'):\n"
        "    assert client.get(path).status_code == 200, path\n"
        "prompt = {'1': {'class_type': 'EmptyImage', 'inputs': {}}, '2': {'class_type': 'SaveImage',\n"
        "          'inputs': {'images': ['1', 0]}}}\n"
        "assert client.post('/prompt', json={'prompt': prompt}).status_code == 400  # validated, refused\n"
        "default_registry()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'numpy', 'safetensors')\n"
        "               or m.startswith(('farm.worker', 'farm.engine')))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_one_migration_head():
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1


def test_models_match_migrations(database_url):
    database = make_database(database_url)
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    database.dispose()
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(database_url):
    from farm.db.migrate import downgrade, upgrade

    downgrade(database_url, "base")
    upgrade(database_url)
