//! The deploy files (deploy/) checked as far as they can be without Docker or a cluster: every YAML parses,
//! the manifests reference the port, paths, secrets and settings the binary really uses, every
//! `DEVIN_ETL__…` variable they set is a valid setting with a valid value, the systemd unit carries its
//! hardening, and the Dockerfile runs as a non-root user.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use devin_etl::settings::{Settings, parse_duration};
use serde::Deserialize as _;
use serde_yaml::Value;

const PORT: u64 = 9187;
const PROBE_PATHS: &[&str] = &["/healthz", "/readyz"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    out.sort();
}

/// Every document of a (multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn k8s_documents() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy/k8s"), &mut files);
    files
        .iter()
        .flat_map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            documents(f).into_iter().map(move |d| (name.clone(), d))
        })
        .collect()
}

fn of_kind(docs: &[(String, Value)], kind: &str) -> Vec<Value> {
    docs.iter().filter(|(_, d)| d["kind"].as_str() == Some(kind)).map(|(_, d)| d.clone()).collect()
}

fn one_of_kind(docs: &[(String, Value)], kind: &str) -> Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/k8s, found {}", found.len());
    found.into_iter().next().unwrap()
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A throwaway file for loading settings.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::common::unique_name("devin-etl-deploy"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Loads a configuration file layered over the defaults, as `--config` would.
fn settings_from_file(toml: &str) -> Settings {
    let path = temp_file("config.toml", toml);
    let settings = Settings::load_with_env(Some(&path), |_| None);
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
    settings.unwrap_or_else(|e| panic!("invalid configuration: {e}\n{toml}"))
}

/// Validates environment variables as the binary reads them: every `DEVIN_ETL__SECTION__KEY` must name a
/// setting and carry a valid value (they are turned into a file with the config crate's `try_parsing` typing),
/// `DATABASE_URL` and `DEVIN_API_TOKEN` go through the conventional-name path. A token file path must be
/// absolute; a file with a token stands in for it.
fn settings_from_env(origin: &str, vars: &BTreeMap<String, String>) -> Settings {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let token_file = temp_file("token", "cog_deploy_test_token");
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("DEVIN_ETL__") else { continue };
        let parts: Vec<&str> = rest.split("__").collect();
        assert_eq!(parts.len(), 2, "{origin}: {name} is not DEVIN_ETL__SECTION__KEY");
        let (section, key) = (parts[0].to_lowercase(), parts[1].to_lowercase());
        let value = if (section.as_str(), key.as_str()) == ("api", "token_file") {
            assert!(value.starts_with('/') || value.starts_with("%d/"), "{origin}: {name}={value} is not absolute");
            token_file.display().to_string()
        } else {
            value.clone()
        };
        let typed =
            if value == "true" || value == "false" || value.parse::<i64>().is_ok() || value.parse::<f64>().is_ok() {
                value
            } else {
                format!("{value:?}")
            };
        sections.entry(section).or_default().push(format!("{key} = {typed}"));
    }
    let toml: String = sections.iter().map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n"))).collect();
    let path = temp_file("env.toml", &toml);
    let settings = Settings::load_with_env(Some(&path), |name| vars.get(name).cloned());
    std::fs::remove_dir_all(path.parent().unwrap()).ok();
    std::fs::remove_dir_all(token_file.parent().unwrap()).ok();
    settings.unwrap_or_else(|e| panic!("{origin}: the environment it sets is invalid: {e}\n{toml}"))
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&repo().join("deploy"), &mut files);
    assert!(files.iter().any(|f| f.ends_with("deploy/docker-compose.yml")), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("deploy/k8s/deployment.yaml")), "{files:?}");
    for file in &files {
        let docs = documents(file);
        assert!(!docs.is_empty(), "{} is empty", file.display());
        for doc in docs {
            assert!(doc.is_mapping(), "{}: a document is not a mapping", file.display());
        }
    }
}

#[test]
fn the_default_configuration_listens_on_the_documented_port() {
    let settings = Settings::load_with_env(None, |_| None).unwrap();
    assert_eq!(u64::from(settings.server.listen.expect("server.listen is set").port()), PORT);
}

