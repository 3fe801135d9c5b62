"""Self-tests of the emulator: each behaviour it adds to kmock, proven over plain HTTP."""
import json
import subprocess
import sys
import threading
import time
import pathlib

import pytest
import requests
import yaml

from server import ApiError, KubeClient, Proc, wait_for

NS = "default"
IRW = "regcache.io/v1alpha1/imagerepositorywatches"
IRW_STATUS = IRW + "/status"
LEASES = "coordination.k8s.io/v1/leases"


def irw(name="w1", spec=None, **extra):
    obj = {"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
           "metadata": {"name": name, "namespace": NS}, "spec": spec or {"image": "example/app"}}
    obj.update(extra)
    return obj


def lease(name="regcache-leader", holder="a"):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}}


def rv(obj):
    return int(obj["metadata"]["resourceVersion"])


def watch(kube: KubeClient, kind, namespace=None, resource_version=None, timeout_seconds=1, **params):
    """All events of one watch request that ends by itself after timeout_seconds."""
    params = dict(params, watch="true", timeoutSeconds=str(timeout_seconds))
    if resource_version is not None:
        params["resourceVersion"] = str(resource_version)
    with kube.session.get(kube.url + kube.path(kind, namespace), params=params, stream=True,
                          timeout=timeout_seconds + 10) as response:
        assert response.status_code == 200, response.text
        return [json.loads(line) for line in response.iter_lines() if line]


class LiveWatch:
    """A watch read in a background thread, for events that happen after it started."""

    def __init__(self, kube, kind, namespace=None, **params):
        self.events = []
        self._params = dict(params, watch="true", timeoutSeconds="30")
        self._url = kube.url + kube.path(kind, namespace)
        self._response = requests.get(self._url, params=self._params, stream=True, timeout=40)
        assert self._response.status_code == 200
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for line in self._response.iter_lines():
                if line:
                    self.events.append(json.loads(line))
        except (requests.RequestException, ValueError, AttributeError):
            pass

    def close(self):
        self._response.close()


# ----- resourceVersion, uid, generation ----------------------------------------------------------


def test_create_sets_uid_timestamp_generation_and_resource_version(kube):
    created = kube.create(irw())
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert meta["resourceVersion"].isdigit()
    assert kube.get("irw", NS, "w1") == created


def test_resource_version_increases_on_every_change_across_resources(kube):
    a = kube.create(irw("a"))
    s = kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NS},
                     "data": {"k": "dg=="}})
    b = kube.patch("irw", NS, "a", {"spec": {"image": "other"}})
    c = kube.patch("irw", NS, "a", {"status": {"phase": "Ready"}}, subresource="status")
    d = kube.patch("irw", NS, "a", {"metadata": {"labels": {"x": "y"}}})
    versions = [rv(a), rv(s), rv(b), rv(c), rv(d)]
    assert versions == sorted(versions) and len(set(versions)) == 5
    listing = kube.list("irw", NS)
    assert listing["metadata"]["resourceVersion"] == str(rv(d))
    assert [rv(item) for item in listing["items"]] == [rv(d)]


def test_generation_bumps_on_spec_changes_only(kube):
    kube.create(irw())
    assert kube.patch("irw", NS, "w1", {"spec": {"image": "v2"}})["metadata"]["generation"] == 2
    assert kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")["metadata"]["generation"] == 2
    assert kube.patch("irw", NS, "w1", {"metadata": {"annotations": {"a": "b"}}})["metadata"]["generation"] == 2
    assert kube.patch("irw", NS, "w1", {"metadata": {"labels": {"l": "v"}}})["metadata"]["generation"] == 2
    obj = kube.get("irw", NS, "w1")
    obj["spec"]["interval"] = "5m"
    assert kube.replace(obj)["metadata"]["generation"] == 3


def test_server_owned_metadata_cannot_be_overwritten(kube):
    created = kube.create(irw())
    patched = kube.patch("irw", NS, "w1", {"metadata": {"uid": "forged", "generation": 99,
                                                         "creationTimestamp": "2000-01-01T00:00:00Z"},
                                            "spec": {"image": "v2"}})
    for field in ("uid", "creationTimestamp"):
        assert patched["metadata"][field] == created["metadata"][field]
    assert patched["metadata"]["generation"] == 2


