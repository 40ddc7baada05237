"""The fleet: which bundle and mode each site gets, the bounded cache of loaded bundles, per-site sessions.

**Sites.** The control state (serve/control.py) holds the deployment's defaults (``bundle``, ``mode``,
``rollout_pct``, ``rolled_back``) and, under ``sites``, per-site overrides set by the admin API or the
config's ``sites``: ``{"bundle", "bundle_sha256", "mode", "rollout_pct", "rolled_back"}``, any of them
absent = the default. :func:`site_view` resolves what one site gets.

**Bundles** load on demand: the first request of a site whose bundle is not loaded in this replica waits
for it (loaded in a worker thread, so other sites' requests go on; concurrent requests share one load).
:class:`BundleCache` keeps at most ``max_bundles`` of them (least recently used dropped first; the
deployed bundle is pinned); a dropped bundle's sessions go with it, so memory stays bounded. One ONNX
session per bundle is shared by its sites (serve/domains.py). A bundle that fails to load on this replica
(a changed manifest, a file missing here) is reported by ``/healthz`` and its sites are served by the
deployed bundle meanwhile. Loading is by the bundle's ``domain`` (serve/domains.py).

**Hot swap.** An admin swap verifies the bundle (in a thread) before it is written to the control state;
each replica sees it within ``control_poll_s``, loads it in the background and switches the sites at
their next request once it is ready: no request waits for it or is dropped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve.bundle import BundleError
from serve.domains import Runtime, load_runtime


@dataclass(frozen=True)
class SiteView:
    """What one site gets now."""

    bundle: str
    bundle_sha256: str
    mode: str
    rollout_pct: float
    rolled_back: dict[str, Any] | None
    own_bundle: bool
    """The site has a bundle of its own (not the deployment's default)."""


def site_view(state: dict[str, Any], site_id: str) -> SiteView:
    """Resolve a site's settings from the control state (module docstring)."""
    s = (state.get("sites") or {}).get(site_id) or {}
    own = bool(s.get("bundle"))
    return SiteView(
        bundle=s["bundle"] if own else state["bundle"],
        bundle_sha256=s["bundle_sha256"] if own else state["bundle_sha256"],
        mode=s.get("mode") or state["mode"],
        rollout_pct=float(s["rollout_pct"] if s.get("rollout_pct") is not None else state["rollout_pct"]),
        rolled_back=state.get("rolled_back") or s.get("rolled_back"),
        own_bundle=own,
    )


class BundleCache:
    """Loaded bundles by manifest sha256, at most ``max_bundles`` (LRU; ``pinned`` is never dropped).

    Thread-safe: loads run in worker threads. ``on_evict(sha)`` is called for each dropped bundle.
    """

    def __init__(
        self,
        max_bundles: int,
        pinned: Runtime,
        on_evict: Callable[[str], None] = lambda sha: None,
        load: Callable[[str], Runtime] = load_runtime,
    ):
        self.max_bundles, self.pinned, self.on_evict, self._load = max_bundles, pinned, on_evict, load
        self._lru: OrderedDict[str, Runtime] = OrderedDict({pinned.sha256: pinned})
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        self.errors: dict[str, str] = {}
        """sha256 -> why it did not load here (cleared by a successful load)."""
        self.loads = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, sha: str) -> Runtime | None:
        with self._lock:
            rt = self._lru.get(sha)
            if rt is not None:
                self._lru.move_to_end(sha)
            return rt

    def loading(self, sha: str) -> bool:
        return sha in self._loading

    def load(self, path: str, sha: str) -> Runtime:
        """Load ``path`` (blocking; call it from a worker thread) and check it is the bundle ``sha``
        names; BundleError otherwise (recorded in ``errors``). Concurrent calls for one sha share it."""
        with self._lock:
            rt = self._lru.get(sha)
            if rt is not None:
                return rt
            event = self._loading.get(sha)
            mine = event is None
            if mine:
                event = self._loading[sha] = threading.Event()
        if not mine:
            event.wait(120)
            rt = self.get(sha)
            if rt is None:
                raise BundleError(self.errors.get(sha, f"{path}: load did not finish"))
            return rt
        try:
            rt = self._load(path)
            if rt.sha256 != sha:
                raise BundleError(f"{path}: manifest changed since it was accepted (sha256 differs)")
        except (BundleError, OSError, ValueError) as exc:
            self.errors[sha] = str(exc)
            raise BundleError(str(exc)) from exc
        finally:
            with self._lock:
                self._loading.pop(sha, None)
            event.set()
        self.put(rt)
        return rt

    def put(self, rt: Runtime) -> None:
        evicted = []
        with self._lock:
            self._lru[rt.sha256] = rt
            self._lru.move_to_end(rt.sha256)
            self.loads += 1
            self.errors.pop(rt.sha256, None)
            while len(self._lru) > self.max_bundles:
                sha = next(s for s in self._lru if s != self.pinned.sha256)
                del self._lru[sha]
                evicted.append(sha)
            self.evictions += len(evicted)
        for sha in evicted:
            self.on_evict(sha)

    def loaded(self) -> list[str]:
        with self._lock:
            return [rt.model_version for rt in self._lru.values()]


class Sessions:
    """Per-site sessions of one replica: ``site -> (bundle sha, session)``, LRU beyond ``max_sites``.

    A site whose bundle changed gets a new session (it resumes from the state: serve/session.py)."""

    def __init__(self, max_sites: int):
        self.max_sites = max_sites
        self._by_site: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    def get(self, site_id: str, rt: Runtime) -> Any:
        entry = self._by_site.get(site_id)
        if entry is None or entry[0] != rt.sha256:
            entry = self._by_site[site_id] = (rt.sha256, rt.new_session())
            self._by_site.move_to_end(site_id)
            while len(self._by_site) > self.max_sites:
                self._by_site.popitem(last=False)
        else:
            self._by_site.move_to_end(site_id)
        return entry[1]

    def drop_bundle(self, sha: str) -> None:
        """Forget every session of bundle ``sha`` (it was dropped from the cache)."""
        for site in [s for s, (h, _) in self._by_site.items() if h == sha]:
            del self._by_site[site]

    def peek_sha(self, site_id: str) -> str | None:
        entry = self._by_site.get(site_id)
        return entry[0] if entry else None

    def peek(self, site_id: str) -> Any | None:
        entry = self._by_site.get(site_id)
        return entry[1] if entry else None

    def __len__(self) -> int:
        return len(self._by_site)
