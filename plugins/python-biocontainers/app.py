"""A sifr policy plugin in Python: route BioContainers to a site mirror.

BioContainers (quay.io/biocontainers/*) is where most bioinformatics tools
come from, and a cluster that pulls hundreds of them benefits from a local
mirror. For images in the listed namespaces, this plugin puts the mirror
ahead of the plan it receives, so the origin stays as the fallback.

Settings (the `[plugin.settings]` table, as JSON):

    mirror = "harbor.example.org"        # required: host[:port]
    prefix = "biocontainers-proxy"       # optional: repository prefix at the mirror
    plain-http = false                   # optional
    namespaces = ["quay.io/biocontainers"]   # optional; this is the default

Built with componentize-py against the same WIT as the Rust plugins:

    componentize-py -d ../../wit/v0.1.0 -w plugin componentize app -o biocontainers.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Decision_Deny, Decision_Plan, Source

_settings = None

_KNOWN = {"mirror", "prefix", "plain-http", "namespaces"}


class Policy(exports.Policy):
    def configure(self, settings: str) -> None:
        global _settings
        try:
            parsed = json.loads(settings)
        except ValueError as e:
            raise Err(f"settings are not JSON: {e}")
        unknown = sorted(set(parsed) - _KNOWN)
        if unknown:
            raise Err(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
        mirror = parsed.get("mirror")
        if not isinstance(mirror, str) or not mirror:
            raise Err('`mirror` is required: the mirror registry, e.g. mirror = "harbor.example.org"')
        namespaces = parsed.get("namespaces", ["quay.io/biocontainers"])
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise Err("`namespaces` must be a list of registry/namespace strings")
        prefix = parsed.get("prefix", "")
        if not isinstance(prefix, str):
            raise Err("`prefix` must be a string")
        _settings = {
            "mirror": mirror,
            "prefix": prefix.strip("/"),
            "plain_http": bool(parsed.get("plain-http", False)),
            "namespaces": [n.strip("/") for n in namespaces],
        }

    def decide(self, image, ctx, plan):
        name = f"{image.registry}/{image.repository}"
        matched = next((n for n in _settings["namespaces"] if name.startswith(n + "/")), None)
        if matched is None:
            host.log(host.Level.DEBUG, f"{name} is not in a mirrored namespace")
            return Decision_Plan(plan)
        if not plan:
            return Decision_Deny("no plan to mirror")
        reference = plan[-1].reference
        repository = image.repository
        if _settings["prefix"]:
            repository = f"{_settings['prefix']}/{repository}"
        mirror = Source(
            registry=_settings["mirror"],
            repository=repository,
            reference=reference,
            plain_http=_settings["plain_http"],
            note=f"BioContainers mirror for {matched} (python plugin)",
        )
        host.log(host.Level.INFO, f"routing {name} to {_settings['mirror']}")
        return Decision_Plan([mirror] + list(plan))
