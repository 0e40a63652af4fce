//! VM core under real KVM: a guest program boots in long mode, runs at CPL3, prints over the
//! 8250 and reports through the test port; failures and faults come back as stop reasons.

mod common;

use ignite_vmm::guest::{run_program, ProgramRun};
use ignite_vmm::StopReason;

#[test]
fn hello_prints_and_passes() {
    if !common::kvm() {
        return;
    }
    let r = common::expect_pass(ProgramRun::new("hello"));
    assert!(
        r.serial.contains("hello from a guest program at CPL3"),
        "{}",
        r.serial
    );
    assert!(r.serial.contains("cmdline: mem=67108864"), "{}", r.serial);
    assert!(r.serial.contains("loop done"), "{}", r.serial);
}

#[test]
fn failing_check_reports_code_and_message() {
    if !common::kvm() {
        return;
    }
    let mut run = ProgramRun::new("hello");
    run.args = "mem=1234".into();
    let r = run_program(run).unwrap();
    assert_eq!(r.outcome.reason, StopReason::TestExit(1), "{}", r.serial);
    assert!(r.last_line().starts_with("FAIL: e820 RAM"), "{}", r.serial);
}

#[test]
fn hardware_check_measures_and_explains() {
    if !common::kvm() {
        return;
    }
    let s = ignite_vmm::hwcheck::measure().unwrap();
    eprintln!("{}", s.describe());
    assert!(s.guest_per_sec > 0.0 && s.host_per_sec > 0.0);
    let d = s.describe();
    if s.hardware_assisted() {
        assert!(d.contains("hardware speed"), "{d}");
    } else {
        assert!(
            d.contains("slower than the host") && d.contains("guest test programs still run"),
            "{d}"
        );
    }
}

#[test]
fn guest_cpu_probe_agrees_with_the_speed_check() {
    if !common::kvm() {
        return;
    }
    let cpu = ignite_vmm::hwcheck::guest_cpu().unwrap();
    let speed = ignite_vmm::hwcheck::measure().unwrap();
    eprintln!("{cpu:?}; {}", speed.describe());
    if speed.hardware_assisted() {
        // VT-x and AMD-V always intercept CPUID: the table is what the guest sees.
        assert!(cpu.xsave_hideable, "{cpu:?}");
    }
    // Probing twice gives the same answer (it decides what every guest is told).
    assert_eq!(ignite_vmm::hwcheck::guest_cpu().unwrap(), cpu);
}

#[test]
fn selftest_runs_every_guest_program() {
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let lines = ignite_vmm::selftest::run(dir.as_path());
    assert_eq!(lines.len(), ignite_vmm::guest::PROGRAMS.len());
    for l in &lines {
        match &l.verdict {
            ignite_vmm::selftest::Verdict::Fail(m) => panic!("{}: {m}", l.program),
            ignite_vmm::selftest::Verdict::Skip(m) => {
                assert!(!ignite_e2e::in_ci(), "{} skipped in CI: {m}", l.program);
                eprintln!("{} skipped: {m}", l.program)
            }
            ignite_vmm::selftest::Verdict::Pass(_) => {}
        }
    }
}

#[test]
fn unix_socket_console_carries_output_and_input() {
    use std::io::{Read, Write};
    if !common::kvm() {
        return;
    }
    let dir = common::tempdir();
    let sock = dir.as_path().join("console.sock");
    let mut cfg = ignite_vmm::VmConfig::new(ignite_vmm::guest::image("console"));
    cfg.mem_bytes = 64 << 20;
    cfg.cmdline = "expect=hello-guest".into();
    cfg.serial = ignite_vmm::SerialTarget::Unix(sock.clone());
    let vm = ignite_vmm::Vm::new(&cfg).unwrap();
    let runner =
        std::thread::spawn(move || vm.run(Some(std::time::Duration::from_secs(30))).unwrap());
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("console socket");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let mut sent = false;
    while !String::from_utf8_lossy(&seen).contains("PASS") {
        // Output before the client connected is dropped; ask again until the prompt shows.
        if !sent && (String::from_utf8_lossy(&seen).contains("console ready") || seen.is_empty()) {
            conn.write_all(b"hello-guest\n").unwrap();
            sent = true;
        }
        let n = conn.read(&mut buf).expect("console output");
        assert!(n > 0, "console closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let out = runner.join().unwrap();
    assert_eq!(out.reason, StopReason::TestExit(0));
    assert!(String::from_utf8_lossy(&seen).contains("got: hello-guest"));
}

/// A minimal 64-bit ELF whose only segment is `code`, loaded and entered at 2 MiB.
fn raw_elf(code: &[u8]) -> &'static [u8] {
    let mut e = vec![0u8; 0x1000];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1;
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut e[64..120];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    Box::leak(e.into_boxed_slice())
}

fn run_raw(code: &[u8], cpus: u8) -> StopReason {
    let mut cfg = ignite_vmm::VmConfig::new(ignite_vmm::KernelImage::Bytes {
        name: "raw".into(),
        data: raw_elf(code),
    });
    cfg.mem_bytes = 32 << 20;
    cfg.cpus = cpus;
    cfg.serial = ignite_vmm::SerialTarget::Null;
    ignite_vmm::Vm::new(&cfg)
        .unwrap()
        .run(Some(std::time::Duration::from_secs(30)))
        .unwrap()
        .reason
}

#[test]
fn triple_fault_and_i8042_reset_stop_the_vm_with_a_reason() {
    if !common::kvm() {
        return;
    }
    // ud2 with the boot IDT empty: #UD -> #GP -> #DF -> shutdown.
    assert_eq!(run_raw(&[0x0f, 0x0b], 1), StopReason::TripleFault);
    // mov al, 0xfe; out 0x64, al; hlt — the keyboard controller's reset line.
    assert_eq!(
        run_raw(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4], 2),
        StopReason::Reset
    );
}

#[test]
fn errors_name_the_object_and_what_to_do() {
    let mut cfg =
        ignite_vmm::VmConfig::new(ignite_vmm::KernelImage::Path("/nonexistent/vmlinuz".into()));
    cfg.mem_bytes = 32 << 20;
    cfg.serial = ignite_vmm::SerialTarget::Null;
    if common::kvm() {
        let e = ignite_vmm::Vm::new(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("/nonexistent/vmlinuz") && e.contains("pass --kernel"),
            "{e}"
        );
        cfg.kernel = ignite_vmm::guest::image("hello");
        cfg.disks = vec![ignite_vmm::DiskConfig::parse("/nonexistent/disk.img").unwrap()];
        let e = ignite_vmm::Vm::new(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("disk /nonexistent/disk.img") && e.contains("check the path"),
            "{e}"
        );
        cfg.disks.clear();
        cfg.cpus = 0;
        let e = ignite_vmm::Vm::new(&cfg).err().unwrap().to_string();
        assert!(e.contains("vCPUs is out of range"), "{e}");
    }
    let e = ignite_vmm::Error::NoKvm(std::io::Error::from_raw_os_error(libc::ENOENT)).to_string();
    assert!(
        e.starts_with("/dev/kvm:") && e.contains("load the kvm module"),
        "{e}"
    );
}

#[test]
fn two_vcpus_boot_the_program_on_the_bsp() {
    if !common::kvm() {
        return;
    }
    let mut run = ProgramRun::new("hello");
    run.cpus = 2;
    common::expect_pass(run);
}