/// The pod template's checks shared by the Deployment and the backfill Job.
fn check_pod(what: &str, template: &Value, secret: &Value, configmap: &Value) -> Settings {
    let spec = &template["spec"];
    let containers = seq(&spec["containers"]);
    assert_eq!(containers.len(), 1, "{what}: one container");
    let c = &containers[0];

    // Non-root, read-only, nothing to escalate.
    assert_eq!(spec["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{what}: runAsNonRoot");
    assert!(spec["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0), "{what}: runAsUser");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true), "{what}");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false), "{what}");
    assert!(seq(&c["securityContext"]["capabilities"]["drop"]).iter().any(|v| v.as_str() == Some("ALL")), "{what}");
    for part in ["requests", "limits"] {
        assert!(c["resources"][part]["memory"].as_str().is_some(), "{what}: resources.{part}.memory");
    }

    // Environment: DATABASE_URL from the Secret, the token as a file mounted from the Secret, the config file
    // from the ConfigMap.
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let secret_keys: BTreeSet<&str> =
        secret["stringData"].as_mapping().unwrap().keys().filter_map(Value::as_str).collect();
    let env: BTreeMap<String, &Value> =
        seq(&c["env"]).iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e)).collect();
    let db = &env.get("DATABASE_URL").unwrap_or_else(|| panic!("{what}: DATABASE_URL"))["valueFrom"]["secretKeyRef"];
    assert_eq!(db["name"].as_str(), Some(secret_name), "{what}: DATABASE_URL comes from the Secret");
    assert!(secret_keys.contains(db["key"].as_str().unwrap()), "{what}: DATABASE_URL key is in the Secret");
    assert!(!env.contains_key("DEVIN_API_TOKEN"), "{what}: the token is a file, not a variable");

    let volumes: BTreeMap<&str, &Value> =
        seq(&spec["volumes"]).iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    let mounts: Vec<(&str, &str)> = seq(&c["volumeMounts"])
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    // The volume and item that provide a file at `path`.
    let file_source = |path: &str| -> (&Value, String) {
        let (dir, file) = path.rsplit_once('/').unwrap();
        let (volume, _) =
            mounts.iter().find(|(_, at)| *at == dir).unwrap_or_else(|| panic!("{what}: no mount at {dir}"));
        let volume = volumes[volume];
        let item = ["secret", "configMap"]
            .iter()
            .flat_map(|kind| seq(&volume[kind]["items"]))
            .find(|i| i["path"].as_str() == Some(file))
            .unwrap_or_else(|| panic!("{what}: {path} is not an item of volume {volume:?}"));
        (volume, item["key"].as_str().unwrap().to_owned())
    };

    let token_path =
        str_of(&env.get("DEVIN_ETL__API__TOKEN_FILE").unwrap_or_else(|| panic!("{what}: token file"))["value"]);
    let (volume, key) = file_source(&token_path);
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some(secret_name),
        "{what}: the token file comes from the Secret"
    );
    assert!(secret_keys.contains(key.as_str()), "{what}: token key {key} is in the Secret");
    // The pod's group must be able to read the mounted token (fsGroup + group-readable mode).
    let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    assert!(mode & 0o040 != 0 && spec["securityContext"]["fsGroup"].as_u64().is_some(), "{what}: token unreadable");
    assert_eq!(mode & 0o007, 0, "{what}: the token is not world-readable");

    let config_path =
        str_of(&env.get("DEVIN_ETL_CONFIG").unwrap_or_else(|| panic!("{what}: DEVIN_ETL_CONFIG"))["value"]);
    let (volume, key) = file_source(&config_path);
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"], "{what}: config from the ConfigMap");
    let config_text = configmap["data"][key.as_str()].as_str().unwrap_or_else(|| panic!("ConfigMap lacks {key}"));

    // Every DEVIN_ETL__ variable is a valid setting; the ConfigMap is a valid configuration file.
    let vars: BTreeMap<String, String> = env
        .iter()
        .filter(|(name, _)| name.starts_with("DEVIN_ETL__"))
        .map(|(name, e)| (name.clone(), str_of(&e["value"])))
        .collect();
    settings_from_env(what, &vars);
    let settings = settings_from_file(config_text);

    // Longer than the shutdown grace, so a run can finish its page before the kill.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(Duration::from_secs(grace) > settings.sync.shutdown_grace, "{what}: terminationGracePeriodSeconds");
    settings
}

