//! The dependency guard: the crate boundaries of `docs/architecture.md`, checked against
//! the workspace's real dependency graph (`cargo metadata`), so a forbidden edge fails the
//! build's tests instead of waiting for a reviewer to notice.
//!
//! Only normal dependencies count (tests may use whatever they need), and they count
//! transitively: `api` reaching `x3ui-worker` through another crate is as wrong as
//! depending on it directly. An optional dependency is not part of a production build, so
//! the binary's `lab` feature is the one way the lab crates get into the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// The crates that only exist for tests, demos and benchmarks.
const LAB_CRATES: [&str; 4] = ["x3ui-sim", "telegram-fake", "lab", "testkit"];

/// Every crate that ends up in a production build.
const PRODUCTION_CRATES: [&str; 13] = [
    "domain",
    "http-listener",
    "subscription",
    "eventstore",
    "broker",
    "projector",
    "x3ui-worker",
    "scheduler",
    "api",
    "console",
    "bot",
    "service",
    "keyledger",
];

/// What `domain` may depend on directly: data and time types, and the pure functions that
/// derive subscription tokens (HMAC-SHA256, base64url); nothing that does I/O.
const DOMAIN_MAY_USE: [&str; 9] = [
    "serde",
    "serde_json",
    "thiserror",
    "time",
    "uuid",
    "url",
    "hmac",
    "sha2",
    "base64",
];

/// Crates that do I/O or run async code; `domain` must reach none of them, even indirectly.
const IO_CRATES: [&str; 9] = [
    "tokio", "sqlx", "lapin", "reqwest", "axum", "hyper", "teloxide", "mio", "socket2",
];

/// Crate `from` must never reach any of `to`.
struct Boundary {
    from: &'static str,
    to: &'static [&'static str],
    why: &'static str,
}

const BOUNDARIES: [Boundary; 9] = [
    Boundary {
        from: "domain",
        to: &IO_CRATES,
        why: "the domain is pure: no I/O, no async",
    },
    Boundary {
        from: "api",
        to: &["x3ui-worker"],
        why: "the API sees panels only through the trait the binary injects",
    },
    Boundary {
        from: "console",
        to: &["x3ui-worker", "bot"],
        why: "the console sees panels through the API's injected trait and acts through the log",
    },
    Boundary {
        from: "bot",
        to: &["x3ui-worker"],
        why: "the bot acts through the log, never on panels",
    },
    Boundary {
        from: "projector",
        to: &["x3ui-worker"],
        why: "views come from the log alone",
    },
    Boundary {
        from: "eventstore",
        to: &["broker", "lapin"],
        why: "the log knows nothing of who reads it",
    },
    Boundary {
        from: "x3ui-worker",
        to: &["axum"],
        why: "the panel client serves no HTTP; the simulator lives in x3ui-sim",
    },
    Boundary {
        from: "subscription",
        to: &["x3ui-worker", "broker", "lapin", "api", "bot"],
        why: "the subscription door answers from the views alone, never asking a panel on the request path",
    },
    Boundary {
        from: "http-listener",
        to: &["sqlx", "lapin", "eventstore", "domain"],
        why: "serving connections knows nothing of what is served",
    },
];

/// Normal (non-dev, non-build) dependency edges between package names; optional
/// dependencies are left out, so the graph is that of a build with no optional feature on.
#[derive(Debug, Default)]
struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn from_metadata(metadata: &Value) -> Self {
        let name_of: BTreeMap<&str, &str> = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().expect("id"),
                    p["name"].as_str().expect("name"),
                )
            })
            .collect();
        let optional: BTreeSet<(&str, &str)> = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .flat_map(|p| {
                let name = p["name"].as_str().expect("name");
                p["dependencies"]
                    .as_array()
                    .expect("dependencies")
                    .iter()
                    .filter(|d| d["optional"].as_bool() == Some(true))
                    .map(move |d| (name, d["name"].as_str().expect("dependency name")))
            })
            .collect();
        let mut graph = Self::default();
        for node in metadata["resolve"]["nodes"].as_array().expect("resolve") {
            let from = name_of[node["id"].as_str().expect("node id")];
            for dep in node["deps"].as_array().expect("deps") {
                let to = name_of[dep["pkg"].as_str().expect("dep pkg")];
                let normal = dep["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|kind| kind["kind"].is_null());
                if normal && !optional.contains(&(from, to)) {
                    graph.add(from, to);
                }
            }
        }
        graph
    }

    fn add(&mut self, from: &str, to: &str) {
        self.edges
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
    }

    fn direct(&self, from: &str) -> BTreeSet<String> {
        self.edges.get(from).cloned().unwrap_or_default()
    }

    /// Every crate `from` reaches, with one path to each, for the error message.
    fn reachable(&self, from: &str) -> BTreeMap<String, Vec<String>> {
        let mut paths = BTreeMap::new();
        let mut queue = vec![vec![from.to_owned()]];
        while let Some(path) = queue.pop() {
            let last = path.last().expect("a path is never empty").clone();
            for next in self.direct(&last) {
                if paths.contains_key(&next) {
                    continue;
                }
                let mut longer = path.clone();
                longer.push(next.clone());
                paths.insert(next, longer.clone());
                queue.push(longer);
            }
        }
        paths
    }
}

