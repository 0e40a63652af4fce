//! Reading what kind of network-boot client sent a DHCP request (options 60, 77, 93, 97, 175).

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// Firmware family from option 93. RFC 4578 and the IANA registry disagree on 7 and 9 (see the
/// 4578 errata), and real x64 firmware sends 7 while some send 9, so both mean x64 UEFI here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    EfiIa32,
    EfiX64,
    EfiArm64,
    HttpX64,
    HttpArm64,
    Other(u16),
}

impl Firmware {
    pub fn from_arch(code: u16) -> Firmware {
        match code {
            0 => Firmware::Bios,
            6 => Firmware::EfiIa32,
            7 | 9 => Firmware::EfiX64,
            11 => Firmware::EfiArm64,
            16 => Firmware::HttpX64,
            19 => Firmware::HttpArm64,
            n => Firmware::Other(n),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Firmware::Bios => "bios".into(),
            Firmware::EfiIa32 => "efi-ia32".into(),
            Firmware::EfiX64 => "efi-x64".into(),
            Firmware::EfiArm64 => "efi-arm64".into(),
            Firmware::HttpX64 => "http-x64".into(),
            Firmware::HttpArm64 => "http-arm64".into(),
            Firmware::Other(n) => format!("arch-{n}"),
        }
    }

    pub fn is_uefi(&self) -> bool {
        !matches!(self, Firmware::Bios)
    }
}

/// What a boot client told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeClient {
    pub firmware: Firmware,
    /// Option 60 started with `HTTPClient` (UEFI HTTP boot) rather than `PXEClient`.
    pub http_client: bool,
    /// The client already runs iPXE (user class "iPXE" or option 175 present): give it the
    /// script URL, not iPXE again, or it chain-loads itself forever.
    pub is_ipxe: bool,
    /// Option 97 as sent, echoed back in replies.
    pub uuid: Option<Vec<u8>>,
}

/// `None` for ordinary DHCP clients (no PXEClient/HTTPClient vendor class and no option 93).
pub fn classify(msg: &Message) -> Option<PxeClient> {
    let opts = msg.opts();
    let class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v.as_slice()),
        _ => None,
    };
    let pxe_class = class.is_some_and(|c| c.starts_with(b"PXEClient"));
    let http_client = class.is_some_and(|c| c.starts_with(b"HTTPClient"));
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    if !pxe_class && !http_client && arch.is_none() {
        return None;
    }
    // Without option 93, fall back to the arch number inside "PXEClient:Arch:xxxxx:...".
    let arch = arch.or_else(|| {
        let c = std::str::from_utf8(class?).ok()?;
        let rest = c.split(":Arch:").nth(1)?;
        rest.get(..5)?.parse().ok()
    });
    let mut firmware = Firmware::from_arch(arch.unwrap_or(0));
    if http_client {
        firmware = match firmware {
            Firmware::EfiArm64 | Firmware::HttpArm64 => Firmware::HttpArm64,
            _ => Firmware::HttpX64,
        };
    }
    let user_class_ipxe = matches!(opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(v)) if v.as_slice() == b"iPXE");
    let has_175 = opts.get(OptionCode::Unknown(175)).is_some();
    let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
        _ => None,
    };
    Some(PxeClient {
        firmware,
        http_client,
        is_ipxe: user_class_ipxe || has_175,
        uuid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;
    use crate::MacAddr;
    use dhcproto::v4::{Architecture, MessageType, UnknownOption};

    fn discover(opts: Vec<DhcpOption>) -> Message {
        request(
            MessageType::Discover,
            MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            opts,
        )
    }

    #[test]
    fn plain_dhcp_client_is_not_pxe() {
        assert_eq!(classify(&discover(vec![])), None);
    }

    #[test]
    fn arch_7_and_9_are_both_x64_uefi() {
        for a in [7u16, 9] {
            let m = discover(vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(a)),
            ]);
            assert_eq!(classify(&m).unwrap().firmware, Firmware::EfiX64);
        }
    }

    #[test]
    fn bios_from_vendor_class_alone() {
        let m = discover(vec![DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        )]);
        let c = classify(&m).unwrap();
        assert_eq!(c.firmware, Firmware::Bios);
        assert!(!c.is_ipxe);
    }

    #[test]
    fn ipxe_by_user_class_or_175() {
        let m = discover(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::UserClass(b"iPXE".to_vec()),
        ]);
        assert!(classify(&m).unwrap().is_ipxe);
        let m = discover(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
            DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![1, 1, 1])),
        ]);
        assert!(classify(&m).unwrap().is_ipxe);
    }

    #[test]
    fn http_client_and_uuid() {
        let m = discover(vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003000".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
            DhcpOption::ClientMachineIdentifier(vec![0; 17]),
        ]);
        let c = classify(&m).unwrap();
        assert_eq!(c.firmware, Firmware::HttpX64);
        assert!(c.http_client);
        assert_eq!(c.uuid, Some(vec![0; 17]));
    }
}
