//! An I/O thread that waits on eventfds (and other fds) with epoll and stops when told.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// Token reported for the stop eventfd.
const STOP: u64 = u64::MAX;

impl Worker {
    /// Runs `on_event(token)` for each readable fd in `fds` (token = index) until stopped.
    /// `on_event` returning false ends the thread too.
    pub fn spawn<F>(name: &str, fds: Vec<RawFd>, on_event: F) -> std::io::Result<Worker>
    where
        F: FnMut(usize) -> bool + Send + 'static,
    {
        Self::spawn_with(
            name,
            fds.into_iter().map(|fd| (fd, EventSet::IN)).collect(),
            on_event,
        )
    }

    /// As `spawn`, with the epoll events for each fd (e.g. edge-triggered).
    pub fn spawn_with<F>(
        name: &str,
        fds: Vec<(RawFd, EventSet)>,
        mut on_event: F,
    ) -> std::io::Result<Worker>
    where
        F: FnMut(usize) -> bool + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (i, (fd, set)) in fds.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, *fd, EpollEvent::new(*set, i as u64))?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); 16];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "I/O thread epoll failed");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        if ev.data() == STOP || !on_event(ev.data() as usize) {
                            return;
                        }
                    }
                }
            })?;
        Ok(Worker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
