"""
A Kubernetes API emulator for regcache's end-to-end tests, built on kmock 0.8.

kmock's ``KubernetesEmulator`` keeps objects in memory and serves list, watch, fetch,
create, merge-patch and delete, but it is deliberately simple: it merges every write into
the stored dict, emits MODIFIED even for no-ops, has no resourceVersion ("..."), no
generation, no uid, no /status isolation and never answers 409; PUT is not served at all.

``RegcacheEmulator`` keeps kmock's object store (``emulator.objects``, with full history),
its HTTP server, request parsing, request log and error rendering, and replaces the
serving of Kubernetes resource requests with what a real API server does and what the
controller relies on:

- ``metadata.resourceVersion``: one global, increasing integer (as a string) set on every
  change, returned on objects, lists and watch events; watches that give
  ``resourceVersion=N`` get only the changes after N (from an in-memory event log; 410 Gone
  when N is older than the log keeps), other watches get ADDED for the current objects first;
- ``metadata.uid``, ``creationTimestamp``, ``generation`` (1 on create, bumped only when
  something outside ``metadata`` and ``status`` changes, i.e. the spec);
- ``/status`` isolation both ways for resources that declare the ``status`` subresource;
- no-op writes keep the resourceVersion and emit no watch event;
- optimistic concurrency: a PUT or PATCH whose body carries a ``metadata.resourceVersion``
  other than the current one is answered 409 Conflict (Status JSON); creating an existing
  object is 409 AlreadyExists;
- PUT (replace), JSON merge patch, JSON patch, strategic merge patch (treated as merge patch)
  and server-side apply (approximated: merge, plus removal of the fields the same field
  manager applied before and no longer applies);
- finalizers and deletionTimestamp; label and field selectors (equality forms);
- create-only TokenReview and SubjectAccessReview;
- counters (writes per resource and subresource, changes, no-ops, conflicts, watch events
  sent) and a small admin API under ``/_emulator/`` for out-of-process tests, including
  faults: ending every open watch stream (optionally expiring their resourceVersions, so
  re-watches get 410 Gone and clients must list again) and answering the next N
  ``/status`` writes with 409 Conflict.

Everything runs on kmock's single asyncio loop; state changes happen in synchronous code
between awaits, so no lock is needed around them.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock import KubernetesEmulator, KubernetesError, KubernetesScaffold

ResKey = tuple[str, str, str]  # (group, version, plural); group '' is the core API
ObjKey = tuple[ResKey, str | None, str]  # (resource, namespace or None, name)

_RW_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_STATUS = "status"

# The resources the regcache controller uses. Keys are "group/version/plural" ("v1/..." is core).
RESOURCES: dict[str, dict[str, Any]] = {
    "v1/secrets": dict(namespaced=True, kind="Secret", singular="secret", verbs=_RW_VERBS,
                       shortnames=[], categories=[], subresources=[]),
    "v1/serviceaccounts": dict(namespaced=True, kind="ServiceAccount", singular="serviceaccount",
                               verbs=_RW_VERBS, shortnames=["sa"], categories=[], subresources=[]),
    "v1/events": dict(namespaced=True, kind="Event", singular="event", verbs=_RW_VERBS,
                      shortnames=["ev"], categories=[], subresources=[]),
    "events.k8s.io/v1/events": dict(namespaced=True, kind="Event", singular="event", verbs=_RW_VERBS,
                                    shortnames=["ev"], categories=[], subresources=[]),
    "coordination.k8s.io/v1/leases": dict(namespaced=True, kind="Lease", singular="lease",
                                          verbs=_RW_VERBS, shortnames=[], categories=[], subresources=[]),
    "authentication.k8s.io/v1/tokenreviews": dict(namespaced=False, kind="TokenReview",
                                                  singular="tokenreview", verbs=["create"],
                                                  shortnames=[], categories=[], subresources=[]),
    "authorization.k8s.io/v1/subjectaccessreviews": dict(namespaced=False, kind="SubjectAccessReview",
                                                         singular="subjectaccessreview", verbs=["create"],
                                                         shortnames=[], categories=[], subresources=[]),
    "regcache.io/v1alpha1/imagerepositorywatches": dict(namespaced=True, kind="ImageRepositoryWatch",
                                                        singular="imagerepositorywatch", verbs=_RW_VERBS,
                                                        shortnames=["irw"], categories=["regcache"],
                                                        subresources=[_STATUS]),
}

# Resources served only as "create and get an answer back"; nothing is stored.
CREATE_ONLY = {("authentication.k8s.io", "v1", "tokenreviews"),
               ("authorization.k8s.io", "v1", "subjectaccessreviews")}

# How many change events the watch log keeps (older resourceVersions get 410 Gone).
EVENT_LOG_SIZE = 100_000


def split_resource(key: str) -> ResKey:
    parts = key.split("/")
    if len(parts) == 2:
        return ("", parts[0], parts[1])
    if len(parts) == 3:
        return (parts[0], parts[1], parts[2])
    raise ValueError(f"resource key must be 'group/version/plural' or 'v1/plural': {key!r}")


def resource_name(res: ResKey) -> str:
    """'v1/secrets' or 'regcache.io/v1alpha1/imagerepositorywatches' — the counters' keys."""
    group, version, plural = res
    return f"{version}/{plural}" if not group else f"{group}/{version}/{plural}"