# ----- /status isolation -------------------------------------------------------------------------


def test_status_is_ignored_on_create_and_main_resource_writes(kube):
    created = kube.create(irw(status={"phase": "Forged"}))
    assert "status" not in created
    kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    patched = kube.patch("irw", NS, "w1", {"spec": {"image": "v2"}, "status": {"phase": "Forged"}})
    assert patched["status"] == {"phase": "Ready"} and patched["spec"]["image"] == "v2"
    replaced = kube.replace(dict(patched, status={"phase": "Forged"}))
    assert replaced["status"] == {"phase": "Ready"}
    # A status-only patch of the main resource is a no-op.
    before = kube.get("irw", NS, "w1")
    assert kube.patch("irw", NS, "w1", {"status": {"phase": "Forged"}}) == before


def test_status_writes_change_only_status(kube):
    kube.create(irw(spec={"image": "v1"}))
    patched = kube.patch("irw", NS, "w1", {"spec": {"image": "forged"}, "metadata": {"labels": {"forged": "1"}},
                                            "status": {"phase": "Ready"}}, subresource="status")
    assert patched["spec"] == {"image": "v1"}
    assert "labels" not in patched["metadata"]
    assert patched["status"] == {"phase": "Ready"}
    replaced = kube.replace(dict(patched, spec={"image": "forged"}, status={"phase": "Failed"}), subresource="status")
    assert replaced["spec"] == {"image": "v1"} and replaced["status"] == {"phase": "Failed"}
    assert kube.get("irw", NS, "w1", subresource="status")["status"] == {"phase": "Failed"}


def test_server_side_apply_on_status_and_main_resource(kube):
    kube.apply(irw(spec={"image": "v1", "tags": ["a"]}))  # creates
    obj = kube.get("irw", NS, "w1")
    assert obj["metadata"]["generation"] == 1 and obj["spec"]["tags"] == ["a"]
    applied = kube.apply_status(irw(status={"phase": "Ready", "digests": {"a": "sha256:1"}}))
    assert applied["status"] == {"phase": "Ready", "digests": {"a": "sha256:1"}}
    assert applied["spec"] == {"image": "v1", "tags": ["a"]}
    # The same manager applying less removes what it no longer applies (as SSA does).
    applied = kube.apply_status(irw(status={"phase": "Ready"}))
    assert applied["status"] == {"phase": "Ready"}
    # Applying the same status again changes nothing.
    assert rv(kube.apply_status(irw(status={"phase": "Ready"}))) == rv(applied)
    # Apply without fieldManager is refused, as by a real API server.
    response = kube.session.patch(kube.url + kube.path("irw", NS, "w1", "status"), data="{}",
                                  headers={"Content-Type": "application/apply-patch+yaml"})
    assert response.status_code == 400


def test_status_subresource_of_a_resource_without_one_is_not_found(kube):
    kube.create(lease())
    with pytest.raises(ApiError) as info:
        kube.patch("lease", NS, "regcache-leader", {"status": {}}, subresource="status")
    assert info.value.status == 404


# ----- optimistic concurrency ------------------------------------------------------------------


