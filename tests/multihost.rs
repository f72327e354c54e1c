//! Two hosts, for real: two network namespaces joined to this one by veth pairs on private test
//! addresses, each running `clickflow cluster` for its own process of a two-process engine job
//! (the hostfile names the namespaces' addresses). A Kafka-protocol broker (tansu) and Postgres
//! (through a relay) are reached over those links. One host's engine is SIGKILLed
//! mid-stream; both supervisors restart their processes, and the rollups end equal to what
//! the collector accepted. Everything the test made is torn down at the end.
//!
//! Needs root (network namespaces); CI runs as root.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A host: a network namespace whose veth end has `address`; this namespace's end has
/// `gateway`.
struct Host {
    name: String,
    address: String,
    gateway: String,
}

/// Everything made for the test, undone on drop (also when an assertion fails).
struct Network {
    hosts: Vec<Host>,
    forwarding_was: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Network {
    fn new() -> Network {
        let tag = std::process::id() % 10_000;
        let octet = 100 + std::process::id() % 100;
        let forwarding_was = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_string();
        let mut network = Network {
            hosts: Vec::new(),
            forwarding_was,
        };
        for (i, subnet) in [0u32, 4].into_iter().enumerate() {
            let host = Host {
                name: format!("cf{tag}h{i}"),
                address: format!("10.231.{octet}.{}", subnet + 2),
                gateway: format!("10.231.{octet}.{}", subnet + 1),
            };
            let (outer, inner) = (format!("cf{tag}v{i}o"), format!("cf{tag}v{i}i"));
            ip(&["netns", "add", &host.name]);
            network.hosts.push(host);
            let host = network.hosts.last().unwrap();
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &host.name]);
            ip(&[
                "addr",
                "add",
                &format!("{}/30", host.gateway),
                "dev",
                &outer,
            ]);
            ip(&["link", "set", &outer, "up"]);
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &host.name, "ip"];
                all.extend_from_slice(args);
                ip(&all);
            };
            inside(&[
                "addr",
                "add",
                &format!("{}/30", host.address),
                "dev",
                &inner,
            ]);
            inside(&["link", "set", &inner, "up"]);
            inside(&["link", "set", "lo", "up"]);
            inside(&["route", "add", "default", "via", &host.gateway]);
        }
        // The two hosts' engines talk to each other through this namespace.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding");
        network
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Deleting a namespace deletes the veth pair with it.
            let _ = Command::new("ip")
                .args(["netns", "del", &host.name])
                .status();
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.forwarding_was);
    }
}

/// Relays TCP connections from `listen` to `to` (Postgres listens on loopback only).
fn relay(runtime: &tokio::runtime::Runtime, listen: SocketAddr, to: SocketAddr) {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .expect("relay listener");
    runtime.spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

fn health(address: &str) -> Option<Value> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?
        .get(format!("http://{address}/healthz"))
        .send()
        .ok()?
        .json()
        .ok()
}

fn engine_pid(h: &Value) -> Option<u64> {
    h["processes"][0]["pid"].as_u64()
}

