//! wharf's nftables rules, as documents for `nft -j -f -`: everything in
//! the table `ip wharf`, each rule commented with whom it is for
//! (`wharf:MACHINE` or `wharf-zone:ZONE`), so that it can be found and
//! deleted by that comment whatever became of the process that added it.
//!
//! - `postrouting` (nat): masquerading of a machine's or zone's subnet
//!   towards anything outside it, and of connections the host itself makes
//!   from 127.0.0.0/8 to a forwarded port (so the machine can answer them);
//! - `prerouting` (nat): `--port` for connections from elsewhere to any of
//!   the host's addresses;
//! - `output` (nat): `--port` for connections the host itself makes to
//!   one of its own addresses, loopback included.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::{Port, Subnet};

pub const FAMILY: &str = "ip";
pub const TABLE: &str = "wharf";

/// The comment on a machine's rules.
pub fn machine_comment(machine: &str) -> String {
    format!("wharf:{machine}")
}

/// The comment on a zone's rules.
pub fn zone_comment(zone: &str) -> String {
    format!("wharf-zone:{zone}")
}

/// The table and its base chains (`add` keeps them if they exist).
fn table_and_chains() -> Vec<Value> {
    let chain = |name: &str, kind: &str, hook: &str, prio: i32| {
        json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name, "type": kind,
            "hook": hook, "prio": prio, "policy": "accept"}}})
    };
    vec![
        json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}),
        chain("prerouting", "nat", "prerouting", -100),
        chain("output", "nat", "output", -100),
        chain("postrouting", "nat", "postrouting", 100),
    ]
}

fn rule(chain: &str, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "comment": comment, "expr": expr}}})
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn ip(field: &str) -> Value {
    json!({"payload": {"protocol": "ip", "field": field}})
}

fn prefix(subnet: Subnet) -> Value {
    json!({"prefix": {"addr": subnet.addr.to_string(), "len": subnet.len}})
}

/// `ip saddr SUBNET ip daddr != SUBNET masquerade`.
fn masquerade(subnet: Subnet, comment: &str) -> Value {
    rule(
        "postrouting",
        comment,
        vec![
            matches("==", ip("saddr"), prefix(subnet)),
            matches("!=", ip("daddr"), prefix(subnet)),
            json!({"masquerade": null}),
        ],
    )
}

/// What a machine needs: masquerading of its own subnet (`veth`; a zone's
/// is the zone's), and its ports forwarded to `address`; connections from
/// the host's loopback leave through `link` (the host end, or the zone's
/// bridge) masqueraded.
pub fn machine_rules(machine: &str, subnet: Option<Subnet>, address: Ipv4Addr, link: &str, ports: &[Port]) -> Value {
    let comment = machine_comment(machine);
    let mut commands = table_and_chains();
    if let Some(subnet) = subnet {
        commands.push(masquerade(subnet, &comment));
    }
    if !ports.is_empty() {
        let loopback = Subnet { addr: Ipv4Addr::new(127, 0, 0, 0), len: 8 };
        commands.push(rule(
            "postrouting",
            &comment,
            vec![
                matches("==", json!({"meta": {"key": "oifname"}}), json!(link)),
                matches("==", ip("saddr"), prefix(loopback)),
                json!({"masquerade": null}),
            ],
        ));
    }
    for port in ports {
        let expr = vec![
            matches("==", json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local")),
            matches("==", json!({"payload": {"protocol": port.protocol.as_str(), "field": "dport"}}), json!(port.host)),
            json!({"dnat": {"addr": address.to_string(), "port": port.machine}}),
        ];
        commands.push(rule("prerouting", &comment, expr.clone()));
        commands.push(rule("output", &comment, expr));
    }
    json!({"nftables": commands})
}

/// A zone's masquerading.
pub fn zone_rules(zone: &str, subnet: Subnet) -> Value {
    let mut commands = table_and_chains();
    commands.push(masquerade(subnet, &zone_comment(zone)));
    json!({"nftables": commands})
}

/// A rule of the table, as `nft -j list table` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u64,
    pub comment: String,
}