def test_stale_resource_version_on_lease_update_is_409(kube):
    first = kube.create(lease(holder="a"))
    # Another candidate renews with the current version: accepted.
    renewed = kube.replace(dict(first, spec=dict(first["spec"], holderIdentity="b")))
    assert rv(renewed) > rv(first)
    # The first candidate still holds the old version: PUT conflicts.
    with pytest.raises(ApiError) as info:
        kube.replace(dict(first, spec=dict(first["spec"], holderIdentity="a")))
    assert info.value.status == 409
    status = info.value.body
    assert status["kind"] == "Status" and status["reason"] == "Conflict" and status["code"] == 409
    # So does a merge patch carrying the stale version; JSON patch too.
    with pytest.raises(ApiError) as info:
        kube.patch("lease", NS, "regcache-leader",
                   {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": "a"}})
    assert info.value.status == 409
    with pytest.raises(ApiError) as info:
        kube.patch("lease", NS, "regcache-leader",
                   [{"op": "replace", "path": "/metadata/resourceVersion", "value": first["metadata"]["resourceVersion"]},
                    {"op": "replace", "path": "/spec/holderIdentity", "value": "a"}], patch_type="json")
    assert info.value.status == 409
    assert kube.get("lease", NS, "regcache-leader")["spec"]["holderIdentity"] == "b"
    # With the current version it goes through.
    current = kube.get("lease", NS, "regcache-leader")
    taken = kube.patch("lease", NS, "regcache-leader", {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                                                        "spec": {"holderIdentity": "a"}})
    assert taken["spec"]["holderIdentity"] == "a"
    assert kube.counters()["conflicts"][LEASES] == 3


def test_create_existing_is_409_already_exists(kube):
    kube.create(lease())
    with pytest.raises(ApiError) as info:
        kube.create(lease())
    assert info.value.status == 409 and info.value.body["reason"] == "AlreadyExists"


def test_stale_resource_version_on_custom_resource_and_status(kube):
    first = kube.create(irw())
    kube.patch("irw", NS, "w1", {"spec": {"image": "v2"}})
    with pytest.raises(ApiError) as info:
        kube.replace(dict(first, status={"phase": "Ready"}), subresource="status")
    assert info.value.status == 409


# ----- watches ------------------------------------------------------------------------------------


def test_watch_delivers_added_modified_deleted_with_resource_versions(kube):
    start = kube.list("irw", NS)["metadata"]["resourceVersion"]
    created = kube.create(irw())
    modified = kube.patch("irw", NS, "w1", {"spec": {"image": "v2"}})
    status = kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    deleted = kube.delete("irw", NS, "w1")
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": NS}})
    events = watch(kube, "irw", NS, resource_version=start)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    versions = [rv(e["object"]) for e in events]
    assert versions == [rv(created), rv(modified), rv(status), rv(deleted)]
    assert versions == sorted(versions)
    assert events[2]["object"]["status"] == {"phase": "Ready"}
    assert kube.get("irw", NS, "w1") is None
    # Only the changes after the given resourceVersion.
    later = watch(kube, "irw", NS, resource_version=rv(modified))
    assert [e["type"] for e in later] == ["MODIFIED", "DELETED"]


def test_watch_without_resource_version_starts_with_current_objects(kube):
    kube.create(irw("a"))
    kube.create(irw("b"))
    kube.delete("irw", NS, "a")
    events = watch(kube, "irw", NS)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]


def test_metadata_only_lists_and_watches_leave_out_data(kube):
    # kube-rs's metadata watcher asks for PartialObjectMetadata: the Secret's data must not come.
    accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
    start = kube.list("secrets", NS)["metadata"]["resourceVersion"]
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big", "namespace": NS},
                 "data": {"blob": "QUJD" * 1000}})
    url = kube.url + kube.path("secrets", NS)
    listed = kube.session.get(url, headers={"Accept": accept}, timeout=10).json()
    assert listed["kind"] == "PartialObjectMetadataList"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["big"]
    assert all(set(i) == {"apiVersion", "kind", "metadata"} for i in listed["items"]), listed
    params = {"watch": "true", "timeoutSeconds": "1", "resourceVersion": start}
    with kube.session.get(url, params=params, headers={"Accept": accept.replace("List", "")}, stream=True,
                          timeout=11) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert [(e["type"], e["object"]["kind"]) for e in events] == [("ADDED", "PartialObjectMetadata")]
    assert "data" not in events[0]["object"]
    # Without the header, the whole object.
    assert kube.list("secrets", NS)["items"][0]["data"]["blob"].startswith("QUJD")


def test_lists_come_in_pages_when_a_limit_is_asked(kube):
    for i in range(5):
        kube.create(irw(f"p{i}"))
    url = kube.url + kube.path("irw", NS)
    names, token, pages = [], None, 0
    while True:
        params = {"limit": "2"} | ({"continue": token} if token else {})
        page = kube.session.get(url, params=params, timeout=10).json()
        pages += 1
        assert len(page["items"]) <= 2
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert (pages, names) == (3, [f"p{i}" for i in range(5)])


