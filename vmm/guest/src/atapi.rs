//! ATAPI packet commands over the IDE channels (`ata`): PACKET with a 12-byte CDB written
//! through the data port once DRQ is up, data-in read chunk by chunk as the drive offers it
//! (byte count in LBA mid/high, interrupt reason IO), completion on IO|CoD.

use crate::ata::{Channel, Wait, BSY, DRQ, ERR};
use crate::io::{inb, insw, outb, outsw};

pub const PACKET: u8 = 0xa0;
pub const IDENTIFY_PACKET: u8 = 0xa1;

/// A failed packet command: the error register (sense key in bits 7..4) or 0xff for a
/// protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed(pub u8);

impl Failed {
    pub fn sense_key(&self) -> u8 {
        self.0 >> 4
    }
}

impl Channel {
    /// Runs `cdb` on packet device `unit`, reading up to `buf.len()` bytes of data-in
    /// (anything past that is drained and dropped) with byte count limit `limit`. Returns
    /// the bytes of data-in the drive sent.
    pub fn packet(
        &self,
        unit: u8,
        cdb: &[u8; 12],
        buf: &mut [u8],
        limit: u16,
        how: Wait,
    ) -> Result<usize, Failed> {
        outb(self.base + 6, 0xa0 | (unit & 1) << 4);
        outb(self.base + 1, 0);
        outb(self.base + 4, limit as u8);
        outb(self.base + 5, (limit >> 8) as u8);
        let mut seen = crate::irq_count(0);
        outb(self.base + 7, PACKET);
        // The drive raises DRQ for the packet without an interrupt.
        let s = loop {
            let s = self.alt_status();
            if s & BSY == 0 && s & (DRQ | ERR) != 0 {
                break s;
            }
        };
        if s & ERR != 0 {
            return Err(Failed(self.error()));
        }
        let mut words = [0u8; 12];
        words.copy_from_slice(cdb);
        outsw(self.base, &words);
        let mut got = 0;
        loop {
            let s = self.wait(how, seen).map_err(Failed)?;
            seen = crate::irq_count(0);
            let reason = inb(self.base + 2) & 3;
            if s & DRQ == 0 {
                return if reason == 3 {
                    Ok(got)
                } else {
                    Err(Failed(0xff))
                };
            }
            if reason != 2 {
                return Err(Failed(0xff));
            }
            let n = inb(self.base + 4) as usize | (inb(self.base + 5) as usize) << 8;
            let take = n.min(buf.len() - got) & !1;
            insw(self.base, &mut buf[got..got + take]);
            let mut rest = n - take;
            while rest > 0 {
                let mut sink = [0u8; 2];
                insw(self.base, &mut sink);
                rest = rest.saturating_sub(2);
            }
            got += take;
        }
    }

    /// IDENTIFY PACKET DEVICE into `buf`.
    pub fn identify_packet(&self, unit: u8, buf: &mut [u8; 512], how: Wait) -> Result<(), u8> {
        self.identify_with(IDENTIFY_PACKET, unit, buf, how)
    }
}
