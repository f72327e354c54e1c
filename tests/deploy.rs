//! The Kubernetes manifests in `deploy/` fit together: every document is well-formed, the
//! engine's hostfile names each StatefulSet pod through its headless Service, `-n` equals
//! the replica count, services select real pods and named ports exist, probes hit
//! `/healthz` on a served port, and every configuration variable is a key Clickflow accepts.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// YAML as JSON, for indexing.
fn json_of(y: &Yaml) -> Value {
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or(json!(r)),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(json_of).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, json_of(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unexpected YAML node {other:?}"),
    }
}

fn documents() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        docs.extend(parsed.iter().map(json_of));
    }
    assert!(!docs.is_empty(), "no manifests in deploy/");
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The containers of a workload's pod template.
fn containers(workload: &Value) -> &Vec<Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The named ports of a workload's containers: name → number.
fn ports(workload: &Value) -> BTreeMap<String, i64> {
    containers(workload)
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_document_is_a_known_kind_with_a_name() {
    let known = [
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("v1", "PersistentVolumeClaim"),
    ];
    let mut names = std::collections::BTreeSet::new();
    for d in documents() {
        let (api, kind) = (d["apiVersion"].as_str(), d["kind"].as_str());
        assert!(
            known
                .iter()
                .any(|(a, k)| Some(*a) == api && Some(*k) == kind),
            "unknown apiVersion/kind: {api:?} {kind:?}"
        );
        let name = d["metadata"]["name"].as_str().expect("metadata.name");
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name} is not a DNS label"
        );
        assert!(
            names.insert((kind.unwrap().to_string(), name.to_string())),
            "{kind:?} {name} twice"
        );
    }
}

