//! Starting a guest detached and the supervisor process that runs it.
//!
//! `start` picks the engine, then runs `ignite vm _supervise NAME` in a new session (no
//! controlling terminal, outlives the shell) and returns once the guest's control socket
//! answers, or reports the supervisor's own error if it ended first. The supervisor runs the
//! engine, serves the control socket, and when the guest ends records why in the state
//! database and removes its runtime files.

use super::control::{self, Reply, Request, Status};
use super::{
    capture, qemu, qemu_capture, Boot, Bus, Definition, Engine, EngineChoice, Firmware, Paths,
};
use crate::state::{now, State};
use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `start` waits for a supervisor to report its guest running.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Longest a capture may hold a running guest's writes before the session is ended.
const MAX_CAPTURE_HOLD: Duration = Duration::from_secs(1800);

/// The engine for `choice`, whether QEMU may use KVM (only where guest kernel code runs at
/// hardware speed: nested KVM without it is slower than TCG), and why, in words for the user.
pub fn choose_engine(choice: EngineChoice) -> (Engine, bool, String) {
    if choice == EngineChoice::Bundled {
        return (Engine::Bundled, false, "--engine bundled".into());
    }
    let speed = ignite_vmm::hwcheck::measure();
    let hw = matches!(&speed, Ok(s) if s.hardware_assisted());
    let seen = match &speed {
        Ok(s) => s.describe(),
        Err(e) => format!("KVM is not usable: {e}"),
    };
    match choice {
        EngineChoice::Auto if hw => (Engine::Bundled, true, format!("--engine auto: {seen}")),
        EngineChoice::Auto => (
            Engine::Qemu,
            false,
            format!("--engine auto chose qemu -accel tcg: {seen}"),
        ),
        // --engine qemu (bundled returned above).
        _ => (
            Engine::Qemu,
            hw,
            format!(
                "--engine qemu, {} ({seen})",
                if hw { "-accel kvm" } else { "-accel tcg" }
            ),
        ),
    }
}

