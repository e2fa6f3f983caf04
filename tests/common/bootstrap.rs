//! Rewrites an example Envoy bootstrap (`examples/envoy-*.yaml`) for a run on loopback: its
//! listener and admin ports, the router replicas behind the ext_proc cluster, and the pods of the
//! `vllm_pods` cluster (the override_host policy only picks hosts the cluster lists). Shared by the
//! tests and, through `#[path]`, by the benches.

use std::net::SocketAddr;

fn endpoint(port: u16) -> String {
    format!("        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n")
}

/// The example's bootstrap for Envoy on `listen` (admin on `admin`), ext_proc spread over the
/// router replicas on `routers`, and `pods` as the upstream cluster.
pub(crate) fn rewrite(example: &str, listen: u16, admin: u16, routers: &[u16], pods: &[SocketAddr]) -> String {
    let demo_pods: String = [8001, 8002, 8003].into_iter().map(endpoint).collect();
    assert!(example.contains(&demo_pods), "the example lists the demo's pods 8001–8003");
    assert!(example.contains(&endpoint(9002)), "the example's ext_proc endpoint line");
    let pods: String = pods
        .iter()
        .map(|a| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let routers: String = routers.iter().copied().map(endpoint).collect();
    example
        .replace(&demo_pods, &pods)
        .replace(&endpoint(9002), &routers)
        .replace("port_value: 10000", &format!("port_value: {listen}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"))
}
