use super::*;

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, LocalObjectReference};

fn repo(s: &str) -> Repository {
    Repository::parse(s).unwrap()
}

fn spec(containers: &[&str], init: &[&str], secrets: &[&str], account: Option<&str>) -> PodSpec {
    let container = |i: &&str| Container {
        name: "c".into(),
        image: Some(i.to_string()),
        ..Container::default()
    };
    PodSpec {
        containers: containers.iter().map(container).collect(),
        init_containers: Some(init.iter().map(container).collect()),
        ephemeral_containers: Some(vec![EphemeralContainer {
            name: "debug".into(),
            image: Some("busybox:1.36".into()),
            ..EphemeralContainer::default()
        }]),
        image_pull_secrets: Some(
            secrets
                .iter()
                .map(|s| LocalObjectReference {
                    name: s.to_string(),
                })
                .collect(),
        ),
        service_account_name: account.map(str::to_string),
        ..PodSpec::default()
    }
}

#[test]
fn a_pod_spec_uses_its_containers_repositories_by_repository() {
    let s = spec(
        &[
            "nginx:1.25",
            "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "docker.io/library/nginx:1.26",
            "not a valid image",
        ],
        &["registry.example.com:5000/team/init:v1"],
        &["regcred", ""],
        Some("builder"),
    );
    let u = pod_use(&s, false);
    let names: Vec<String> = u.repositories.iter().map(Repository::canonical).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/busybox",
            "docker.io/library/nginx",
            "ghcr.io/org/app",
            "registry.example.com:5000/team/init",
        ]
    );
    assert_eq!(u.pull_secrets.iter().collect::<Vec<_>>(), ["regcred"]);
    assert_eq!(u.service_account.as_deref(), Some("builder"));
    // A Pod a workload owns adds only its ephemeral containers.
    let owned = pod_use(&s, true);
    assert_eq!(
        owned.repositories.into_iter().collect::<Vec<_>>(),
        [repo("busybox")]
    );
    // The default ServiceAccount is not named.
    assert_eq!(
        pod_use(&spec(&["nginx"], &[], &[], Some("default")), false).service_account,
        None
    );
}

#[test]
fn watch_names_are_dns_labels_and_distinct() {
    assert_eq!(
        watch_name(&repo("nginx")),
        format!(
            "docker-io-library-nginx-{}",
            &hex::encode(sha2::Sha256::digest(b"docker.io/library/nginx"))[..10]
        )
    );
    let long = repo(&format!("ghcr.io/{}", ["segment"; 30].join("/")));
    let a = repo("ghcr.io/a/b-c");
    let b = repo("ghcr.io/a/b/c");
    for r in [&long, &a, &b, &repo("127.0.0.1:5000/app-server__v2.x")] {
        let n = watch_name(r);
        assert!(n.len() <= 63, "{n}");
        assert!(
            n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
            "{n}"
        );
        assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
    }
    assert_ne!(
        watch_name(&a),
        watch_name(&b),
        "same slug, different repositories"
    );
    assert_eq!(
        watch_name(&repo("docker.io/library/nginx")),
        watch_name(&repo("nginx"))
    );
}

#[test]
fn namespace_annotations_set_defaults_and_bad_ones_are_named() {
    let labels = BTreeMap::from([(DISCOVER_LABEL.to_string(), "true".to_string())]);
    let annotations = BTreeMap::from([
        (INTERVAL_ANNOTATION.to_string(), "10m".to_string()),
        (MAX_TAGS_ANNOTATION.to_string(), "50".to_string()),
        (
            PLATFORMS_ANNOTATION.to_string(),
            "linux/amd64, linux/arm64".to_string(),
        ),
    ]);
    let s = NamespaceSettings::from_metadata(&labels, &annotations);
    assert_eq!(
        s,
        NamespaceSettings {
            labelled: true,
            interval: Some("10m".into()),
            max_tags: Some(50),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            problems: vec![],
        }
    );
    let bad = BTreeMap::from([
        (INTERVAL_ANNOTATION.to_string(), "5s".to_string()),
        (MAX_TAGS_ANNOTATION.to_string(), "lots".to_string()),
        (PLATFORMS_ANNOTATION.to_string(), "linux".to_string()),
    ]);
    let s = NamespaceSettings::from_metadata(&BTreeMap::new(), &bad);
    assert!(!s.labelled);
    assert_eq!((s.interval, s.max_tags, s.platforms.len()), (None, None, 0));
    assert_eq!(s.problems.len(), 3, "{:?}", s.problems);
    assert!(s.problems[0].starts_with("annotation regcache.io/discoveryInterval \"5s\""));
    assert!(s.problems[1].contains("expected a number"));
    assert!(s.problems[2].starts_with("annotation regcache.io/discoveryPlatforms \"linux\""));
}