/// Starts `name` detached; returns its status once it runs.
pub fn start(state_dir: &Path, name: &str) -> Result<Status> {
    let rec = State::open(state_dir)?.guest(name)?;
    let paths = Paths::new(state_dir, name);
    if let Some(s) = control::status(&paths.control())? {
        bail!(
            "guest {name} is already running (pid {}, engine {}); stop it first with `ignite vm stop {name}`",
            s.pid,
            s.engine
        );
    }
    // OVMF runs under QEMU only.
    let choice = match (rec.def.engine, rec.def.firmware) {
        (EngineChoice::Auto, Firmware::Uefi) => EngineChoice::Qemu,
        (c, _) => c,
    };
    let (engine, kvm, why) = choose_engine(choice);
    if engine == Engine::Qemu
        && ignite_recovery::process::output(Command::new("qemu-system-x86_64").arg("--version"))
            .is_err()
    {
        bail!("guest {name}: qemu-system-x86_64 is not installed; apt-get install qemu-system-x86 (or use --engine bundled)");
    }
    if engine == Engine::Qemu
        && super::instant::pending(&paths.dir)
        && super::instant::server_pid(&paths.dir).is_none()
    {
        // QEMU would wait for the missing export until its monitor timed out.
        bail!(
            "guest {name} is an instant restore still copying, and its server does not run: \
             start it again with `ignite recovery instant {name} --resume`"
        );
    }
    std::fs::create_dir_all(&paths.dir)
        .with_context(|| format!("guest directory {}: cannot create it", paths.dir.display()))?;
    let log = std::fs::File::create(paths.supervisor_log())
        .with_context(|| format!("{}: cannot create it", paths.supervisor_log().display()))?;
    let mut cmd = Command::new(super::ignite_exe().context("cannot find the ignite binary")?);
    cmd.args(["vm", "_supervise", name, "--state-dir"])
        .arg(state_dir)
        .arg(format!("--engine={engine}"))
        .arg(format!("--why={why}"))
        .args(kvm.then_some("--kvm"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = super::spawn_detached(&mut cmd).context("cannot start the guest supervisor")?;
    let t = Instant::now();
    loop {
        if let Some(s) = control::status(&paths.control())? {
            // A long-lived caller (the server) must not keep one zombie per guest run.
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        if let Some(code) = child.try_wait()? {
            // A guest may run its course before the first look (a test program that ends in
            // milliseconds): the supervisor then exits 0 having run it.
            if code.success() {
                return Ok(Status {
                    state: "stopped".into(),
                    pid: child.id(),
                    engine,
                    started: now(),
                    why,
                });
            }
            let log = std::fs::read_to_string(paths.supervisor_log()).unwrap_or_default();
            // Its error (main prints "ignite: ..."), else whatever it said last.
            let lines = || log.lines().rev().filter(|l| !l.trim().is_empty());
            let why = lines()
                .find_map(|l| l.strip_prefix("ignite: "))
                .or_else(|| lines().next())
                .unwrap_or("no message");
            bail!("guest {name} did not start ({code}): {why}");
        }
        if t.elapsed() > START_LIMIT {
            let _ = child.kill();
            bail!(
                "guest {name} did not report running within {}s; see {}",
                START_LIMIT.as_secs(),
                paths.supervisor_log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Is process `pid` alive (and not a zombie waiting for a parent that will not reap it)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Asks the running guest to power off (or, with `force`, ends it at once) and waits up to
/// `limit` for its supervisor to exit.
pub fn stop(state_dir: &Path, name: &str, force: bool, limit: Duration) -> Result<()> {
    State::open(state_dir)?.guest(name)?;
    let paths = Paths::new(state_dir, name);
    let Some(s) = control::status(&paths.control())? else {
        bail!("guest {name} is not running");
    };
    control::ask(&paths.control(), &Request::Stop { force })?;
    let t = Instant::now();
    while alive(s.pid) {
        if t.elapsed() > limit {
            if !force {
                bail!(
                    "guest {name} did not power off within {}s (does it handle the ACPI power button?); \
                     `ignite vm stop --force {name}` ends it at once",
                    limit.as_secs()
                );
            }
            // The supervisor leads its own session: this also ends QEMU.
            if let Some(pid) = rustix::process::Pid::from_raw(s.pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            State::open(state_dir)?.guest_stopped(
                name,
                s.engine,
                "killed by ignite vm stop --force",
            )?;
            remove_runtime_files(&paths);
            let _ = std::fs::remove_file(paths.pid());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The sockets of a supervisor that is gone (the pid file goes with the supervisor's lock).
fn remove_runtime_files(paths: &Paths) {
    for p in [paths.control(), paths.console(), paths.qmp()] {
        let _ = std::fs::remove_file(p);
    }
}

/// The supervisor: runs guest `name` on `engine` until it ends.
pub fn supervise(
    state_dir: &Path,
    name: &str,
    engine: Engine,
    kvm: bool,
    why: String,
) -> Result<()> {
    // The console log, sockets and boot files are the guest's: for root's eyes only.
    crate::state::private_umask();
    let guests = State::open(state_dir)?;
    let def = guests.guest(name)?.def;
    let paths = Paths::new(state_dir, name);
    // Held until this process exits: a second supervisor of the same guest (two racing
    // starts) stops here instead of taking over the first one's sockets.
    let mut pid_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.pid())
        .with_context(|| format!("{}: cannot open it", paths.pid().display()))?;
    if rustix::fs::flock(
        &pid_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        bail!(
            "guest {name} is already running (another supervisor holds {})",
            paths.pid().display()
        );
    }
    remove_runtime_files(&paths);
    pid_file.set_len(0)?;
    std::io::Write::write_all(
        &mut pid_file,
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    guests.guest_started(name, engine)?;
    let status = Status {
        state: "running".into(),
        pid: std::process::id(),
        engine,
        started: now(),
        why,
    };
    eprintln!("guest {name}: engine {engine} ({})", status.why);
    let requested = Arc::new(AtomicBool::new(false));
    let loaded = crate::media::loaded(&guests, name)?;
    let result = match engine {
        Engine::Bundled => run_bundled(&def, &paths, &loaded, status, requested.clone()),
        Engine::Qemu => run_qemu(&def, &paths, &loaded, kvm, status, requested.clone()),
    };
    remove_runtime_files(&paths);
    let _ = std::fs::remove_file(paths.pid());
    let reason = match &result {
        Ok(_) if requested.load(Ordering::SeqCst) => "stopped by ignite vm stop".to_string(),
        Ok(r) => r.clone(),
        Err(e) => format!("failed: {e:#}"),
    };
    eprintln!("guest {name}: {reason}");
    guests.guest_stopped(name, engine, &reason)?;
    result.map(|_| ())
}

/// Serves the control socket; `stop(force)` ends or powers off the guest, `capture` serves a
/// capture session on the connection and returns how it ended (logged), `media(drive,
/// Some((path, read_only)))` changes a drive's medium (None: ejects it).
fn serve_control(
    paths: &Paths,
    status: Status,
    requested: Arc<AtomicBool>,
    stop: impl Fn(bool) -> Result<()> + Send + Sync + 'static,
    capture: impl Fn(&mut control::LineConn) -> String + Send + Sync + 'static,
    changes: impl Fn() -> Result<Vec<control::Pending>> + Send + Sync + 'static,
    media: impl Fn(&str, Option<(&Path, bool)>) -> Result<()> + Send + Sync + 'static,
) -> Result<()> {
    let _ = std::fs::remove_file(paths.control());
    let listener = std::os::unix::net::UnixListener::bind(paths.control())
        .with_context(|| format!("control socket {}: cannot bind", paths.control().display()))?;
    control::serve(listener, move |req, conn| match req {
        Request::Status => Some(Reply::Status(status.clone())),
        Request::Stop { force } => {
            requested.store(true, Ordering::SeqCst);
            Some(match stop(force) {
                Ok(()) => Reply::Ok { ok: true },
                Err(e) => Reply::Error {
                    error: format!("{e:#}"),
                },
            })
        }
        Request::Capture => {
            eprintln!("capture session: {}", capture(conn));
            None
        }
        Request::Changes => Some(match changes() {
            Ok(changes) => Reply::Changes { changes },
            Err(e) => Reply::Error {
                error: format!("{e:#}"),
            },
        }),
        Request::MediaInsert {
            drive,
            path,
            read_only,
        } => Some(ok_or_error(media(&drive, Some((&path, read_only))))),
        Request::MediaEject { drive } => Some(ok_or_error(media(&drive, None))),
    });
    Ok(())
}

fn ok_or_error(r: Result<()>) -> Reply {
    match r {
        Ok(()) => Reply::Ok { ok: true },
        Err(e) => Reply::Error {
            error: format!("{e:#}"),
        },
    }
}

/// The bundled monitor's configuration for `def`, its drives holding `loaded`.
fn bundled_config(
    def: &Definition,
    paths: &Paths,
    loaded: &[(String, crate::media::Medium)],
) -> Result<ignite_vmm::VmConfig> {
    use ignite_vmm::{
        config::DEFAULT_TRACK_GRANULARITY, DiskConfig, KernelImage, NetBackend, NetConfig,
    };
    let (kernel, initrd, cmdline) = match &def.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => (
            KernelImage::Path(kernel.clone()),
            initrd.clone(),
            cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0 reboot=k panic=1".into()),
        ),
        Boot::Disk => {
            let disk = &def.disks.first().context("--boot disk needs a disk")?.path;
            let files = ignite_vmm::diskboot::find_on_image(disk)?;
            std::fs::create_dir_all(paths.boot_files())?;
            let (k, i) = files.write_to(&paths.boot_files())?;
            eprintln!("booting {} of {}", files.found, disk.display());
            (KernelImage::Path(k), i, files.cmdline())
        }
        // The monitor's boot firmware netboots on the first NIC; the command line is used only
        // if the boot file is a kernel itself (a script brings its own).
        Boot::Net => (
            KernelImage::Net,
            None,
            "console=ttyS0 reboot=k panic=1".into(),
        ),
    };
    let mut cfg = ignite_vmm::VmConfig::new(kernel);
    cfg.initrd = initrd;
    cfg.cmdline = cmdline;
    cfg.mem_bytes = def.mem;
    cfg.cpus = def.cpus;
    let disks = def.disks.iter().map(|d| DiskConfig {
        path: d.path.clone(),
        read_only: false,
        direct: false,
        track_changes: Some(DEFAULT_TRACK_GRANULARITY),
    });
    match def.disk_bus {
        Bus::Avio => cfg.disks = disks.collect(),
        Bus::Vio => cfg.vio_disks = disks.collect(),
    }
    let nics = def
        .nics
        .iter()
        .map(|n| -> Result<NetConfig> {
            Ok(NetConfig {
                backend: NetBackend::Bridge(n.bridge.clone()),
                mac: n
                    .mac
                    .parse::<ignite_netboot::MacAddr>()
                    .with_context(|| format!("stored MAC {:?} is not valid", n.mac))?
                    .0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    match def.net_model {
        Bus::Avio => cfg.nets = nics,
        Bus::Vio => cfg.vio_nets = nics,
    }
    cfg.drives = crate::media::engine::vmm_drives(&def.drives, loaded);
    cfg.serial = ignite_vmm::SerialTarget::LoggedUnix {
        socket: paths.console(),
        log: paths.console_log(),
    };
    Ok(cfg)
}

fn run_bundled(
    def: &Definition,
    paths: &Paths,
    loaded: &[(String, crate::media::Medium)],
    status: Status,
    requested: Arc<AtomicBool>,
) -> Result<String> {
    let vm = ignite_vmm::Vm::new(&bundled_config(def, paths, loaded)?)?;
    let signal = vm.stop_signal();
    let media = vm.media();
    let trackers = vm.change_trackers();
    // No ACPI on the bundled monitor: a stop ends the run (vCPUs stopped, then the devices
    // and image files closed), forced or not.
    serve_control(
        paths,
        status,
        requested,
        move |_force| {
            signal.stop(ignite_vmm::StopReason::PowerOff);
            Ok(())
        },
        {
            let trackers = trackers.clone();
            move |conn| capture::serve(&trackers, conn, MAX_CAPTURE_HOLD)
        },
        move || Ok(capture::pending_tracked(&trackers, true)),
        move |drive, path| {
            match path {
                Some((path, read_only)) => media.insert(
                    drive,
                    &ignite_vmm::scsi::MediumConfig {
                        path: path.to_owned(),
                        read_only,
                    },
                )?,
                None => {
                    media.eject(drive)?;
                }
            }
            Ok(())
        },
    )?;
    let out = vm.run(None).context("running the guest");
    let images: Vec<_> = def.disks.iter().map(|d| d.path.clone()).collect();
    capture::refresh_base_stamps(&images);
    Ok(out?.reason.to_string())
}

fn run_qemu(
    def: &Definition,
    paths: &Paths,
    loaded: &[(String, crate::media::Medium)],
    kvm: bool,
    status: Status,
    requested: Arc<AtomicBool>,
) -> Result<String> {
    use ignite_vmm::virtio::tap::Tap;
    // QEMU keeps no change map on the images: what it writes must not look like nothing
    // changed to the next capture.
    for d in &def.disks {
        capture::forget_base(&d.path);
    }
    let taps = def
        .nics
        .iter()
        .map(|n| Tap::from_backend(&ignite_vmm::NetBackend::Bridge(n.bridge.clone())))
        .collect::<ignite_vmm::Result<Vec<_>>>()?;
    // Move the taps above the numbers they get in QEMU, so that placing one cannot
    // overwrite another.
    let high: Vec<std::os::fd::OwnedFd> = taps
        .iter()
        .map(|t| {
            // SAFETY: the tap stays open for the duration of the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(t.as_raw_fd()) };
            rustix::io::fcntl_dupfd_cloexec(fd, 100).map_err(std::io::Error::from)
        })
        .collect::<std::io::Result<_>>()?;
    let fds: Vec<i32> = high.iter().map(|f| f.as_raw_fd()).collect();
    if def.firmware == Firmware::Uefi && !paths.uefi_vars().exists() {
        std::fs::copy(qemu::OVMF_VARS, paths.uefi_vars()).with_context(|| {
            format!(
                "UEFI variables: cannot copy {} (package ovmf)",
                qemu::OVMF_VARS
            )
        })?;
    }
    let mut cmd = qemu::command(def, paths, kvm);
    cmd.args(crate::media::engine::qemu_args(
        &def.drives,
        loaded,
        def.disks.len(),
        def.disk_bus,
        def.firmware == Firmware::Uefi,
    )?);
    cmd.stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it clears close-on-exec on the copies.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, qemu::FIRST_TAP_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot run qemu-system-x86_64")?;
    drop(high);
    let qmp = match qemu::Qmp::connect(paths, Duration::from_secs(20)) {
        Ok(q) => Arc::new(Mutex::new(q)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let bitmaps = {
        let mut q = qmp.lock().unwrap_or_else(|e| e.into_inner());
        match qemu_capture::start(&mut q, def.disks.len()) {
            Ok(b) => Arc::new(Mutex::new(b)),
            Err(e) => {
                drop(q);
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context("cannot start QEMU's dirty bitmaps"));
            }
        }
    };
    let (def_capture, paths_capture) = (def.clone(), Paths::new_at(&paths.dir));
    let (qmp_stop, qmp_media) = (qmp.clone(), qmp.clone());
    serve_control(
        paths,
        status,
        requested,
        move |force| {
            let mut q = qmp_stop.lock().unwrap_or_else(|e| e.into_inner());
            q.execute(if force { "quit" } else { "system_powerdown" })
        },
        {
            let (qmp, bitmaps) = (qmp.clone(), bitmaps.clone());
            move |conn| {
                qemu_capture::serve(
                    &qmp,
                    &bitmaps,
                    &def_capture,
                    &paths_capture,
                    conn,
                    MAX_CAPTURE_HOLD,
                )
            }
        },
        move || qemu_capture::pending(&qmp, &bitmaps),
        move |drive, path| {
            let mut q = qmp_media.lock().unwrap_or_else(|e| e.into_inner());
            crate::media::engine::qmp_change(&mut q, drive, path.map(|(p, _)| p))
        },
    )?;
    let code = child.wait()?;
    drop(taps);
    Ok(if code.success() {
        "guest powered off or reset (qemu exited)".into()
    } else {
        format!("qemu ended: {code}; see the supervisor log")
    })
}
