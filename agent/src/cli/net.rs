//! `berth net ls | inspect`: the node's networks as the agent sees them (bridge subnet and
//! leases, port mappings, overlay subnet and peers, the load balancer's backend and VIPs),
//! from `GET /api/berth/v1/net`.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::AgentClient;

/// Arguments of `berth net`.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// What to show.
    #[command(subcommand)]
    pub command: NetCommand,
}

/// `berth net` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// The node's networks, port mappings, overlay peers and the load balancer (its backend,
    /// nftables or ipvs, and VIPs), as tables.
    Ls {
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Everything the agent knows about the node's networks, as JSON.
    Inspect,
}

/// Runs `berth net`.
pub async fn run(client: &AgentClient, args: NetArgs) -> anyhow::Result<i32> {
    let view = client.get_json("/api/berth/v1/net").await?;
    match args.command {
        NetCommand::Inspect | NetCommand::Ls { json: true } => {
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        NetCommand::Ls { json: false } => print!("{}", render(&view)),
    }
    Ok(0)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The tables of `berth net ls`.
pub fn render(view: &Value) -> String {
    let mut out = String::new();
    let bridge = &view["bridge"];
    let overlay = &view["overlay"];
    out.push_str(&format!(
        "{:<9} {:<18} {:<16} {:<6} {}\n",
        "NETWORK", "SUBNET", "GATEWAY/VTEP", "MTU", "CONTAINERS"
    ));
    let containers = bridge["leases"].as_object().map(|l| l.len()).unwrap_or(0);
    if !bridge.is_null() {
        out.push_str(&format!(
            "{:<9} {:<18} {:<16} {:<6} {}\n",
            if overlay.is_null() {
                "bridge"
            } else {
                "overlay"
            },
            text(&bridge["subnet"]),
            text(&bridge["gateway"]),
            text(&bridge["mtu"]),
            containers
        ));
    }
    if !overlay.is_null() {
        out.push_str(&format!(
            "\nOVERLAY: this node {} via VTEP {} on {}, membership in {}{}\n{:<18} {}\n",
            text(&overlay["subnet"]),
            text(&overlay["vtep_ip"]),
            text(&overlay["underlay_dev"]),
            text(&overlay["membership"]),
            overlay["error"]
                .as_str()
                .map(|e| format!(" (last reconcile failed: {e})"))
                .unwrap_or_default(),
            "PEER SUBNET",
            "VTEP"
        ));
        for peer in overlay["peers"].as_array().into_iter().flatten() {
            out.push_str(&format!("{:<18} {}\n", text(&peer[0]), text(&peer[1])));
        }
    }
    let lb = &view["load_balancer"];
    if let Some(backend) = lb["backend"].as_str() {
        out.push_str(&format!(
            "\nLOAD BALANCER: {backend}{}\n",
            lb["apply_error"]
                .as_str()
                .map(|e| format!(" (last apply failed: {e})"))
                .unwrap_or_default()
        ));
    }
    if let Some(vips) = lb["vips"].as_object()
        && !vips.is_empty()
    {
        out.push_str(&format!("\n{:<52} {}\n", "VIP", "BACKENDS"));
        for (vip, backends) in vips {
            let list: Vec<String> = backends
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            out.push_str(&format!("{vip:<52} {}\n", list.join(" ")));
        }
    }
    for error in view["load_balancer"]["errors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("VIP label error: {}\n", text(error)));
    }
    if let Some(leases) = bridge["leases"].as_object()
        && !leases.is_empty()
    {
        out.push_str(&format!("\n{:<38} {}\n", "CONTAINER", "IP"));
        for (container, ip) in leases {
            out.push_str(&format!("{container:<38} {}\n", text(ip)));
        }
    }
    if let Some(mappings) = bridge["port_mappings"].as_array()
        && !mappings.is_empty()
    {
        out.push_str(&format!(
            "\n{:<10} {:<6} {}\n",
            "NODE PORT", "PROTO", "CONTAINER"
        ));
        for entry in mappings {
            let m = &entry["mapping"];
            out.push_str(&format!(
                "{:<10} {:<6} {}:{}\n",
                text(&m["host_port"]),
                text(&m["proto"]),
                text(&m["container_ip"]),
                text(&m["container_port"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_subnet_peers_leases_and_ports() {
        let view = serde_json::json!({
            "bridge": {"subnet": "9.0.3.0/24", "gateway": "9.0.3.1", "mtu": 1450,
                "leases": {"c1": "9.0.3.2"},
                "port_mappings": [{"container_id": "c1", "mapping": {"proto": "tcp", "host_port": 8080, "container_ip": "9.0.3.2", "container_port": 80}}]},
            "overlay": {"subnet": "9.0.3.0/24", "vtep_ip": "10.0.0.3", "underlay_dev": "eth0", "mtu": 1450, "membership": "zookeeper",
                "peers": [["9.0.7.0/24", "10.0.0.7"]], "error": null},
        });
        let text = render(&view);
        assert!(text.contains("overlay   9.0.3.0/24"), "{text}");
        assert!(text.contains("9.0.7.0/24         10.0.0.7"), "{text}");
        assert!(text.contains("c1"), "{text}");
        assert!(text.contains("8080       tcp    9.0.3.2:80"), "{text}");
        assert!(!text.contains("LOAD BALANCER"), "{text}");
    }

    #[test]
    fn load_balancer_backend_and_vips_are_shown() {
        let view = serde_json::json!({
            "bridge": null, "overlay": null,
            "load_balancer": {"backend": "ipvs", "vips": {"11.0.0.7:80/tcp (web.l4lb.berth.directory)": ["9.0.1.2:80"]},
                "errors": [], "apply_error": null},
        });
        let text = render(&view);
        assert!(text.contains("LOAD BALANCER: ipvs\n"), "{text}");
        assert!(
            text.contains("web.l4lb.berth.directory)           9.0.1.2:80"),
            "{text}"
        );
    }
}
