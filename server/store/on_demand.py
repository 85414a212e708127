"""On-demand adapters (off by default): a request naming an unknown adapter that matches loads it on first use.

Two kinds of name match, each only where the operator opted in (`--on-demand-adapters`):

    owner/name   a Hub repo whose owner is on --hub-adapter-owners (an explicit list: "any owner" is refused
                 at start-up, so that no client can make the server download arbitrary repos)
    NAME         a folder NAME (with adapter_config.json) directly under --adapter-root; NAME has the plain
                 adapter-name alphabet (no '/', no leading '.', no '..'), and the folder must resolve inside
                 the root (a symlink out of it is refused)

Anything else stays unknown: a 404, as when the feature is off. The registry registers a matching name
synchronously on the event loop, so that concurrent requests find one record and share its one load
(AdapterStore's pending loads); a name whose first load fails is unregistered again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from adapters_core.peft_names import CONFIG_NAME

from .sources import NAME_PATTERN, AdapterSource, SourcePolicy, is_hub_name


@dataclass(frozen=True)
class OnDemand:
    """Which unknown names load on first use: Hub repos of `hub_owners`, folders under the policy's roots
    when `local`."""

    hub_owners: frozenset[str] = frozenset()
    local: bool = False

    def source_for(self, name: str, policy: SourcePolicy) -> AdapterSource | None:
        """The source an unknown `name` loads from, or None when it matches nothing allowed."""
        if is_hub_name(name):
            owner = name.split("/", 1)[0]
            return policy.hub(name) if owner in self.hub_owners and policy.allow_hub else None
        if not self.local or not NAME_PATTERN.fullmatch(name) or ".." in name:
            return None
        for root in policy.adapter_roots:
            if os.path.isfile(os.path.join(root, name, CONFIG_NAME)):
                return policy.local_from_request(name)  # checks the real path stays inside its root
        return None
