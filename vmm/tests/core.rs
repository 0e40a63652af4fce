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