/// Every broken rule, as a sentence naming the path that breaks it.
fn violations(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for boundary in &BOUNDARIES {
        let reached = graph.reachable(boundary.from);
        for forbidden in boundary.to {
            if let Some(path) = reached.get(*forbidden) {
                found.push(format!(
                    "{} reaches {forbidden} ({}): {}",
                    boundary.from,
                    path.join(" -> "),
                    boundary.why
                ));
            }
        }
    }
    for direct in graph.direct("domain") {
        if !DOMAIN_MAY_USE.contains(&direct.as_str()) {
            found.push(format!(
                "domain depends on {direct}, which is not on its list: {DOMAIN_MAY_USE:?}"
            ));
        }
    }
    for production in PRODUCTION_CRATES {
        let reached = graph.reachable(production);
        for lab in LAB_CRATES {
            if let Some(path) = reached.get(lab) {
                found.push(format!(
                    "production crate {production} reaches lab crate {lab} ({}); only the \
                     binary's optional `lab` feature may bring it in",
                    path.join(" -> ")
                ));
            }
        }
    }
    found
}

/// The target triple the tests were built for, as `rustc -vV` reports it.
fn host_triple() -> String {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_owned()
}

fn workspace_metadata() -> Value {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let output = Command::new(cargo)
        // This machine's platform only: the others' dependencies are never downloaded.
        .args([
            "metadata",
            "--format-version",
            "1",
            "--frozen",
            "--filter-platform",
        ])
        .arg(host_triple())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn the_workspace_keeps_every_crate_boundary() {
    let graph = Graph::from_metadata(&workspace_metadata());
    // The graph is the real one: the binary reaches every production crate.
    let from_binary = graph.reachable("keyledger");
    for production in PRODUCTION_CRATES.iter().filter(|c| **c != "keyledger") {
        assert!(
            from_binary.contains_key(*production),
            "keyledger should reach {production}; is the graph read right?"
        );
    }
    let broken = violations(&graph);
    assert!(
        broken.is_empty(),
        "forbidden dependencies:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_guard_names_each_kind_of_forbidden_edge() {
    let mut graph = Graph::default();
    graph.add("keyledger", "service");
    graph.add("service", "api");
    graph.add("api", "projector");
    graph.add("projector", "x3ui-worker");
    graph.add("domain", "reqwest");
    graph.add("reqwest", "hyper");
    graph.add("eventstore", "broker");
    graph.add("x3ui-worker", "axum");
    graph.add("bot", "telegram-fake");
    let broken = violations(&graph);
    let expect = [
        "api reaches x3ui-worker (api -> projector -> x3ui-worker)",
        "projector reaches x3ui-worker",
        "domain reaches reqwest",
        "domain reaches hyper (domain -> reqwest -> hyper)",
        "domain depends on reqwest",
        "eventstore reaches broker",
        "x3ui-worker reaches axum",
        "production crate bot reaches lab crate telegram-fake",
    ];
    for sentence in expect {
        assert!(
            broken.iter().any(|b| b.starts_with(sentence)),
            "expected a violation starting {sentence:?} in {broken:#?}"
        );
    }
    assert_eq!(broken.len(), expect.len(), "{broken:#?}");
}

#[test]
fn the_default_binary_carries_the_lab_so_the_production_probe_means_something() {
    // CI builds the production binary (`--no-default-features`) and fails if these names
    // appear in it; they must appear in the default build, or that check proves nothing.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_keyledger")).expect("read the binary");
    for marker in ["x3ui_sim", "telegram_fake"] {
        assert!(
            binary.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the default build should contain {marker}"
        );
    }
}