#[test]
fn kubernetes_manifests_wire_port_probes_secret_and_config() {
    let docs = k8s_documents();
    let deployment = one_of_kind(&docs, "Deployment");
    let secret = one_of_kind(&docs, "Secret");
    let configmap = one_of_kind(&docs, "ConfigMap");
    let service = one_of_kind(&docs, "Service");
    let job = one_of_kind(&docs, "Job");
    for (_, doc) in &docs {
        assert!(doc["metadata"]["namespace"].is_null(), "manifests are namespace-agnostic: {:?}", doc["metadata"]);
    }

    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let template = &deployment["spec"]["template"];
    let settings = check_pod("Deployment", template, &secret, &configmap);
    assert_eq!(
        u64::from(settings.server.listen.expect("server.listen is set").port()),
        PORT,
        "the ConfigMap listens on {PORT}"
    );
    let c = &template["spec"]["containers"][0];
    assert_eq!(c["args"][0].as_str(), Some("run"), "the Deployment runs the daemon");

    // The container port, and the probes on it.
    let ports = seq(&c["ports"]);
    let named: BTreeMap<String, u64> = ports
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_owned(), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert!(named.values().any(|p| *p == PORT), "containerPort {PORT}: {named:?}");
    let resolve = |port: &Value| port.as_u64().or_else(|| port.as_str().and_then(|n| named.get(n).copied()));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(resolve(&get["port"]), Some(PORT), "{probe} port");
        assert!(PROBE_PATHS.contains(&path));
        // A readiness answer takes at most 2 s (the database check's timeout).
        assert!(c[probe]["timeoutSeconds"].as_u64().unwrap_or(1) > 2, "{probe}: timeoutSeconds");
    }

    // The Service selects the pods and exposes the port.
    let labels = template["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the Service selects the Deployment's pods");
    }
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["port"].as_u64(), Some(PORT));
    assert_eq!(resolve(&sp["targetPort"]), Some(PORT));

    // The backfill Job: same wiring, `sync --backfill`, and not selected by the Service.
    let jt = &job["spec"]["template"];
    check_pod("Job", jt, &secret, &configmap);
    let args: Vec<String> = seq(&jt["spec"]["containers"][0]["args"]).iter().map(str_of).collect();
    assert_eq!(args, ["sync", "--backfill"]);
    let job_labels = jt["metadata"]["labels"].as_mapping().unwrap();
    assert!(
        service["spec"]["selector"].as_mapping().unwrap().iter().any(|(k, v)| job_labels.get(k) != Some(v)),
        "the Service must not route to the Job's pod"
    );
    assert!(matches!(jt["spec"]["restartPolicy"].as_str(), Some("OnFailure" | "Never")));

    // Optional ServiceMonitor scrapes the Service's port.
    for sm in of_kind(&docs, "ServiceMonitor") {
        let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
        assert_eq!(sp["name"].as_str(), Some(port));
        assert_eq!(sm["spec"]["endpoints"][0]["path"].as_str(), Some("/metrics"));
    }

    // The kustomization lists existing files and never the Secret with placeholders.
    let kustomization = one_of_kind(&docs, "Kustomization");
    let resources: Vec<String> = seq(&kustomization["resources"]).iter().map(str_of).collect();
    for r in &resources {
        assert!(repo().join("deploy/k8s").join(r).is_file(), "kustomization lists missing {r}");
    }
    for kind in ["Deployment", "ConfigMap", "Service"] {
        assert!(
            docs.iter().any(|(file, d)| d["kind"].as_str() == Some(kind) && resources.contains(file)),
            "kustomization lacks the {kind}"
        );
    }
    assert!(!docs.iter().any(|(file, d)| d["kind"].as_str() == Some("Secret") && resources.contains(file)));
}