const NOW: &str = "2026-12-01T12:00:00Z";

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .unwrap()
        .with_timezone(&Utc)
}

fn options(scope: Scope) -> Options {
    Options {
        scope,
        grace_period: Duration::from_secs(600),
        insecure_registries: vec!["127.0.0.1:5000".into()],
        max_tags: Some(20),
    }
}

fn use_of(images: &[&str], secrets: &[&str], account: Option<&str>) -> PodUse {
    let mut u = pod_use(&spec(images, &[], secrets, account), false);
    u.repositories.remove(&repo("busybox"));
    u
}

fn applied(steps: &[Step]) -> BTreeMap<String, Owned> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply {
                namespace,
                name,
                owned,
            } => Some((format!("{namespace}/{name}"), owned.clone())),
            Step::Delete { .. } => None,
        })
        .collect()
}

#[test]
fn each_repository_in_use_becomes_one_watch_with_its_workloads_secrets() {
    let web = use_of(&["127.0.0.1:5000/web:v1", "nginx:1.25"], &["regcred"], None);
    let worker = use_of(&["127.0.0.1:5000/web:v2"], &["other"], Some("builder"));
    let elsewhere = use_of(&["redis:7"], &[], None);
    let namespaces = HashMap::from([
        (
            "team".to_string(),
            NamespaceSettings {
                labelled: true,
                interval: Some("10m".into()),
                ..NamespaceSettings::default()
            },
        ),
        ("quiet".to_string(), NamespaceSettings::default()),
    ]);
    let discovered = BTreeMap::new();
    let world = World {
        uses: vec![("team", &web), ("team", &worker), ("quiet", &elsewhere)],
        namespaces: &namespaces,
        hand_written: vec![],
        discovered: &discovered,
    };
    let (first, next) = steps(&world, &options(Scope::Labelled), now());
    assert_eq!(next, None);
    let created = applied(&first);
    let web_name = format!("team/{}", watch_name(&repo("127.0.0.1:5000/web")));
    let nginx_name = format!("team/{}", watch_name(&repo("nginx")));
    assert_eq!(
        created.keys().collect::<Vec<_>>(),
        [&web_name, &nginx_name]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "the unlabelled namespace is left alone"
    );
    let web_watch = &created[&web_name];
    assert_eq!(web_watch.spec.image, "127.0.0.1:5000/web");
    assert_eq!(
        web_watch.spec.pull_secrets,
        [
            SecretReference::new("other"),
            SecretReference::new("regcred")
        ]
    );
    assert_eq!(
        web_watch.spec.service_account_name.as_deref(),
        Some("builder")
    );
    assert!(web_watch.spec.insecure);
    assert_eq!(web_watch.spec.interval.as_deref(), Some("10m"));
    assert_eq!(
        web_watch.spec.tags.as_ref().and_then(|t| t.max_tags),
        Some(20)
    );
    let nginx = &created[&nginx_name];
    assert!(!nginx.spec.insecure);
    assert_eq!(nginx.spec.image, "docker.io/library/nginx");

    // Everything in place: nothing to write. With scope All, the quiet namespace counts.
    let discovered: BTreeMap<(String, String), Existing> = created
        .iter()
        .map(|(k, owned)| {
            let (ns, name) = k.split_once('/').unwrap();
            (
                (ns.to_string(), name.to_string()),
                Existing {
                    uid: Some(format!("uid-{name}")),
                    owned: owned.clone(),
                },
            )
        })
        .collect();
    let world = World {
        discovered: &discovered,
        ..world
    };
    assert_eq!(steps(&world, &options(Scope::Labelled), now()).0, vec![]);
    let (all, _) = steps(&world, &options(Scope::All), now());
    assert_eq!(
        applied(&all).keys().collect::<Vec<_>>(),
        [&format!("quiet/{}", watch_name(&repo("redis")))]
    );
}