/// The rules of `nft -j list table ip wharf`.
pub fn parse_listing(json: &str) -> Result<Vec<ListedRule>, String> {
    let document: Value = serde_json::from_str(json).map_err(|e| format!("reading nft's listing: {e}"))?;
    let items = document.get("nftables").and_then(Value::as_array).ok_or("nft's listing has no 'nftables' list")?;
    Ok(items
        .iter()
        .filter_map(|item| item.get("rule"))
        .filter(|rule| rule.get("table").and_then(Value::as_str) == Some(TABLE))
        .filter_map(|rule| {
            Some(ListedRule {
                chain: rule.get("chain")?.as_str()?.to_string(),
                handle: rule.get("handle")?.as_u64()?,
                comment: rule.get("comment").and_then(Value::as_str).unwrap_or_default().to_string(),
            })
        })
        .collect())
}

/// Deletes the rules carrying `comment`.
pub fn delete_rules(rules: &[ListedRule], comment: &str) -> Option<Value> {
    let commands: Vec<Value> = rules
        .iter()
        .filter(|r| r.comment == comment)
        .map(|r| json!({"delete": {"rule": {"family": FAMILY, "table": TABLE, "chain": r.chain, "handle": r.handle}}}))
        .collect();
    (!commands.is_empty()).then(|| json!({"nftables": commands}))
}

/// Deletes the whole table.
pub fn delete_table() -> Value {
    json!({"nftables": [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::network::Protocol;

    #[test]
    fn a_machine_gets_masquerading_and_its_ports() {
        let subnet: Subnet = "10.247.0.0/30".parse().unwrap();
        let ports = [Port { protocol: Protocol::Tcp, host: 8080, machine: 80 }];
        let document = machine_rules("f28", Some(subnet), "10.247.0.2".parse().unwrap(), "ve-f28", &ports);
        let commands = document["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = commands.iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| r["comment"] == "wharf:f28" && r["table"] == "wharf"));
        let chains: Vec<&str> = rules.iter().map(|r| r["chain"].as_str().unwrap()).collect();
        assert_eq!(chains, ["postrouting", "postrouting", "prerouting", "output"]);
        assert_eq!(rules[2]["expr"][2]["dnat"], json!({"addr": "10.247.0.2", "port": 80}));
        assert_eq!(rules[2]["expr"][1]["match"]["right"], json!(8080));
        assert_eq!(rules[1]["expr"][0]["match"]["right"], json!("ve-f28"));
        // A zone member without ports adds nothing but the table.
        let member = machine_rules("z1", None, "10.247.1.2".parse().unwrap(), "vz-lab", &[]);
        assert!(member["nftables"].as_array().unwrap().iter().all(|c| c["add"].get("rule").is_none()));
    }

    #[test]
    fn rules_are_found_by_their_comment() {
        let listing = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "wharf", "handle": 1}},
            {"chain": {"family": "ip", "table": "wharf", "name": "postrouting", "handle": 1}},
            {"rule": {"family": "ip", "table": "wharf", "chain": "postrouting", "handle": 4, "comment": "wharf:f28", "expr": []}},
            {"rule": {"family": "ip", "table": "wharf", "chain": "prerouting", "handle": 5, "comment": "wharf:f28x", "expr": []}},
            {"rule": {"family": "ip", "table": "wharf", "chain": "output", "handle": 6, "expr": []}}]}"#;
        let rules = parse_listing(listing).unwrap();
        assert_eq!(rules.len(), 3);
        let delete = delete_rules(&rules, "wharf:f28").unwrap();
        assert_eq!(
            delete,
            json!({"nftables": [{"delete": {"rule": {"family": "ip", "table": "wharf", "chain": "postrouting", "handle": 4}}}]})
        );
        assert!(delete_rules(&rules, "wharf:none").is_none());
        assert!(parse_listing("{}").is_err());
    }
}
