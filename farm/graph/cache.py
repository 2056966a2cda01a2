"""The execution cache: node outputs reused across prompts, with ComfyUI's "classic" semantics.

A node's signature covers its class, its fingerprint (ComfyUI's IS_CHANGED: e.g. the hash of a
loaded image file), its node id when the class is not idempotent, its constant inputs, and, for
each linked input, the signature of the upstream node and the output index. Signatures are
built bottom-up (a Merkle hash), so identical sub-graphs share results whatever their node ids,
and changing any upstream constant invalidates everything downstream.

Invariants (spec comfyui-api.md §7.3):
- When a prompt starts, entries whose signature does not occur in it are dropped: results
  survive into the next prompt only for nodes that prompt still has.
- `execution_cached` lists every node of the prompt whose signature is cached at its start.
- A node that failed is never cached; what ran before it stays cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import uuid
from typing import Any

from farm.graph.links import is_link
from farm.graph.plan import plan_execution


@dataclasses.dataclass
class CachedOutput:
    values: tuple
    ui: dict | None


def _fingerprint(value: Any) -> str:
    # NaN never equals itself in ComfyUI: a node fingerprinted NaN always runs again.
    if isinstance(value, float) and math.isnan(value):
        return uuid.uuid4().hex
    return _constant(value)


def _constant(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


class ExecutionCache:
    def __init__(self, registry, env):
        self.registry = registry
        self.env = env
        self._entries: dict[str, CachedOutput] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def signatures(self, prompt: dict, env=None, team: str | None = None) -> dict[str, str]:
        """Signature of every node of `prompt` (nodes linked to missing nodes get none). `env` is
        the prompt's team's node environment (its input files); the team is part of every
        signature, so no team is ever served another team's outputs (their files are not its own)."""
        env = env or self.env
        order = plan_execution(prompt, list(prompt))
        signatures: dict[str, str] = {}
        for node_id in order:
            node = prompt[node_id]
            cls = self.registry[node["class_type"]]
            parts = [node["class_type"], _fingerprint(cls.fingerprint(env, node.get("inputs", {})))]
            if team:
                parts.append(f"team:{team}")
            if cls.NOT_IDEMPOTENT:
                parts.append(f"id:{node_id}")
            for name in sorted(node.get("inputs", {})):
                value = node["inputs"][name]
                if is_link(value):
                    parts.append(f"{name}=link:{signatures[value[0]]}:{int(value[1])}")
                else:
                    parts.append(f"{name}={_constant(value)}")
            signatures[node_id] = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
        return signatures

    def start_prompt(self, signatures: dict[str, str]) -> list[str]:
        """Forget what the new prompt does not use; return its nodes already cached."""
        used = set(signatures.values())
        for signature in [s for s in self._entries if s not in used]:
            del self._entries[signature]
        return [node_id for node_id, signature in signatures.items() if signature in self._entries]

    def cached_nodes(self, signatures: dict[str, str]) -> list[str]:
        """The nodes already cached, forgetting nothing: for the members of a coalesced group, whose
        worker started the cache once for all of them."""
        return [node_id for node_id, signature in signatures.items() if signature in self._entries]

    def get(self, signature: str) -> CachedOutput | None:
        return self._entries.get(signature)

    def put(self, signature: str, values: tuple, ui: dict | None) -> None:
        self._entries[signature] = CachedOutput(values, ui)