#[test]
fn two_hosts_survive_one_engine_killed_and_equal_the_oracle() {
    let network = Network::new();
    let (a, b) = (&network.hosts[0], &network.hosts[1]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // A broker of its own that names itself by an address both hosts reach.
    let kafka_port = free_port();
    let brokers = format!("{}:{kafka_port}", a.gateway);
    let _broker = Proc(
        Command::new(env("CLICKFLOW_TEST_TANSU"))
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://0.0.0.0:{kafka_port}"),
                "--advertised-listener-url",
                &format!("tcp://{brokers}"),
                "--storage-engine",
                // Relative to the working directory below, as scripts/test-env.sh does.
                "sqlite://tansu.db",
            ])
            .current_dir(scratch.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu"),
    );
    let topic = "events";
    let created = eventually(Duration::from_secs(20), || {
        Command::new(env("CLICKFLOW_TEST_TANSU"))
            .args(["topic", "create", topic, "--partitions", "4", "--broker"])
            .arg(format!("tcp://{brokers}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    assert!(created.is_some(), "topic on the test broker");

    // Postgres, reached from the hosts through a relay on this namespace's side of a link.
    let database = fresh_database();
    let pg: url::Url = database.parse().unwrap();
    let pg_at: SocketAddr = format!("{}:{}", pg.host_str().unwrap(), pg.port().unwrap())
        .parse()
        .unwrap();
    let relay_at: SocketAddr = format!("{}:{}", a.gateway, free_port()).parse().unwrap();
    relay(&runtime, relay_at, pg_at);
    let mut remote_database = pg.clone();
    remote_database.set_ip_host(relay_at.ip()).unwrap();
    remote_database.set_port(Some(relay_at.port())).unwrap();

    let log = LogChoice::Kafka {
        brokers: brokers.clone(),
        topic: topic.into(),
    };
    let setup = Setup::new(&database, &log);
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site("hosts.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();

    // One supervisor per host, each running its own line of the shared hostfile.
    let hostfile = scratch.path().join("hosts.txt");
    std::fs::write(
        &hostfile,
        format!("{}:2101\n{}:2101\n", a.address, b.address),
    )
    .unwrap();
    let on_host = |host: &Host, index: usize| -> Proc {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.name, env!("CARGO_BIN_EXE_clickflow")])
            .args(["cluster", "-w", "1", "-h"])
            .arg(&hostfile)
            .args(["-p", &index.to_string()])
            .args(["--listen", &format!("{}:9100", host.address)]);
        for (k, v) in &setup.vars {
            c.env(k, v);
        }
        c.env("DATABASE_URL", remote_database.as_str());
        Proc(c.stdout(Stdio::null()).spawn().expect("cluster on a host"))
    };
    let _supervisors = [on_host(a, 0), on_host(b, 1)];
    let (health_a, health_b) = (format!("{}:9100", a.address), format!("{}:9100", b.address));
    let first_b = eventually(Duration::from_secs(60), || {
        let (ha, hb) = (health(&health_a)?, health(&health_b)?);
        engine_pid(&ha)?;
        engine_pid(&hb)
    })
    .expect("an engine on each host");

    // The stream: 2 000 pageviews on 8 pages by 80 visitors, in two halves.
    let send = |range| post_pageviews(&setup, &site, "hosts.test", range, (8, 80), 100);
    send(0..1000);
    eventually(Duration::from_secs(60), || {
        let n = totals(&setup, &site, &key, "pageviews", &[])?;
        (n.get("").map(String::as_str) != Some("0") && !n.is_empty()).then_some(())
    })
    .expect("the job across two hosts writes rollups");
    // Mid-stream, host b's engine dies without warning.
    Command::new("kill")
        .args(["-9", &first_b.to_string()])
        .status()
        .unwrap();
    send(1000..2000);
    eventually(Duration::from_secs(90), || {
        let hb = health(&health_b)?;
        (hb["restarts"].as_u64() >= Some(1) && engine_pid(&hb).is_some_and(|p| p != first_b))
            .then_some(())
    })
    .expect("host b's supervisor restarted its engine");

    let pages: Vec<(String, String)> = (0..8)
        .map(|p| (format!("/p{p}"), "250".to_string()))
        .collect();
    let pages: Vec<(&str, &str)> = pages
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    await_rollups(
        &setup,
        &site,
        &key,
        &[
            ("pageviews", &[], expect(&[("", "2000")])),
            ("pageviews", &["page"], expect(&pages)),
        ],
    );
    let (status, body) = post(
        &setup.url("/api/v1/query"),
        &json!({"site_id": site, "metrics": ["visitors", "events"], "date_range": "today"}),
        Some(&key),
    );
    assert_eq!(
        (status, &body["results"][0]["metrics"]),
        (200, &json!([80, 2000])),
        "{body}"
    );
    // Host a's engine lost its peer and was restarted by its own supervisor too.
    let ha = health(&health_a).expect("host a's health");
    assert!(ha["restarts"].as_u64() >= Some(1), "{ha}");
}
