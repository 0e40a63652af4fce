//! The `Network` step: the profile's interfaces in the installed system's own format. The
//! `boot` interface is the NIC the client booted from, matched by its MAC address.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ignite_profiles::{Interface, NetFormat};

use crate::log::Log;

/// The name ifupdown knows the boot NIC by; a systemd .link file gives it that name by MAC.
const BOOT_NAME: &str = "boot0";

fn exists(root: &Path, paths: &[&str]) -> bool {
    paths.iter().any(|p| root.join(p).exists())
}

/// What the image uses. netplan first (it drives networkd or NetworkManager); then ifupdown
/// if installed, since Debian images carry systemd-networkd without enabling it; then
/// networkd.
pub fn detect(root: &Path) -> Option<NetFormat> {
    if exists(root, &["usr/sbin/netplan", "etc/netplan"]) {
        Some(NetFormat::Netplan)
    } else if exists(root, &["sbin/ifup", "usr/sbin/ifup"]) {
        Some(NetFormat::Ifupdown)
    } else if exists(
        root,
        &[
            "lib/systemd/systemd-networkd",
            "usr/lib/systemd/systemd-networkd",
        ],
    ) {
        Some(NetFormat::Networkd)
    } else {
        None
    }
}

fn colon_mac(mac12: &str) -> String {
    mac12
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Files to write (path inside the target, contents) for `format`.
pub fn render(format: NetFormat, mac: &str, ifaces: &[Interface]) -> Vec<(String, String)> {
    let mac = colon_mac(mac);
    let is_boot = |i: &Interface| i.name == "boot";
    let mut files = Vec::new();
    match format {
        NetFormat::Netplan => {
            let mut y = String::from(
                "# Written by the Ignite install agent.\nnetwork:\n  version: 2\n  ethernets:\n",
            );
            for i in ifaces {
                y.push_str(&format!("    {}:\n", i.name));
                if is_boot(i) {
                    y.push_str(&format!("      match:\n        macaddress: \"{mac}\"\n"));
                }
                y.push_str(&format!("      dhcp4: {}\n", i.dhcp));
                if let Some(a) = &i.address {
                    y.push_str(&format!("      addresses: [\"{a}\"]\n"));
                }
                if let Some(g) = i.gateway {
                    y.push_str(&format!(
                        "      routes:\n        - to: default\n          via: {g}\n"
                    ));
                }
                if !i.dns.is_empty() {
                    let d: Vec<String> = i.dns.iter().map(|d| d.to_string()).collect();
                    y.push_str(&format!(
                        "      nameservers:\n        addresses: [{}]\n",
                        d.join(", ")
                    ));
                }
            }
            files.push(("/etc/netplan/60-ignite.yaml".to_string(), y));
        }
        NetFormat::Networkd => {
            for i in ifaces {
                let matcher = if is_boot(i) {
                    format!("MACAddress={mac}")
                } else {
                    format!("Name={}", i.name)
                };
                let mut n = format!(
                    "# Written by the Ignite install agent.\n[Match]\n{matcher}\n\n[Network]\n"
                );
                if i.dhcp {
                    n.push_str("DHCP=ipv4\n");
                }
                if let Some(a) = &i.address {
                    n.push_str(&format!("Address={a}\n"));
                }
                if let Some(g) = i.gateway {
                    n.push_str(&format!("Gateway={g}\n"));
                }
                for d in &i.dns {
                    n.push_str(&format!("DNS={d}\n"));
                }
                files.push((
                    format!("/etc/systemd/network/60-ignite-{}.network", i.name),
                    n,
                ));
            }
        }
        NetFormat::Ifupdown | NetFormat::Auto => {
            let mut s = String::from("# Written by the Ignite install agent.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n");
            for i in ifaces {
                let name = if is_boot(i) { BOOT_NAME } else { &i.name };
                let method = if i.dhcp { "dhcp" } else { "static" };
                s.push_str(&format!(
                    "\nallow-hotplug {name}\niface {name} inet {method}\n"
                ));
                if let Some(a) = &i.address {
                    s.push_str(&format!("    address {a}\n"));
                }
                if let Some(g) = i.gateway {
                    s.push_str(&format!("    gateway {g}\n"));
                }
                if !i.dns.is_empty() {
                    let d: Vec<String> = i.dns.iter().map(|d| d.to_string()).collect();
                    s.push_str(&format!("    dns-nameservers {}\n", d.join(" ")));
                }
            }
            files.push(("/etc/network/interfaces".to_string(), s));
            if ifaces.iter().any(is_boot) {
                files.push((
                    "/etc/systemd/network/10-ignite-boot.link".to_string(),
                    format!("# Written by the Ignite install agent: the NIC the client booted from.\n[Match]\nMACAddress={mac}\n\n[Link]\nName={BOOT_NAME}\n"),
                ));
            }
        }
    }
    files
}

pub fn write(
    root: &Path,
    format: NetFormat,
    mac: &str,
    ifaces: &[Interface],
    log: &mut Log,
) -> Result<()> {
    let format = match format {
        NetFormat::Auto => match detect(root) {
            Some(f) => f,
            None => bail!(
                "the image has none of netplan, ifupdown or systemd-networkd; set network.format in the profile"
            ),
        },
        f => f,
    };
    log.line(&format!("network configuration as {format:?}"));
    for (path, text) in render(format, mac, ifaces) {
        let p = root.join(path.trim_start_matches('/'));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        std::fs::write(&p, &text).with_context(|| format!("cannot write {}", p.display()))?;
        log.line(&format!("{path}:\n{}", text.trim_end()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_dhcp() -> Vec<Interface> {
        vec![
            Interface {
                name: "boot".into(),
                dhcp: true,
                address: None,
                gateway: None,
                dns: vec![],
            },
            Interface {
                name: "ens4".into(),
                dhcp: false,
                address: Some("10.1.2.3/24".into()),
                gateway: Some("10.1.2.1".parse().unwrap()),
                dns: vec!["10.1.2.53".parse().unwrap()],
            },
        ]
    }

    #[test]
    fn each_format_matches_the_boot_nic_by_mac() {
        let mac = "525400123456";
        let np = render(NetFormat::Netplan, mac, &boot_dhcp());
        assert!(
            np[0].1.contains("macaddress: \"52:54:00:12:34:56\""),
            "{}",
            np[0].1
        );
        assert!(np[0].1.contains("addresses: [\"10.1.2.3/24\"]"));
        let nd = render(NetFormat::Networkd, mac, &boot_dhcp());
        assert!(nd[0].1.contains("MACAddress=52:54:00:12:34:56\n"));
        assert!(nd[1].1.contains("Name=ens4\n") && nd[1].1.contains("Gateway=10.1.2.1\n"));
        let ifu = render(NetFormat::Ifupdown, mac, &boot_dhcp());
        assert!(ifu[0].1.contains("iface boot0 inet dhcp\n"));
        assert!(ifu[0]
            .1
            .contains("iface ens4 inet static\n    address 10.1.2.3/24\n"));
        assert!(
            ifu[1].1.contains("MACAddress=52:54:00:12:34:56\n") && ifu[1].1.contains("Name=boot0")
        );
    }

    #[test]
    fn detection_order() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect(d.path()), None);
        std::fs::create_dir_all(d.path().join("usr/lib/systemd")).unwrap();
        std::fs::write(d.path().join("usr/lib/systemd/systemd-networkd"), "").unwrap();
        assert_eq!(detect(d.path()), Some(NetFormat::Networkd));
        std::fs::create_dir_all(d.path().join("sbin")).unwrap();
        std::fs::write(d.path().join("sbin/ifup"), "").unwrap();
        assert_eq!(detect(d.path()), Some(NetFormat::Ifupdown));
        std::fs::create_dir_all(d.path().join("etc/netplan")).unwrap();
        assert_eq!(detect(d.path()), Some(NetFormat::Netplan));
    }
}