def test_live_watch_and_bookmarks(kube, server):
    server.emulator.bookmark_interval = 0.2
    start = kube.list("irw")["metadata"]["resourceVersion"]
    live = LiveWatch(kube, "irw", resourceVersion=start, allowWatchBookmarks="true")
    try:
        time.sleep(0.3)
        kube.create(irw())
        kube.patch("irw", NS, "w1", {"spec": {"image": "v2"}})
        wait_for(lambda: len([e for e in live.events if e["type"] != "BOOKMARK"]) >= 2, timeout=5)
        wait_for(lambda: any(e["type"] == "BOOKMARK" for e in live.events), timeout=5)
    finally:
        live.close()
    changes = [e for e in live.events if e["type"] != "BOOKMARK"]
    assert [e["type"] for e in changes] == ["ADDED", "MODIFIED"]
    bookmark = next(e for e in live.events if e["type"] == "BOOKMARK")
    assert bookmark["object"]["kind"] == "ImageRepositoryWatch"
    assert bookmark["object"]["metadata"]["resourceVersion"].isdigit()


def test_watch_filters_by_namespace_and_selectors(kube):
    start = kube.list("irw")["metadata"]["resourceVersion"]
    kube.create(irw("a", metadata={"name": "a", "namespace": NS, "labels": {"team": "x"}}))
    kube.create(dict(irw("b"), metadata={"name": "b", "namespace": "other", "labels": {"team": "y"}}))
    names = lambda events: [e["object"]["metadata"]["name"] for e in events]
    assert names(watch(kube, "irw", None, resource_version=start)) == ["a", "b"]
    assert names(watch(kube, "irw", "other", resource_version=start)) == ["b"]
    assert names(watch(kube, "irw", None, resource_version=start, labelSelector="team=x")) == ["a"]
    assert names(watch(kube, "irw", None, resource_version=start, fieldSelector="metadata.name=b")) == ["b"]
    assert [i["metadata"]["name"] for i in kube.list("irw", label_selector="team!=x")["items"]] == ["b"]


def test_watch_from_a_compacted_resource_version_is_410(kube, server):
    server.emulator._oldest_rv = 10**9  # as if the log had been compacted
    events = watch(kube, "irw", NS, resource_version=5)
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_dropping_watches_ends_open_streams(kube):
    start = kube.list("irw")["metadata"]["resourceVersion"]
    live = LiveWatch(kube, "irw", resourceVersion=start)
    try:
        kube.create(irw("before"))
        wait_for(lambda: len(live.events) >= 1, timeout=5)
        answer = kube.request("POST", "/_emulator/watches/drop", json={})
        assert int(answer["resourceVersion"]) >= int(start)
        live._thread.join(timeout=5)
        assert not live._thread.is_alive(), "the stream ended"
        kube.create(irw("after"))
        time.sleep(0.2)
        assert [e["object"]["metadata"]["name"] for e in live.events] == ["before"]
    finally:
        live.close()
    # Without expiry, watching again from the last seen version misses nothing.
    seen = live.events[-1]["object"]["metadata"]["resourceVersion"]
    again = watch(kube, "irw", NS, resource_version=seen)
    assert [e["object"]["metadata"]["name"] for e in again] == ["after"]


def test_expiring_watches_makes_old_versions_410_and_new_lists_watchable(kube):
    kube.create(irw("before"))
    old = kube.list("irw")["metadata"]["resourceVersion"]
    answer = kube.request("POST", "/_emulator/watches/drop", json={"expire": True})
    events = watch(kube, "irw", NS, resource_version=old)
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
    fresh = kube.list("irw")["metadata"]["resourceVersion"]
    assert fresh == answer["resourceVersion"]
    kube.create(irw("after"))
    assert [e["object"]["metadata"]["name"] for e in watch(kube, "irw", NS, resource_version=fresh)] == ["after"]


def test_status_conflicts_answer_the_next_status_writes_409(kube):
    kube.create(irw())
    assert kube.configure(status_conflicts=2)["status_conflicts"] == 2
    for _ in range(2):
        with pytest.raises(ApiError) as info:
            kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
        assert info.value.status == 409
    kube.patch("irw", NS, "w1", {"spec": {"image": "other"}})  # main resource: unaffected
    done = kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    assert done["status"] == {"phase": "Ready"}
    assert kube.counters()["conflicts"][IRW_STATUS] == 2


# ----- no-op writes ---------------------------------------------------------------------------