#[test]
fn unused_watches_are_marked_then_deleted_after_the_grace_period_and_hand_written_ones_win() {
    let namespaces = HashMap::from([(
        "team".to_string(),
        NamespaceSettings {
            labelled: true,
            ..NamespaceSettings::default()
        },
    )]);
    let app = use_of(&["ghcr.io/org/app:v1", "ghcr.io/org/sidecar:v1"], &[], None);
    let name = |r: &str| watch_name(&repo(r));
    let owned = |image: &str, since: Option<&str>| Owned {
        spec: ImageRepositoryWatchSpec {
            image: image.to_string(),
            tags: Some(TagsSpec {
                max_tags: Some(20),
                ..TagsSpec::default()
            }),
            ..ImageRepositoryWatchSpec::default()
        },
        unused_since: since.map(str::to_string),
    };
    let key = |r: &str| ("team".to_string(), name(r));
    let discovered = BTreeMap::from([
        (
            key("ghcr.io/org/app"),
            Existing {
                uid: Some("u1".into()),
                owned: owned("ghcr.io/org/app", None),
            },
        ),
        // In use again: the mark goes.
        (
            key("ghcr.io/org/sidecar"),
            Existing {
                uid: Some("u2".into()),
                owned: owned("ghcr.io/org/sidecar", Some("2026-12-01T11:59:00Z")),
            },
        ),
        // Unused, not marked yet.
        (
            key("ghcr.io/org/old"),
            Existing {
                uid: Some("u3".into()),
                owned: owned("ghcr.io/org/old", None),
            },
        ),
        // Unused for 5 of its 10 minutes.
        (
            key("ghcr.io/org/fading"),
            Existing {
                uid: Some("u4".into()),
                owned: owned("ghcr.io/org/fading", Some("2026-12-01T11:55:00Z")),
            },
        ),
        // Unused for 10 minutes.
        (
            key("ghcr.io/org/gone"),
            Existing {
                uid: Some("u5".into()),
                owned: owned("ghcr.io/org/gone", Some("2026-12-01T11:50:00Z")),
            },
        ),
        // A hand-written watch covers it now.
        (
            key("ghcr.io/org/mine"),
            Existing {
                uid: Some("u6".into()),
                owned: owned("ghcr.io/org/mine", None),
            },
        ),
    ]);
    let mine = use_of(&["ghcr.io/org/mine:v1"], &[], None);
    let world = World {
        uses: vec![("team", &app), ("team", &mine)],
        namespaces: &namespaces,
        hand_written: vec![("team", "my-own", "ghcr.io/org/mine")],
        discovered: &discovered,
    };
    let (steps, next) = steps(&world, &options(Scope::Labelled), now());
    let applied = applied(&steps);
    assert_eq!(
        applied.keys().cloned().collect::<Vec<_>>(),
        [
            format!("team/{}", name("ghcr.io/org/old")),
            format!("team/{}", name("ghcr.io/org/sidecar")),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(
        applied[&format!("team/{}", name("ghcr.io/org/old"))]
            .unused_since
            .as_deref(),
        Some(NOW)
    );
    assert_eq!(
        applied[&format!("team/{}", name("ghcr.io/org/sidecar"))].unused_since,
        None
    );
    let deleted: BTreeSet<(String, Option<String>)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Delete { name, uid, .. } => Some((name.clone(), uid.clone())),
            Step::Apply { .. } => None,
        })
        .collect();
    assert_eq!(
        deleted,
        BTreeSet::from([
            (name("ghcr.io/org/gone"), Some("u5".to_string())),
            (name("ghcr.io/org/mine"), Some("u6".to_string())),
        ])
    );
    // Look again when the fading watch's grace period ends.
    assert_eq!(
        next.map(|n| n.to_rfc3339()),
        Some("2026-12-01T12:05:00+00:00".to_string())
    );
}

#[test]
fn a_hand_written_watch_of_the_same_name_is_never_touched() {
    let namespaces = HashMap::new();
    let u = use_of(&["ghcr.io/org/app:v1"], &[], None);
    let name = watch_name(&repo("ghcr.io/org/app"));
    let discovered = BTreeMap::new();
    let world = World {
        uses: vec![("team", &u)],
        namespaces: &namespaces,
        // Same name, another repository: discovery leaves it and makes nothing.
        hand_written: vec![("team", name.as_str(), "ghcr.io/org/other")],
        discovered: &discovered,
    };
    assert_eq!(steps(&world, &options(Scope::All), now()).0, vec![]);
}
