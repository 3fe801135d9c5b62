#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/seed-*.

The shapes follow what regcache really reads: manifests, indexes and configs as the test
pusher (tests/support/pusher.rs) and BuildKit/Docker produce them, challenges as Docker Hub,
GHCR, Quay, ECR and the distribution registry send them, docker configs as `docker login`,
`kubectl create secret docker-registry` and the legacy .dockercfg write them, and cache
values as regcache's own store writes them (docs/cache-schema.md). Crash inputs found by
fuzzing are added beside the seeds by hand (named crash-*) and are never rewritten here.

Run from the repository root: python3 fuzz/seed_corpus.py
"""
import base64
import hashlib
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def j(v, pretty=False):
    return json.dumps(v, indent=3 if pretty else None, separators=None if pretty else (",", ":"))


LAYER = b"regcache-test-layer"
D1 = sha(b"one")
D2 = sha(b"two")
D3 = sha(b"three")

# --- image_ref: references, repositories, digests, platforms, tags -------------------------
refs = [
    "nginx", "nginx:1.25", "library/nginx", "docker.io/library/nginx:latest",
    "index.docker.io/nginx", "registry-1.docker.io/bitnami/redis:7",
    "ghcr.io/org/app:v1@" + D1, "quay.io/a/b/c:tag", "localhost:5000/team/app",
    "127.0.0.1:5000/x", "[::1]:5000/x:y", "[fe80::1]/a", "Ghcr.IO/org/app",
    "example.com:8443/a__b/c-d/e.f:1.0-rc_1", "a" * 64, "Nginx", "nginx@" + D1,
    "sha512:" + hashlib.sha512(b"").hexdigest(), D1, "SHA256:" + "0" * 64, "md5:abc",
    "linux/amd64", "linux/arm/v7", "linux/arm64/v8", "windows/amd64", "linux/386",
    "darwin/aarch64/9.0", "linux/armhf", "linux/x86_64/v1", "v1.2.3-rc_1", "_", "-bad",
    "docker.io:443/nginx", "a/b/c/d/e/f", "x" * 250 + "/y",
]
for i, r in enumerate(refs):
    write("image_ref", f"{i:02}", r)

# --- www_authenticate ----------------------------------------------------------------------
challenges = [
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/nginx:pull"',
    'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/app:pull"',
    'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
    'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"',
    'Basic realm="Registry Realm"',
    "basic",
    'Bearer realm="http://127.0.0.1:5001/token",service="regcache-test",'
    'scope="repository:team/app:pull",error="insufficient_scope"',
    'Basic realm="x", Bearer realm="https://t/token"',
    'bearer  realm = https://t.example/token , service="a \\"b\\", c" ,error="invalid_token"',
    "Negotiate abc",
    "Bearer service=x",
]
for i, c in enumerate(challenges):
    write("www_authenticate", f"{i:02}", c)

# --- image_config (pusher's config_json and real-world variants) ---------------------------
layer_digest = sha(LAYER)
configs = [
    {"architecture": "amd64", "os": "linux", "created": "2024-04-01T12:00:00Z",
     "config": {"Labels": {"org.opencontainers.image.created": "2024-04-01T13:00:00Z",
                           "org.label-schema.build-date": "2024-04-01T14:00:00Z"}},
     "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
     "history": [{"created": "2024-04-01T12:00:00Z", "created_by": "regcache-test seed=1"}]},
    {"architecture": "arm", "variant": "v7", "os": "linux", "created": "2023-01-01T00:00:00.123456789+02:00",
     "config": {}, "container_config": {"Labels": {"maintainer": "x"}},
     "rootfs": {"type": "layers", "diff_ids": []}},
    {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.2113",
     "created": "2024-02-29T23:59:60Z", "config": {"Labels": None}},
    {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer_digest]}},
    {"created": "1970-01-01T00:00:00Z", "architecture": "arm64", "os": "linux", "variant": "v8"},
    {},
]
for i, c in enumerate(configs):
    write("image_config", f"{i:02}", j(c))
for i, t in enumerate(["2024-04-01T12:00:00Z", " 2024-04-01T12:00:00.5-07:00 ", "Mon Apr 1 2024",
                       "9999-12-31T23:59:59Z", "0000-01-01T00:00:00+23:59"]):
    write("image_config", f"time-{i:02}", t)

# --- manifest: first byte picks the media type (0..5 as MediaKind, 6 = detect) -------------
OCI_M = "application/vnd.oci.image.manifest.v1+json"
OCI_I = "application/vnd.oci.image.index.v1+json"
DKR_M = "application/vnd.docker.distribution.manifest.v2+json"
DKR_L = "application/vnd.docker.distribution.manifest.list.v2+json"
cfg = j(configs[0]).encode()


def image_manifest(mt, config_mt, layer_mt):
    return {"schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": config_mt, "digest": sha(cfg), "size": len(cfg)},
            "layers": [{"mediaType": layer_mt, "digest": sha(LAYER), "size": len(LAYER)}]}


oci = image_manifest(OCI_M, "application/vnd.oci.image.config.v1+json",
                     "application/vnd.oci.image.layer.v1.tar")
dkr = image_manifest(DKR_M, "application/vnd.docker.container.image.v1+json",
                     "application/vnd.docker.image.rootfs.diff.tar")


def index(mt, child):
    return {"schemaVersion": 2, "mediaType": mt, "manifests": [
        {"mediaType": child, "digest": D1, "size": 500,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": child, "digest": D2, "size": 501,
         "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
        {"mediaType": child, "digest": D3, "size": 502,
         "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.5206"}},
        {"mediaType": OCI_M, "digest": sha(b"att"), "size": 840,
         "annotations": {"vnd.docker.reference.digest": D1,
                         "vnd.docker.reference.type": "attestation-manifest"},
         "platform": {"architecture": "unknown", "os": "unknown"}},
    ]}


schema1_payload = j({"schemaVersion": 1, "name": "team/app", "tag": "v1", "architecture": "amd64",
                     "fsLayers": [{"blobSum": sha(LAYER)}],
                     "history": [{"v1Compatibility": j(configs[0])}]}, pretty=True).encode()
# A JWS-signed schema1: the protected header says how much of the body is the payload.
cut = schema1_payload.rstrip(b"}").rstrip()
tail = schema1_payload[len(cut):]
protected = base64.urlsafe_b64encode(j({"formatLength": len(cut),
                                        "formatTail": base64.urlsafe_b64encode(tail).decode().rstrip("="),
                                        "time": "2024-04-01T12:00:00Z"}).encode()).decode().rstrip("=")
signed = cut + b',\n   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", "protected": "' \
    + protected.encode() + b'"}]\n' + tail

manifests = [
    (0, j(oci, pretty=True)), (2, j(dkr, pretty=True)), (1, j(index(OCI_I, OCI_M), pretty=True)),
    (3, j(index(DKR_L, DKR_M))), (4, schema1_payload), (5, signed),
    (6, j(oci)), (6, j(index(OCI_I, OCI_M))), (6, schema1_payload), (6, signed),
    (6, j({"schemaVersion": 2, "config": oci["config"], "layers": []})),
    (0, j({"schemaVersion": 2, "mediaType": OCI_M, "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2},
           "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": D2, "size": 3,
                       "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDtest"}}],
           "subject": {"mediaType": OCI_M, "digest": D1, "size": 500}})),
    (6, OCI_I + "; charset=utf-8"),
]
for i, (sel, body) in enumerate(manifests):
    if isinstance(body, str):
        body = body.encode()
    write("manifest", f"{i:02}", bytes([sel]) + body)

# --- docker_config -------------------------------------------------------------------------
def b64(s):
    return base64.b64encode(s.encode()).decode()


docker_configs = [
    {"auths": {"https://index.docker.io/v1/": {"auth": b64("user:dckr_pat_abcdef")}}},
    {"auths": {"ghcr.io": {"username": "bot", "password": "ghp_0123456789abcdef",
                           "auth": b64("bot:ghp_0123456789abcdef")}}},
    {"auths": {"123456789012.dkr.ecr.us-east-1.amazonaws.com": {"auth": b64("AWS:eyJwYXlsb2FkIjoi")}},
     "credHelpers": {"public.ecr.aws": "ecr-login"}, "credsStore": "desktop"},
    {"auths": {"myregistry.azurecr.io": {"identitytoken": "eyJhbGciOiJSUzI1NiJ9.refresh"}}},
    {"auths": {"registry.example.com:5000": {"registrytoken": "bearer-token-value"},
               "http://127.0.0.1:5000/v2/": {"auth": b64("a:b:c")}}},
    {"auths": {"quay.io": {"auth": "bm90LWJhc2U2NA"}}},
    {"auths": {"quay.io": {"auth": b64("no-colon")}}},
    {"auths": {}},
    {"https://index.docker.io/v1/": {"auth": b64("legacy:secret"), "email": "a@example.com"}},
    {"registry.example.com": {"username": "u", "password": "p"}},
]
for i, c in enumerate(docker_configs):
    write("docker_config", f"{i:02}", j(c, pretty=i % 2 == 0))

# --- cache_value: framed values as the backends store them, and foreign ones ---------------
def frame(deadline_ms, payload):
    return b"RC\x01" + struct.pack(">q", deadline_ms) + payload


head = {"canonicalName": "ghcr.io/org/app", "generation": 1714572000000, "chunks": 2, "tagCount": 3,
        "lastUpdate": "2024-05-01T14:00:00Z"}
values = [frame(1714575600000, j(head).encode()), frame(0, b""), frame(-1, b"\xff" * 4),
          b"RC\x02" + b"\0" * 8, b"RC\x01", b"hello", b"pub", b"p0123456789abcdef01234567", b"P0123456789ABCDEF01234567"]
for i, v in enumerate(values):
    write("cache_value", f"{i:02}", v)

# --- cache_store: head \0 chunk \0 image record --------------------------------------------
chunk = {"generation": 1714572000000, "index": 0, "tags": [
    {"tag": "v1", "digest": D1, "fetched": 1714572000000, "deadline": 1714575600000, "interval": 3600000},
    {"tag": "latest", "digest": D1, "fetched": 1714572000000, "deadline": 1714575600000, "interval": 3600000},
    {"tag": "gone", "fetched": 1714572000000, "deadline": 1714575600000, "interval": 600000}]}
record = {"digest": D1, "mediaType": OCI_I, "created": "2024-04-01T12:00:00Z",
          "labels": {"org.opencontainers.image.created": "2024-04-01T13:00:00Z"},
          "platforms": [{"platform": {"os": "linux", "architecture": "amd64"}, "digest": D2,
                         "mediaType": OCI_M, "configDigest": D3, "created": "2024-04-01T12:00:00Z",
                         "labels": {}},
                        {"platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
                         "digest": D3, "mediaType": OCI_M, "labels": {}, "configMissing": True}],
          "availablePlatforms": [{"os": "linux", "architecture": "amd64"},
                                 {"os": "linux", "architecture": "arm", "variant": "v7"}]}
one_chunk_head = dict(head, chunks=1)
stores = [
    j(one_chunk_head) + "\0" + j(chunk) + "\0" + j(record),
    j(dict(head, lastUpdate=None, lastError="registry ghcr.io answered 401", generation=0, chunks=0)),
    j(one_chunk_head) + "\0" + j(dict(chunk, generation=7)),
    j(one_chunk_head) + "\0" + j(chunk) + "\0" + "{}",
    "not json\0[]\0null",
]
for i, s in enumerate(stores):
    write("cache_store", f"{i:02}", s)

# --- webhook -------------------------------------------------------------------------------
hooks = [
    {"events": [
        {"id": "a", "timestamp": "2024-04-01T12:00:00Z", "action": "push",
         "target": {"mediaType": OCI_M, "size": 500, "digest": D1, "length": 500,
                    "repository": "team/app", "url": "http://127.0.0.1:5000/v2/team/app/manifests/" + D1,
                    "tag": "v2"},
         "request": {"id": "r", "addr": "127.0.0.1:40000", "host": "127.0.0.1:5000", "method": "PUT",
                     "useragent": "regcache-test"},
         "actor": {}, "source": {"addr": "reg:5000", "instanceID": "i"}},
        {"action": "pull", "target": {"repository": "team/other"}, "request": {"host": "127.0.0.1:5000"}},
        {"action": "push", "target": {"repository": "x", "url": "https://reg.example.com:8443/v2/x/manifests/" + D2}}]},
    {"callback_url": "https://registry.hub.docker.com/u/org/app/hook/x/", "push_data": {"pushed_at": 1712000000,
     "pusher": "org", "tag": "v1"}, "repository": {"repo_name": "org/app", "namespace": "org", "name": "app"}},
    {"type": "PUSH_ARTIFACT", "occur_at": 1712000000, "operator": "admin", "event_data": {"resources": [
        {"digest": D1, "tag": "v1", "resource_url": "harbor.example.com/proj/app:v1"}],
        "repository": {"name": "app", "namespace": "proj", "repo_full_name": "proj/app", "repo_type": "private"}}},
    {"type": "DELETE_ARTIFACT", "event_data": {"resources": []}},
    {"events": {}},
]
for i, h in enumerate(hooks):
    write("webhook", f"{i:02}", j(h))

# --- tag_glob: the pattern, then one tag per line --------------------------------------------
globs = {
    "star": ["v*", "v1", "v1.2.3", "1.0", "v"],
    "signature": ["sha256-*.sig", "sha256-abc.sig", "sha256-.sig", "sha256-abc.sig2", "latest"],
    "group-set": ["{v,release-}[0-9]*.?", "v1.2", "release-3.x", "rc-1.2", "v.1"],
    "negated": ["[!a-c]*-rc[0-9]", "d-rc1", "a-rc1", "]-rc9", "--rc0"],
    "literal-edges": ["[]a-]\\*{a,{b,c}d}?", "]*cdx", "-*ax", "a*bdz"],
    "backtrack": ["*a*b*c", "xxaxxbxxbxc", "abcabc", "acb", ""],
    "ranges": ["[a-c-e][--0]x", "dx", "e/x", "a-x"],
}
for name, lines in globs.items():
    write("tag_glob", name, "\n".join(lines))