#[test]
fn docker_compose_runs_postgres_the_daemon_and_optional_grafana() {
    let compose = documents(&repo().join("deploy/docker-compose.yml")).remove(0);
    let services = &compose["services"];

    let pg = &services["postgres"];
    assert!(pg["image"].as_str().is_some_and(|i| i.starts_with("postgres:15")), "{:?}", pg["image"]);
    assert!(pg["healthcheck"]["test"].as_sequence().is_some(), "postgres has a healthcheck");

    let etl = &services["devin-etl"];
    let context = repo().join("deploy").join(etl["build"]["context"].as_str().unwrap());
    let dockerfile = etl["build"]["dockerfile"].as_str().unwrap();
    assert!(context.join(dockerfile).is_file(), "build context {} + {dockerfile}", context.display());
    assert!(context.join("Cargo.toml").is_file(), "the build context is the repository root");
    assert_eq!(etl["command"][0].as_str(), Some("run"));
    assert_eq!(etl["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    assert!(seq(&etl["ports"]).iter().any(|p| str_of(p).ends_with(&format!(":{PORT}"))), "publishes {PORT}");
    assert_eq!(etl["read_only"].as_bool(), Some(true));
    let grace = parse_duration(etl["stop_grace_period"].as_str().unwrap()).unwrap();

    let vars: BTreeMap<String, String> =
        etl["environment"].as_mapping().unwrap().iter().map(|(k, v)| (str_of(k), str_of(v))).collect();
    let db = vars.get("DATABASE_URL").expect("DATABASE_URL");
    assert!(db.contains("@postgres:5432/"), "the daemon reaches the postgres service: {db}");
    assert!(vars.contains_key("DEVIN_API_TOKEN") || vars.contains_key("DEVIN_ETL__API__TOKEN_FILE"));
    // Compose interpolation (${VAR:-default}) resolved to its default, as with an empty environment.
    let resolved: BTreeMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.as_str() != "DEVIN_API_TOKEN")
        .map(|(k, v)| (k.clone(), resolve_defaults(v)))
        .collect();
    let settings = settings_from_env("docker-compose.yml", &resolved);
    assert_eq!(u64::from(settings.server.listen.expect("server.listen is set").port()), PORT);
    assert!(grace > settings.sync.shutdown_grace, "stop_grace_period is longer than sync.shutdown_grace");

    let grafana = &services["grafana"];
    assert!(seq(&grafana["profiles"]).iter().any(|p| p.as_str() == Some("grafana")), "Grafana only on request");
    let volumes: Vec<String> = seq(&grafana["volumes"]).iter().map(str_of).collect();
    for dir in ["./grafana/provisioning:", "./grafana/dashboards:"] {
        assert!(volumes.iter().any(|v| v.starts_with(dir)), "Grafana mounts {dir} {volumes:?}");
    }
}

/// `${NAME:-default}` → `default` (Compose interpolation with nothing set).
fn resolve_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').map(|e| start + e).expect("closed ${…}");
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `Key=value` lines of a systemd unit (all values of repeated keys).
fn unit_options(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut options: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '['])) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not Key=value: {line}"));
        options.entry(key.trim().to_owned()).or_default().push(value.trim().to_owned());
    }
    options
}