def test_noop_writes_keep_resource_version_and_emit_no_event(kube):
    kube.create(irw())
    status = kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
    kube.reset_counters()
    start = rv(status)
    for _ in range(3):
        again = kube.patch("irw", NS, "w1", {"status": {"phase": "Ready"}}, subresource="status")
        assert rv(again) == start
    assert rv(kube.patch("irw", NS, "w1", {"spec": {"image": "example/app"}})) == start
    assert rv(kube.replace(kube.get("irw", NS, "w1"))) == start
    assert watch(kube, "irw", NS, resource_version=start) == []
    counters = kube.counters()
    assert counters["writes"] == {IRW_STATUS: 3, IRW: 2}
    assert counters["noops"] == {IRW_STATUS: 3, IRW: 2}
    assert counters["changes"] == {}
    assert counters["watch_events_total"] == 0


def test_counters_count_writes_and_watch_events(kube):
    kube.create(irw())
    kube.patch("irw", NS, "w1", {"status": {"phase": "A"}}, subresource="status")
    kube.patch("irw", NS, "w1", {"status": {"phase": "B"}}, subresource="status")
    events = watch(kube, "irw", NS, resource_version=0)
    counters = kube.counters()
    assert counters["writes"] == {IRW: 1, IRW_STATUS: 2}
    assert counters["changes"] == {IRW: 1, IRW_STATUS: 2}
    assert counters["object_writes"][f"{IRW_STATUS} {NS}/w1"] == 2
    assert counters["watch_events"] == {IRW: len(events)} == {IRW: 1}
    assert counters["watches_started"] == {IRW: 1}
    kube.reset_counters()
    assert kube.counters()["writes_total"] == 0


def test_access_records_each_request_as_an_rbac_check(kube):
    kube.create(irw())
    kube.get("irw", NS, "w1")
    kube.list("irw")
    kube.list("irw", NS)
    kube.patch("irw", NS, "w1", {"status": {"phase": "A"}}, subresource="status")
    watch(kube, "irw", NS, resource_version=0)
    access = kube.counters()["access"]["python-requests"]
    assert access == {
        f"create regcache.io/imagerepositorywatches {NS}": 1,
        f"get regcache.io/imagerepositorywatches {NS} w1": 1,
        "list regcache.io/imagerepositorywatches *": 1,
        f"list regcache.io/imagerepositorywatches {NS}": 1,
        f"patch regcache.io/imagerepositorywatches/status {NS} w1": 1,
        f"watch regcache.io/imagerepositorywatches {NS}": 1,
    }


# ----- deletion, finalizers, other resources ------------------------------------------------------


def test_finalizers_delay_deletion(kube):
    kube.create(irw(metadata={"name": "w1", "namespace": NS, "finalizers": ["regcache.io/cleanup"]}))
    marked = kube.delete("irw", NS, "w1")
    assert marked["metadata"]["deletionTimestamp"]
    assert kube.get("irw", NS, "w1") is not None
    kube.patch("irw", NS, "w1", {"metadata": {"finalizers": None}})
    assert kube.get("irw", NS, "w1") is None


def test_reviews_are_create_only(kube):
    kube.add_token("good-token", "system:serviceaccount:monitoring:prometheus")
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "good-token"}}
    answer = kube.request("POST", kube.path("tokenreviews"), json=review)
    assert answer["status"]["authenticated"] is True
    assert answer["status"]["user"]["username"] == "system:serviceaccount:monitoring:prometheus"
    bad = kube.request("POST", kube.path("tokenreviews"), json=dict(review, spec={"token": "bad"}))
    assert bad["status"]["authenticated"] is False
    sar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
           "spec": {"user": "u", "nonResourceAttributes": {"path": "/metrics", "verb": "get"}}}
    assert kube.request("POST", kube.path("subjectaccessreviews"), json=sar)["status"]["allowed"] is True
    kube.configure(access_allowed=False)
    assert kube.request("POST", kube.path("subjectaccessreviews"), json=sar)["status"]["allowed"] is False
    with pytest.raises(ApiError):
        kube.request("GET", kube.path("tokenreviews"))


def test_access_can_be_limited_to_namespaces_per_user(kube):
    kube.configure(access_namespaces={"reader": ["team"]})

    def allowed(user: str, namespace: str) -> bool:
        sar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": user, "resourceAttributes": {"namespace": namespace, "verb": "get",
                                                             "group": "regcache.io",
                                                             "resource": "imagerepositorywatches"}}}
        return kube.request("POST", kube.path("subjectaccessreviews"), json=sar)["status"]["allowed"]

    assert allowed("reader", "team") is True
    assert allowed("reader", "other") is False
    assert allowed("someone-else", "other") is True