def api_version(res: ResKey) -> str:
    group, version, _ = res
    return version if not group else f"{group}/{version}"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null removes a key; non-objects replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(obj, dict) and obj:
        paths: set[tuple[str, ...]] = set()
        for key, value in obj.items():
            paths |= _leaf_paths(value, prefix + (key,))
        return paths
    return {prefix} if prefix else set()


def _remove_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    parents = []
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    # Drop the dicts that became empty because of the removal.
    for parent, key in reversed(parents):
        if isinstance(parent.get(key), dict) and not parent[key]:
            del parent[key]
        else:
            break


def status_error(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> KubernetesError:
    # kmock renders a KubernetesError as a Kubernetes Status object with this code.
    return KubernetesError(status=code, reason=reason, message=message, details=details or {})


def _parse_selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """Equality-based selectors: k=v, k==v, k!=v, k (exists), !k (absent); 'in' is not supported."""
    terms: list[tuple[str, str, str | None]] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            k, v = part.split("!=", 1)
            terms.append(("!=", k.strip(), v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            terms.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            terms.append(("absent", part[1:].strip(), None))
        elif " in " in part or " notin " in part:
            raise status_error(400, "BadRequest", f"set-based selectors are not supported: {part!r}")
        else:
            terms.append(("exists", part, None))
    return terms


def _selector_matches(terms: list[tuple[str, str, str | None]], values: dict[str, str]) -> bool:
    for op, key, value in terms:
        present = key in values
        if op == "=" and (not present or values[key] != value):
            return False
        if op == "!=" and present and values[key] == value:
            return False
        if op == "exists" and not present:
            return False
        if op == "absent" and present:
            return False
    return True


def rbac_verb(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb an API server checks for a request (the authorization attributes)."""
    method = method.upper()
    if method == "GET":
        return "watch" if watch else ("get" if named else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def access_key(request: kmock.Request) -> str:
    r = request.resource
    watch = str(request.params.get("watch", "")).lower() in ("1", "true")
    verb = rbac_verb(request.method.value, request.name is not None, watch)
    resource = f"{r.group or ''}/{r.plural}" + (f"/{request.subresource}" if request.subresource else "")
    key = f"{verb} {resource} {request.namespace or '*'}"
    return f"{key} {request.name}" if request.name is not None else key


@attrs.define(kw_only=True)
class Counters:
    """What tests assert on: every write request, what it did, and the watch traffic."""
    writes: collections.Counter[str] = attrs.field(factory=collections.Counter)  # per resource[/status]
    changes: collections.Counter[str] = attrs.field(factory=collections.Counter)  # writes that bumped the RV
    noops: collections.Counter[str] = attrs.field(factory=collections.Counter)  # writes that changed nothing
    conflicts: collections.Counter[str] = attrs.field(factory=collections.Counter)  # 409 answers
    object_writes: collections.Counter[str] = attrs.field(factory=collections.Counter)  # "res[/sub] ns/name"
    watch_events: collections.Counter[str] = attrs.field(factory=collections.Counter)  # ADDED/MODIFIED/DELETED sent
    watch_bookmarks: collections.Counter[str] = attrs.field(factory=collections.Counter)
    watches_started: collections.Counter[str] = attrs.field(factory=collections.Counter)
    lists: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # Every Kubernetes API request as the RBAC check an API server would make, per client
    # (the User-Agent's product, e.g. "regcache"): "verb group/resource[/subresource] namespace
    # [name]" ("*" for cluster-wide requests, "" for the core group, the name when the URL has
    # one, as RBAC's resourceNames match it). The RBAC test compares the
    # controller's with the rules the Helm chart grants; the tests' own requests stay apart.
    access: collections.defaultdict[str, collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter))

    def as_dict(self) -> dict[str, Any]:
        result = {field.name: dict(getattr(self, field.name)) for field in attrs.fields(type(self))}
        result["access"] = {agent: dict(keys) for agent, keys in self.access.items()}
        result["watch_events_total"] = sum(self.watch_events.values())
        result["writes_total"] = sum(self.writes.values())
        return result

    def reset(self) -> None:
        for field in attrs.fields(type(self)):
            getattr(self, field.name).clear()


@attrs.define(kw_only=True)
class _Event:
    rv: int
    res: ResKey
    namespace: str | None
    name: str
    type: str
    obj: dict[str, Any]


@attrs.define(kw_only=True)
class RegcacheEmulator(KubernetesEmulator):
    """kmock's KubernetesEmulator with the behaviour of a real API server (see the module doc)."""

    counters: Counters = attrs.field(factory=Counters)
    # Tokens that TokenReview accepts: token -> userInfo ({"username": ..., "groups": [...]}).
    tokens: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    # What SubjectAccessReview answers.
    access_allowed: bool = True
    # Users whose SubjectAccessReviews are allowed only in these namespaces (username -> list);
    # users not named here get `access_allowed`.
    access_namespaces: dict[str, list[str]] = attrs.field(factory=dict)
    # Seconds between BOOKMARK events on watches that allow them (0 disables periodic ones).
    bookmark_interval: float = 5.0
    # Fault: the next this-many writes to any /status subresource are answered 409 Conflict.
    status_conflicts: int = 0

    _rv: int = attrs.field(default=1000, init=False)
    _log: collections.deque[_Event] = attrs.field(factory=lambda: collections.deque(maxlen=EVENT_LOG_SIZE), init=False)
    _oldest_rv: int = attrs.field(default=1000, init=False)  # every change after this one is in the log
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Bumped to end the watch streams open at that moment (a dropped connection).
    _watch_epoch: int = attrs.field(default=0, init=False)
    # Server-side apply memory: (object, subresource, field manager) -> the leaf paths it applied.
    _applied: dict[tuple[ObjKey, str, str], set[tuple[str, ...]]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = info
        # Admin endpoints for tests (registered first: among equal priorities the first wins).
        self.fallback["get /_emulator/counters"] << (lambda: self.counters.as_dict())
        self.fallback["post /_emulator/counters/reset"] << self._admin_reset
        self.fallback["post /_emulator/tokens"] << self._admin_token
        self.fallback["put /_emulator/config"] << self._admin_config
        self.fallback["get /_emulator/state"] << self._admin_state
        self.fallback["post /_emulator/watches/drop"] << self._admin_drop_watches
        # PUT is no Kubernetes "action" for kmock (it would answer 404): serve it here.
        self.fallback["put"] << self._serve_replace

    # ----- plumbing ---------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.resource.plural:
            agent = (request.headers.get("User-Agent") or "unknown").split("/")[0]
            self.counters.access[agent][access_key(request)] += 1
        # Skip KubernetesEmulator._handle: it mutates the store (merging every write) before the
        # handlers run. Here the serving handlers below make the changes themselves.
        try:
            return await KubernetesScaffold._handle(self, request)
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from kmock's request logs.

        kmock keeps every request and finds a request's reaction by scanning that log, so each
        request would cost time in proportion to all requests before it (1,000 creates took
        two minutes). Nothing here reads kmock's log; the counters are this emulator's record.
        """
        for log in (self._requests, *(payload._requests for payload in self._payloads)):
            for i in range(len(log) - 1, -1, -1):
                if log[i] is request:
                    del log[i]
                    break

    async def _render_error(self, exc: Exception) -> Any:
        # API answers (404, 409, 400...) are expected in e2e runs: render them as a Kubernetes
        # Status without kmock's traceback, and do not keep them in kmock's error list (which
        # would grow for as long as the server runs). Other exceptions stay kmock's business.
        if isinstance(exc, KubernetesError):
            if self._errors and self._errors[-1] and self._errors[-1][-1] is exc:
                self._errors[-1].pop()
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "code": exc.status, "reason": exc.reason or "", "message": exc.message or "",
                "details": exc.details or {},
            }, status=exc.status)
        return await super()._render_error(exc)

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:  # created lazily: it must belong to the serving loop
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._cond():
            self._cond().notify_all()

    async def close_watches(self) -> None:
        """End all watch streams (used before the server stops)."""
        self._closing = True
        await self._notify()

    async def drop_watches(self, expire: bool = False) -> int:
        """
        Ends every watch stream open now, as a dropped connection or an API server restart
        would. With ``expire``, the change log is also forgotten, so a client that watches
        again from a resourceVersion it saw gets 410 Gone and has to list again.
        Returns the resourceVersion from which watches are served again.
        """
        self._watch_epoch += 1
        if expire:
            self._log.clear()
            self._rv += 1  # nothing happened at this version: lists and watches start here
            self._oldest_rv = self._rv
        await self._notify()
        return self._rv

    @property
    def resource_version(self) -> int:
        return self._rv

    def _res_of(self, request: kmock.Request) -> ResKey:
        r = request.resource
        if r is None or r.plural is None:
            raise status_error(404, "NotFound", f"no resource in {request.url.path}")
        res = (r.group or "", r.version or "", r.plural)
        if resource_name(res) not in {resource_name(split_resource(k)) for k in self._declared()}:
            raise status_error(404, "NotFound", f"the server could not find the requested resource ({resource_name(res)})")
        return res

    def _declared(self) -> dict[str, Any]:
        return {resource_name((r.group or "", r.version or "", r.plural or "")): info
                for r, info in self.resources._resources.items()}

    def _info(self, res: ResKey) -> Any:
        return self._declared()[resource_name(res)]

    def _has_status(self, res: ResKey) -> bool:
        return _STATUS in self._info(res).subresources

    def _gvk(self, res: ResKey) -> tuple[str, str]:
        return api_version(res), self._info(res).kind

    def _qualified(self, res: ResKey) -> str:
        return res[2] if not res[0] else f"{res[2]}.{res[0]}"

    def _stored(self, key: ObjKey) -> dict[str, Any] | None:
        res, ns, name = key
        kkey = (kmock.resource(res[0], res[1], res[2]), ns, name)
        if kkey in self._objects:
            obj = self._objects[kkey]
            if not obj.deleted:
                return obj.raw
        return None

    def _store(self, key: ObjKey, obj: dict[str, Any] | None) -> None:
        res, ns, name = key
        kkey = (kmock.resource(res[0], res[1], res[2]), ns, name)
        if obj is None:
            self._objects[kkey].delete()
        elif kkey not in self._objects:
            self._objects[kkey] = copy.deepcopy(obj)
        else:
            self._objects[kkey].create(copy.deepcopy(obj))  # appends a full new version to the history

    def _all(self, res: ResKey) -> list[tuple[ObjKey, dict[str, Any]]]:
        out = []
        for (r, ns, name), obj in self._objects.items():
            if (r.group or "", r.version, r.plural) == res and not obj.deleted:
                out.append((((r.group or "", r.version, r.plural), ns, name), obj.raw))
        out.sort(key=lambda item: (item[0][1] or "", item[0][2]))
        return out

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _since(self, cursor: int) -> list[_Event]:
        """The logged events after resourceVersion `cursor`, oldest first (read from the end)."""
        newer = list(itertools.takewhile(lambda e: e.rv > cursor, reversed(self._log)))
        newer.reverse()
        return newer

    def _emit(self, key: ObjKey, type_: str, obj: dict[str, Any]) -> None:
        res, ns, name = key
        rv = int(obj["metadata"]["resourceVersion"])
        if len(self._log) == self._log.maxlen:
            self._oldest_rv = self._log[0].rv
        self._log.append(_Event(rv=rv, res=res, namespace=ns, name=name, type=type_, obj=copy.deepcopy(obj)))

    @staticmethod
    def _body(request: kmock.Request) -> Any:
        text = request.body.decode("utf-8") if request.body else ""
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            try:
                return yaml.safe_load(text)  # apply patches may be real YAML
            except yaml.YAMLError as e:
                raise status_error(400, "BadRequest", f"the request body is neither JSON nor YAML: {e}")

    def _count_write(self, res: ResKey, sub: str | None, ns: str | None, name: str | None) -> str:
        ckey = resource_name(res) + (f"/{sub}" if sub else "")
        self.counters.writes[ckey] += 1
        self.counters.object_writes[f"{ckey} {ns or ''}/{name or ''}"] += 1
        return ckey

    def _conflict(self, ckey: str, res: ResKey, name: str) -> KubernetesError:
        self.counters.conflicts[ckey] += 1
        return status_error(409, "Conflict",
                            f'Operation cannot be fulfilled on {self._qualified(res)} "{name}": '
                            "the object has been modified; please apply your changes to the latest version and try again",
                            {"name": name, "group": res[0], "kind": res[2]})

    def _not_found(self, res: ResKey, name: str) -> KubernetesError:
        return status_error(404, "NotFound", f'{self._qualified(res)} "{name}" not found',
                            {"name": name, "group": res[0], "kind": res[2]})

    # ----- writes -------------------------------------------------------------------------------

    def _normalize(self, res: ResKey, old: dict[str, Any] | None, new: dict[str, Any], ns: str | None, name: str) -> dict[str, Any]:
        """Fill in what the server owns: identity, apiVersion/kind, uid, timestamps, generation."""
        new = copy.deepcopy(new)
        av, kind = self._gvk(res)
        new["apiVersion"], new["kind"] = av, kind
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise status_error(422, "Invalid", "metadata must be an object")
        meta["name"] = name
        if ns is not None:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta.pop("deletionTimestamp", None)
        else:
            om = old["metadata"]
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp"):
                if field in om:
                    meta[field] = om[field]
                else:
                    meta.pop(field, None)
            spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            spec_new = {k: v for k, v in new.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            if spec_old != spec_new:
                meta["generation"] = int(om.get("generation", 1)) + 1
        for k in [k for k, v in meta.items() if v is None]:
            del meta[k]
        return new

    async def _write(self, request: kmock.Request, res: ResKey, sub: str | None, ns: str | None, name: str,
                     compute: Any, create_if_missing: bool = False, precondition_rv: Any = None) -> Any:
        """
        The common path of PUT and PATCH: compute the candidate from the old object, isolate
        status, check the resourceVersion precondition, skip no-ops, store, log the event.
        """
        ckey = self._count_write(res, sub, ns, name)
        if sub not in (None, _STATUS) or (sub == _STATUS and not self._has_status(res)):
            raise status_error(404, "NotFound", f"the server could not find the requested resource ({sub})")
        if sub == _STATUS and self.status_conflicts > 0:
            self.status_conflicts -= 1
            raise self._conflict(ckey, res, name)
        key: ObjKey = (res, ns, name)
        old = self._stored(key)
        if old is None and not (create_if_missing and sub is None):
            raise self._not_found(res, name)

        candidate = compute(copy.deepcopy(old) if old is not None else {})
        if not isinstance(candidate, dict):
            raise status_error(422, "Invalid", "the object must be a JSON object")

        # Optimistic concurrency: a resourceVersion in the written object is a precondition.
        given_rv = precondition_rv
        if given_rv is None:
            given_rv = (candidate.get("metadata") or {}).get("resourceVersion")
            if old is not None and given_rv == old["metadata"].get("resourceVersion"):
                given_rv = None  # carried over unchanged from the old object (e.g. by a merge patch)
        if given_rv not in (None, "") and (old is None or str(given_rv) != old["metadata"].get("resourceVersion")):
            if old is None:
                raise self._not_found(res, name)
            raise self._conflict(ckey, res, name)

        if old is None:  # server-side apply of a new object
            return await self._create_obj(res, ns, name, candidate, counted=ckey)

        # Status isolation.
        if sub == _STATUS:
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            if self._has_status(res):
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        new = self._normalize(res, old, new, ns, name)

        if new == old:
            self.counters.noops[ckey] += 1
            return new

        new["metadata"]["resourceVersion"] = self._next_rv()
        self.counters.changes[ckey] += 1
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            # The last finalizer is gone: the object goes away now.
            self._store(key, None)
            self._emit(key, "DELETED", new)
        else:
            self._store(key, new)
            self._emit(key, "MODIFIED", new)
        await self._notify()
        return new

    async def _create_obj(self, res: ResKey, ns: str | None, name: str, body: dict[str, Any], counted: str | None = None) -> Any:
        ckey = counted or resource_name(res)
        key: ObjKey = (res, ns, name)
        if self._stored(key) is not None:
            self.counters.conflicts[ckey] += 1
            raise status_error(409, "AlreadyExists", f'{self._qualified(res)} "{name}" already exists',
                               {"name": name, "group": res[0], "kind": res[2]})
        body = copy.deepcopy(body)
        if self._has_status(res):
            body.pop("status", None)  # status is written only through /status
        obj = self._normalize(res, None, body, ns, name)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.counters.changes[ckey] += 1
        self._store(key, obj)
        self._emit(key, "ADDED", obj)
        await self._notify()
        return kmock.Response(status=201, payload=obj)

    async def _serve_create(self, request: kmock.Request) -> Any:
        res = self._res_of(request)
        body = self._body(request)
        if not isinstance(body, dict):
            raise status_error(400, "BadRequest", "the body must be a JSON object")
        meta = body.setdefault("metadata", {})
        info = self._info(res)
        ns = (request.namespace or meta.get("namespace")) if info.namespaced else None
        if info.namespaced and not ns:
            raise status_error(400, "BadRequest", "the namespace of the object must be given")
        if request.namespace and meta.get("namespace") and meta["namespace"] != request.namespace:
            raise status_error(400, "BadRequest", "the namespace of the object does not match the URL")
        if request.subresource:
            raise status_error(405, "MethodNotAllowed", "cannot create a subresource")
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + uuid.uuid4().hex[:5]
        ckey = self._count_write(res, None, ns, name)
        if res in CREATE_ONLY:
            self.counters.changes[ckey] += 1
            return kmock.Response(status=201, payload=self._review(res, body))
        if not name:
            raise status_error(422, "Invalid", "metadata.name or metadata.generateName is required")
        return await self._create_obj(res, ns, name, body, counted=ckey)

    def _review(self, res: ResKey, body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["apiVersion"], body["kind"] = self._gvk(res)
        if res[2] == "tokenreviews":
            token = (body.get("spec") or {}).get("token", "")
            user = self.tokens.get(token)
            body["status"] = ({"authenticated": True, "user": user, "audiences": (body.get("spec") or {}).get("audiences", [])}
                              if user is not None else {"authenticated": False, "error": "invalid bearer token"})
        else:
            spec = body.get("spec") or {}
            namespaces = self.access_namespaces.get(spec.get("user", ""))
            allowed = self.access_allowed and (
                namespaces is None or (spec.get("resourceAttributes") or {}).get("namespace") in namespaces)
            body["status"] = {"allowed": allowed}
            if not allowed:
                body["status"]["reason"] = "denied by the emulator"
        return body

    async def _serve_replace(self, request: kmock.Request) -> Any:
        res = self._res_of(request)
        if request.name is None:
            raise status_error(405, "MethodNotAllowed", "PUT needs an object name")
        body = self._body(request)
        if not isinstance(body, dict):
            raise status_error(400, "BadRequest", "the body must be a JSON object")
        ns = request.namespace if self._info(res).namespaced else None
        return await self._write(request, res, request.subresource, ns, request.name, lambda old: body)

    async def _serve_update(self, request: kmock.Request) -> Any:  # PATCH
        res = self._res_of(request)
        ns = request.namespace if self._info(res).namespaced else None
        name = request.name
        sub = request.subresource
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self._body(request)
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise status_error(400, "BadRequest", "a JSON patch must be a list")

            def compute(old: dict[str, Any]) -> Any:
                try:
                    return jsonpatch.apply_patch(old, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    raise status_error(422, "Invalid", f"the JSON patch does not apply: {e}")
            return await self._write(request, res, sub, ns, name, compute)
        if ctype == "application/apply-patch+yaml":
            manager = request.params.get("fieldManager")
            if not manager:
                raise status_error(400, "BadRequest", "PATCH with application/apply-patch+yaml requires fieldManager")
            if not isinstance(body, dict):
                raise status_error(400, "BadRequest", "an apply patch must be an object")
            akey = ((res, ns, name), sub or "", manager)
            applied = {p for p in _leaf_paths(body) if p[:2] != ("metadata", "resourceVersion")}
            applied -= {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}

            def compute(old: dict[str, Any]) -> Any:
                new = copy.deepcopy(old)
                # Fields this manager applied before and applies no more are removed (as in SSA).
                for path in self._applied.get(akey, set()) - applied:
                    _remove_path(new, path)
                patch = copy.deepcopy(body)
                return merge_patch(new, patch)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            result = await self._write(request, res, sub, ns, name, compute, create_if_missing=True,
                                       precondition_rv=rv)
            self._applied[akey] = applied
            return result
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json", "application/json", ""):
            raise status_error(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        if not isinstance(body, dict):
            raise status_error(400, "BadRequest", "a merge patch must be an object")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        return await self._write(request, res, sub, ns, name, lambda old: merge_patch(old, body), precondition_rv=rv)

    async def _serve_delete(self, request: kmock.Request) -> Any:
        res = self._res_of(request)
        ns = request.namespace if self._info(res).namespaced else None
        name = request.name
        ckey = self._count_write(res, None, ns, name)
        key: ObjKey = (res, ns, name)
        old = self._stored(key)
        if old is None:
            raise self._not_found(res, name)
        body = self._body(request) or {}
        pre_rv = ((body.get("preconditions") or {}) if isinstance(body, dict) else {}).get("resourceVersion")
        if pre_rv and pre_rv != old["metadata"]["resourceVersion"]:
            raise self._conflict(ckey, res, name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                self.counters.noops[ckey] += 1
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.counters.changes[ckey] += 1
            self._store(key, new)
            self._emit(key, "MODIFIED", new)
            await self._notify()
            return new
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self.counters.changes[ckey] += 1
        self._store(key, None)
        self._emit(key, "DELETED", gone)
        await self._notify()
        return gone

    # ----- reads --------------------------------------------------------------------------------

    def _filter(self, request: kmock.Request) -> Any:
        labels = _parse_selector(request.params.get("labelSelector"))
        fields = _parse_selector(request.params.get("fieldSelector"))
        want_ns = request.namespace
        want_name = request.name

        def check(ns: str | None, name: str, obj: dict[str, Any]) -> bool:
            if want_ns is not None and ns != want_ns:
                return False
            if want_name is not None and name != want_name:
                return False
            if labels and not _selector_matches(labels, (obj.get("metadata") or {}).get("labels") or {}):
                return False
            if fields and not _selector_matches(fields, {"metadata.name": name, "metadata.namespace": ns or ""}):
                return False
            return True
        return check

    @staticmethod
    def _metadata_only(request: kmock.Request) -> bool:
        """Whether the client asked for metadata only (`Accept: ...;as=PartialObjectMetadata...`),
        as kube-rs's metadata watcher does; the API server then sends no spec, data or status."""
        return "as=PartialObjectMetadata" in (request.headers.get("Accept") or "")

    @staticmethod
    def _partial(obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj.get("metadata") or {}}

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        res = self._res_of(request)
        if request.subresource not in (None, _STATUS) or (request.subresource and not self._has_status(res)):
            raise status_error(404, "NotFound", "the server could not find the requested resource")
        ns = request.namespace if self._info(res).namespaced else None
        obj = self._stored((res, ns, request.name))
        if obj is None:
            raise self._not_found(res, request.name)
        return obj

    async def _serve_list(self, request: kmock.Request) -> Any:
        res = self._res_of(request)
        if res in CREATE_ONLY:
            raise status_error(405, "MethodNotAllowed", "this resource can only be created")
        self.counters.lists[resource_name(res)] += 1
        check = self._filter(request)
        av, kind = self._gvk(res)
        items = [obj for (_, ns, name), obj in self._all(res) if check(ns, name, obj)]
        # Pages as the API server sends them (`limit`, then `continue` with the token given),
        # so a client listing many large objects holds one page at a time.
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        try:
            start = int(request.params.get("continue") or 0)
            limit = int(request.params.get("limit") or 0)
        except ValueError:
            raise status_error(400, "BadRequest", "invalid limit or continue")
        if limit > 0:
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
            items = items[start:start + limit]
        else:
            items = items[start:]
        if self._metadata_only(request):
            return {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": meta, "items": [self._partial(o) for o in items]}
        return {"apiVersion": av, "kind": f"{kind}List", "metadata": meta, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        res = self._res_of(request)
        rname = resource_name(res)
        check = self._filter(request)
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        timeout = request.params.get("timeoutSeconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout) if timeout else None
        since = request.params.get("resourceVersion") or ""
        self.counters.watches_started[rname] += 1
        epoch = self._watch_epoch  # a drop from now on ends this stream
        av, kind = self._gvk(res)
        shown = self._partial if self._metadata_only(request) else (lambda o: o)

        # Build the start under no await: the snapshot and the log position are consistent.
        initial: list[dict[str, Any]] = []
        if since in ("", "0"):
            initial = [{"type": "ADDED", "object": shown(obj)} for (_, ns, name), obj in self._all(res) if check(ns, name, obj)]
            cursor = self._rv
        else:
            try:
                cursor = int(since)
            except ValueError:
                raise status_error(400, "BadRequest", f"invalid resourceVersion {since!r}")
            if cursor < self._oldest_rv:
                yield {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                                   "message": f"too old resource version: {cursor} ({self._oldest_rv})",
                                                   "reason": "Expired", "code": 410}}
                return
        yield b""  # send the headers now, even if nothing happens for a while
        for event in initial:
            self.counters.watch_events[rname] += 1
            yield event

        last_bookmark = loop.time()
        while not self._closing and epoch == self._watch_epoch:
            for e in self._since(cursor):
                cursor = e.rv
                if e.res == res and check(e.namespace, e.name, e.obj):
                    self.counters.watch_events[rname] += 1
                    yield {"type": e.type, "object": shown(e.obj)}
            now = loop.time()
            if deadline is not None and now >= deadline:
                break
            if bookmarks and self.bookmark_interval and now - last_bookmark >= self.bookmark_interval:
                last_bookmark = now
                self.counters.watch_bookmarks[rname] += 1
                yield {"type": "BOOKMARK", "object": {"apiVersion": av, "kind": kind,
                                                      "metadata": {"resourceVersion": str(max(cursor, self._rv))}}}
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - now))
            async with self._cond():
                if (not self._closing and epoch == self._watch_epoch
                        and (not self._log or self._log[-1].rv <= cursor)):
                    try:
                        await asyncio.wait_for(self._cond().wait(), timeout=wait)
                    except asyncio.TimeoutError:
                        pass
        if bookmarks and not self._closing and epoch == self._watch_epoch:
            self.counters.watch_bookmarks[rname] += 1
            yield {"type": "BOOKMARK", "object": {"apiVersion": av, "kind": kind,
                                                  "metadata": {"resourceVersion": str(max(cursor, self._rv))}}}

    # ----- discovery ----------------------------------------------------------------------------

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for name in self._declared():
            group, version, _ = split_resource(name)
            if group and version not in groups.setdefault(group, []):
                groups[group].append(version)
        return groups

    @staticmethod
    def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    async def _serve_api(self, request: kmock.Request) -> Any:
        host = request.headers.get("Host", "127.0.0.1")
        return {"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}

    async def _serve_apis(self, request: kmock.Request) -> Any:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_entry(g, vs) for g, vs in sorted(self._groups().items())]}

    async def _serve_group(self, request: kmock.Request) -> Any:
        group = request.resource.group if request.resource else None
        groups = self._groups()
        if group not in groups:
            raise status_error(404, "NotFound", "the server could not find the requested resource")
        return dict(self._group_entry(group, groups[group]), kind="APIGroup", apiVersion="v1")

    async def _serve_version(self, request: kmock.Request) -> Any:
        r = request.resource
        group, version = (r.group or "") if r else "", (r.version or "") if r else ""
        resources = []
        for name, info in sorted(self._declared().items()):
            g, v, plural = split_resource(name)
            if (g, v) != (group, version):
                continue
            entry = {"name": plural, "singularName": info.singular or plural, "namespaced": bool(info.namespaced),
                     "kind": info.kind, "verbs": sorted(info.verbs)}
            if info.shortnames:
                entry["shortNames"] = sorted(info.shortnames)
            if info.categories:
                entry["categories"] = sorted(info.categories)
            resources.append(entry)
            for sub in sorted(info.subresources):
                resources.append({"name": f"{plural}/{sub}", "singularName": "", "namespaced": bool(info.namespaced),
                                  "kind": info.kind, "verbs": ["get", "patch", "update"]})
        if not resources and group:
            raise status_error(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # ----- admin API for tests ------------------------------------------------------------------

    async def _admin_reset(self) -> Any:
        self.counters.reset()
        return self.counters.as_dict()

    async def _admin_token(self, request: kmock.Request) -> Any:
        body = self._body(request) or {}
        self.tokens[body["token"]] = body.get("user") or {"username": "emulator-user"}
        return {"tokens": len(self.tokens)}

    async def _admin_config(self, request: kmock.Request) -> Any:
        body = self._body(request) or {}
        if "access_allowed" in body:
            self.access_allowed = bool(body["access_allowed"])
        if "bookmark_interval" in body:
            self.bookmark_interval = float(body["bookmark_interval"])
        if "access_namespaces" in body:
            self.access_namespaces = {u: list(ns) for u, ns in (body["access_namespaces"] or {}).items()}
        if "status_conflicts" in body:
            self.status_conflicts = int(body["status_conflicts"])
        return {"access_allowed": self.access_allowed, "bookmark_interval": self.bookmark_interval,
                "access_namespaces": self.access_namespaces, "status_conflicts": self.status_conflicts}

    async def _admin_drop_watches(self, request: kmock.Request) -> Any:
        body = self._body(request) or {}
        rv = await self.drop_watches(expire=bool(body.get("expire", False)))
        return {"resourceVersion": str(rv)}

    async def _admin_state(self) -> Any:
        return {"resourceVersion": str(self._rv), "events": len(self._log),
                "objects": {resource_name(split_resource(n)): len(self._all(split_resource(n))) for n in self._declared()}}