#[test]
fn systemd_unit_is_hardened_and_reads_the_token_as_a_credential() {
    let unit = unit_options(&read("deploy/systemd/devin-etl.service"));
    let one = |key: &str| -> String {
        let values = unit.get(key).unwrap_or_else(|| panic!("the unit lacks {key}="));
        values.last().unwrap().clone()
    };
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("Restart", "on-failure"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert!(unit.contains_key("DynamicUser") || unit.contains_key("User"), "runs as a dedicated user");
    assert_ne!(unit.get("User").and_then(|u| u.last()).map(String::as_str), Some("root"));
    assert!(unit["SystemCallFilter"].iter().any(|v| v == "@system-service"), "SystemCallFilter=@system-service");
    let families = one("RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.split_whitespace().any(|f| f == family), "RestrictAddressFamilies has {family}");
    }
    assert!(one("CapabilityBoundingSet").is_empty(), "no capabilities");
    assert!(one("ExecStart").starts_with("/usr/local/bin/devin-etl run"), "{}", one("ExecStart"));
    assert!(one("EnvironmentFile").trim_start_matches('-').starts_with('/'));

    // LoadCredential=NAME:PATH and DEVIN_ETL__API__TOKEN_FILE=%d/NAME.
    let (credential, source) =
        one("LoadCredential").split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap();
    assert!(source.starts_with('/'));
    let env: BTreeMap<String, String> = unit["Environment"]
        .iter()
        .map(|e| {
            let (k, v) = e.trim_matches('"').split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert_eq!(env.get("DEVIN_ETL__API__TOKEN_FILE"), Some(&format!("%d/{credential}")));

    // Stopping outlasts the shutdown grace period of the configuration in effect.
    let example = env_file(&read("deploy/systemd/devin-etl.env.example"));
    let mut all = example.clone();
    all.extend(env.clone());
    let settings = settings_from_env("devin-etl.service + devin-etl.env.example", &all);
    let stop = parse_duration(&one("TimeoutStopSec")).expect("TimeoutStopSec with a unit, e.g. 60s");
    assert!(stop > settings.sync.shutdown_grace, "TimeoutStopSec must exceed sync.shutdown_grace");
    assert!(example.contains_key("DATABASE_URL"));
    for name in example.keys() {
        assert!(
            name.starts_with("DEVIN_ETL__") || ["DATABASE_URL", "RUST_LOG"].contains(&name.as_str()),
            "unexpected variable {name} in the env file example"
        );
    }
    assert!(!example.contains_key("DEVIN_API_TOKEN"), "the token is a credential, not an environment variable");
}

/// `KEY=value` lines of an EnvironmentFile, quotes removed.
fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_the_port() {
    let text = read("deploy/Dockerfile");
    let instructions: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(i, rest)| (i.to_uppercase(), rest.trim().to_owned())))
        .collect();
    let all = |name: &str| -> Vec<&str> {
        instructions.iter().filter(|(i, _)| i == name).map(|(_, rest)| rest.as_str()).collect()
    };
    assert!(all("FROM").len() >= 2, "multi-stage");
    let user = all("USER").last().map(|u| u.to_string()).expect("a USER instruction");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as non-root, not {user}");
    assert!(all("EXPOSE").iter().any(|p| p.split_whitespace().any(|p| p == PORT.to_string())), "EXPOSE {PORT}");
    assert_eq!(all("ENTRYPOINT").last().copied(), Some(r#"["devin-etl"]"#));
    assert_eq!(all("CMD").last().copied(), Some(r#"["run"]"#));

    // The baked config is where DEVIN_ETL_CONFIG points, and is the shipped default.
    let config_copy = all("COPY").into_iter().find(|c| c.starts_with("config/default.toml")).expect("config baked in");
    let dest = config_copy.split_whitespace().last().unwrap();
    assert!(all("ENV").iter().any(|e| e.contains(&format!("DEVIN_ETL_CONFIG={dest}"))), "DEVIN_ETL_CONFIG={dest}");

    // What the build stage copies exists (the context is the repository root).
    for copy in all("COPY").into_iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: not in the repository");
        }
    }
}

#[test]
fn deploy_guide_covers_every_file_and_metric() {
    let guide = read("docs/deploy.md");
    for needle in [
        "deploy/Dockerfile",
        "deploy/docker-compose.yml",
        "--profile grafana",
        "deploy/k8s",
        "job-backfill.yaml",
        "deploy/systemd/devin-etl.service",
        "LoadCredential",
        "DEVIN_ETL__API__TOKEN_FILE",
        "DATABASE_URL",
        "/healthz",
        "/readyz",
        "/metrics",
        "deploy/prometheus/devin-etl-rules.yml",
    ]
    .into_iter()
    .chain(devin_etl::telemetry::metric::ALL.iter().copied())
    {
        assert!(guide.contains(needle), "docs/deploy.md does not mention {needle}");
    }
}