#[test]
fn the_engine_hostfile_names_every_pod_of_the_statefulset() {
    let docs = documents();
    let engine = find(&docs, "StatefulSet", "clickflow-engine");
    let spec = &engine["spec"];
    let replicas = spec["replicas"].as_i64().expect("replicas");
    assert!(replicas >= 1);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    assert!(labels_match(
        &spec["selector"]["matchLabels"],
        &spec["template"]["metadata"]["labels"]
    ));
    // A headless Service of the same name gives the pods their stable DNS names.
    let service_name = spec["serviceName"].as_str().expect("serviceName");
    let service = find(&docs, "Service", service_name);
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    assert!(labels_match(
        &service["spec"]["selector"],
        &spec["template"]["metadata"]["labels"]
    ));

    let container = &containers(engine)[0];
    let script = container["args"][0]
        .as_str()
        .expect("the engine's command line");
    let words: Vec<&str> = script.split_whitespace().collect();
    let flag = |f: &str| {
        words
            .iter()
            .position(|w| *w == f)
            .and_then(|i| words.get(i + 1))
            .unwrap_or_else(|| panic!("{f} missing from {script}"))
            .trim_matches('"')
    };
    assert_eq!(words[..3], ["exec", "clickflow", "engine"]);
    assert_eq!(flag("-n"), replicas.to_string(), "-n is the replica count");
    assert_eq!(
        flag("-p"),
        "${HOSTNAME##*-}",
        "the pod ordinal is the process index"
    );
    let hostfile = Path::new(flag("-h"));

    // The hostfile comes from a ConfigMap mounted where -h points.
    let volume_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| hostfile.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the hostfile's directory is mounted");
    let volume = spec["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == volume_mount["name"])
        .expect("the mounted volume");
    let hosts = find(
        &docs,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    let file = hostfile.file_name().unwrap().to_str().unwrap();
    let lines: Vec<&str> = hosts["data"][file]
        .as_str()
        .expect("hostfile in the ConfigMap")
        .lines()
        .collect();
    let timely = ports(engine)["timely"];
    let namespace = "default";
    let want: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "{}-{i}.{service_name}.{namespace}.svc.cluster.local:{timely}",
                engine["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(lines, want);

    // Its probe reaches the --metrics-listen port, where the engine serves /healthz.
    let metrics: std::net::SocketAddr = flag("--metrics-listen").parse().unwrap();
    let probe = &container["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    assert_eq!(
        ports(engine)[probe["port"].as_str().unwrap()],
        metrics.port() as i64
    );

    // Every flag the manifest passes is one the binary knows.
    let help = Command::new(env!("CARGO_BIN_EXE_clickflow"))
        .args(["engine", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for f in words.iter().filter(|w| w.starts_with('-')) {
        assert!(help.contains(*f), "clickflow engine has no {f}: {help}");
    }
}

#[test]
fn services_select_pods_and_probes_reach_healthz() {
    let docs = documents();
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .collect();
    for service in docs.iter().filter(|d| d["kind"] == "Service") {
        let name = &service["metadata"]["name"];
        let selected: Vec<&&Value> = workloads
            .iter()
            .filter(|w| {
                labels_match(
                    &service["spec"]["selector"],
                    &w["spec"]["template"]["metadata"]["labels"],
                )
            })
            .collect();
        assert_eq!(selected.len(), 1, "service {name} selects one workload");
        let named = ports(selected[0]);
        for p in service["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().expect("named targetPort");
            assert!(named.contains_key(target), "{name}: no port {target}");
        }
    }
    let collector = find(&docs, "Deployment", "clickflow-collector");
    assert!(labels_match(
        &collector["spec"]["selector"]["matchLabels"],
        &collector["spec"]["template"]["metadata"]["labels"]
    ));
    let c = &containers(collector)[0];
    assert_eq!(c["args"], json!(["serve"]));
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        let port = ports(collector)[get["port"].as_str().unwrap()];
        // The collector listens where the configuration says.
        let config = find(&docs, "ConfigMap", "clickflow-config");
        let listen: std::net::SocketAddr = config["data"]["CLICKFLOW__COLLECTOR__LISTEN"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(port, listen.port() as i64, "{probe}");
    }
}

#[test]
fn every_configuration_variable_is_a_key_clickflow_accepts() {
    let docs = documents();
    let mut overrides = Vec::new();
    let mut secrets = std::collections::BTreeSet::new();
    let config = find(&docs, "ConfigMap", "clickflow-config");
    for (k, v) in config["data"].as_object().unwrap() {
        if let Some(path) = k.strip_prefix("CLICKFLOW__") {
            overrides.push(format!(
                "{}={}",
                path.to_lowercase().replace("__", "."),
                v.as_str().unwrap()
            ));
        } else {
            assert!(["RUST_LOG"].contains(&k.as_str()), "unknown variable {k}");
        }
    }
    for w in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("Deployment" | "StatefulSet" | "Job")
        )
    }) {
        for c in containers(w) {
            for from in c["envFrom"].as_array().into_iter().flatten() {
                find(
                    &docs,
                    "ConfigMap",
                    from["configMapRef"]["name"].as_str().unwrap(),
                );
            }
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                let secret = &e["valueFrom"]["secretKeyRef"];
                secrets.insert(secret["name"].as_str().unwrap().to_string());
                match name.strip_prefix("CLICKFLOW__") {
                    Some(path) => overrides.push(format!(
                        "{}=\"from-a-secret\"",
                        path.to_lowercase().replace("__", ".")
                    )),
                    None => assert_eq!(name, "DATABASE_URL"),
                }
            }
        }
    }
    assert_eq!(
        secrets.into_iter().collect::<Vec<_>>(),
        ["clickflow-secrets"],
        "one Secret, documented in deploy/README.md"
    );
    let loaded = clickflow::config::Config::load(None, &overrides)
        .unwrap_or_else(|e| panic!("{overrides:?}: {e:#}"));
    assert_eq!(loaded.log.kind, "kafka");
}

/// One archiver (it takes a lock: two would wait or fail), replaced rather than rolled, with
/// flags the binary knows; every pod that reads the archive mounts the claim where
/// `archive.url` points.
#[test]
fn the_archiver_runs_once_and_every_reader_mounts_the_archive() {
    let docs = documents();
    let archiver = find(&docs, "Deployment", "clickflow-archiver");
    assert_eq!(archiver["spec"]["replicas"], json!(1));
    assert_eq!(archiver["spec"]["strategy"]["type"], "Recreate");
    let c = &containers(archiver)[0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "archive");
    let help = Command::new(env!("CARGO_BIN_EXE_clickflow"))
        .args(["archive", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for flag in args[1..].iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "clickflow archive has no {flag}:\n{help}"
        );
    }
    let config = find(&docs, "ConfigMap", "clickflow-config");
    let url = config["data"]["CLICKFLOW__ARCHIVE__URL"].as_str().unwrap();
    let claim = find(&docs, "PersistentVolumeClaim", "clickflow-archive");
    assert!(claim["spec"]["accessModes"]
        .as_array()
        .unwrap()
        .contains(&json!("ReadWriteMany")));
    for (kind, name) in [
        ("Deployment", "clickflow-archiver"),
        ("StatefulSet", "clickflow-engine"),
    ] {
        let w = find(&docs, kind, name);
        let volume = w["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["persistentVolumeClaim"]["claimName"] == "clickflow-archive")
            .unwrap_or_else(|| panic!("{name} has no archive volume"));
        let mounted = containers(w)[0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == volume["name"] && m["mountPath"] == url);
        assert!(mounted, "{name} mounts the archive at {url}");
    }
}