def test_events_and_service_accounts(kube):
    ev = kube.create({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                      "metadata": {"generateName": "w1.", "namespace": NS},
                      "reason": "Synced", "note": "ok", "type": "Normal", "action": "Sync",
                      "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "regcache",
                      "reportingInstance": "regcache-0"})
    assert ev["metadata"]["name"].startswith("w1.")
    kube.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": NS}, "reason": "Synced"})
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa", "namespace": NS}})
    assert len(kube.list("events.events.k8s.io", NS)["items"]) == 1
    assert len(kube.list("v1/events", NS)["items"]) == 1
    assert kube.get("sa", NS, "sa")["kind"] == "ServiceAccount"


# ----- discovery ----------------------------------------------------------------------------------


def test_discovery(kube):
    assert kube.request("GET", "/api")["versions"] == ["v1"]
    groups = {g["name"]: g for g in kube.request("GET", "/apis")["groups"]}
    assert {"regcache.io", "coordination.k8s.io", "events.k8s.io", "authentication.k8s.io",
            "authorization.k8s.io"} <= set(groups)
    assert groups["regcache.io"]["preferredVersion"] == {"groupVersion": "regcache.io/v1alpha1", "version": "v1alpha1"}
    assert kube.request("GET", "/apis/regcache.io")["kind"] == "APIGroup"
    resources = {r["name"]: r for r in kube.request("GET", "/apis/regcache.io/v1alpha1")["resources"]}
    assert resources["imagerepositorywatches"] | {"verbs": None} == {
        "name": "imagerepositorywatches", "singularName": "imagerepositorywatch", "namespaced": True,
        "kind": "ImageRepositoryWatch", "verbs": None, "shortNames": ["irw"], "categories": ["regcache"]}
    assert "watch" in resources["imagerepositorywatches"]["verbs"]
    assert resources["imagerepositorywatches/status"]["kind"] == "ImageRepositoryWatch"
    core = {r["name"] for r in kube.request("GET", "/api/v1")["resources"]}
    assert {"secrets", "serviceaccounts", "events"} <= core
    leases = kube.request("GET", "/apis/coordination.k8s.io/v1")["resources"]
    assert [r["name"] for r in leases] == ["leases"]
    assert kube.request("GET", "/version")["major"] == "1"
    with pytest.raises(ApiError) as info:
        kube.request("GET", "/apis/nonexistent.io/v1")
    assert info.value.status == 404


# ----- the CLI used by the Rust end-to-end tests -------------------------------------------------


def test_serve_cli_writes_port_and_kubeconfig_and_stops_on_sigterm(tmp_path):
    port_file, kubeconfig = tmp_path / "port", tmp_path / "kubeconfig"
    server_py = pathlib.Path(__file__).with_name("server.py")
    proc = Proc([sys.executable, server_py, "serve", "--port-file", port_file, "--kubeconfig", kubeconfig],
                tmp_path / "serve.log").start()
    try:
        wait_for(port_file.exists, timeout=20)
        port = int(port_file.read_text())
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == f"http://127.0.0.1:{port}"
        kube = KubeClient(f"http://127.0.0.1:{port}")
        kube.create(irw())
        assert kube.counters()["writes"] == {IRW: 1}
    finally:
        code = proc.stop(timeout=10)
    assert code == 0
    log = proc.log()
    assert "serving on" in log and "not-a-secret" not in log


def test_errors_are_kubernetes_status_objects_without_tracebacks(kube, server):
    response = kube.session.get(kube.url + kube.path("irw", NS, "missing"))
    assert response.status_code == 404
    body = response.json()
    assert body["kind"] == "Status" and body["code"] == 404 and body["reason"] == "NotFound"
    assert "traceback" not in json.dumps(body)
    assert server.emulator.errors == []  # API answers are not kept as server errors


def test_serve_cli_exits_when_stdin_closes(tmp_path):
    port_file = tmp_path / "port"
    server_py = pathlib.Path(__file__).with_name("server.py")
    proc = subprocess.Popen([sys.executable, str(server_py), "serve", "--port-file", str(port_file),
                             "--exit-on-stdin-eof"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        wait_for(port_file.exists, timeout=20)
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
