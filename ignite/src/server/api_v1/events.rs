//! `GET /api/v1/events`: changes as Server-Sent Events, one JSON object per event, its SSE
//! event name its `type`:
//!
//! ```text
//! event: job      data: {"type":"job","id":3,"kind":"archive verify","state":"done","done":1,"total":1}
//! event: client   data: {"type":"client","mac":"52:54:..","name":"web1","action":"install web"}
//! event: install  data: {"type":"install","mac":"52:54:..","status":"active","phase":"extracting","done":..,"total":..}
//! event: lagged   data: {"type":"lagged","missed":12}   (a slow reader missed events: re-read)
//! ```
//!
//! Jobs publish their changes themselves. Client and install changes are found by
//! comparing the registry every [`POLL`] while someone listens, so changes made by any
//! writer (the agent's reports, the local CLI, the API) are seen alike.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

use super::jobs::{Job, JobState};
use super::Api;
use crate::state::installs::{phase_name, Status};
use crate::state::views::ClientView;
use ignite_recovery::Phase;

/// How often the registry is compared while someone listens.
pub const POLL: Duration = Duration::from_millis(500);
/// Events a slow reader may fall behind by before it is told it missed some.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    Job {
        id: u64,
        kind: String,
        state: JobState,
        done: u64,
        total: Option<u64>,
    },
    /// A client appeared, changed name or boot action, or went (`action` null).
    Client {
        mac: String,
        name: String,
        action: Option<String>,
    },
    /// A client's latest install changed status or phase.
    Install {
        mac: String,
        status: Status,
        phase: Option<String>,
        done: Option<u64>,
        total: Option<u64>,
    },
    Lagged {
        missed: u64,
    },
}

impl Event {
    pub fn of_job(j: &Job) -> Event {
        Event::Job {
            id: j.id,
            kind: j.kind.clone(),
            state: j.state,
            done: j.done,
            total: j.total,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Job { .. } => "job",
            Event::Client { .. } => "client",
            Event::Install { .. } => "install",
            Event::Lagged { .. } => "lagged",
        }
    }
}

/// The fan-out: every subscriber gets every event published after it subscribed; and the
/// registry as last compared, while anyone listens.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    last: Arc<Mutex<Option<Look>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            last: Arc::default(),
        }
    }

    /// Sends `e` to every subscriber (none: it goes nowhere).
    pub fn publish(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Compares the registry with the last look and publishes what changed. With nobody
    /// listening it forgets the last look; the first look after that is the baseline.
    /// A new subscriber calls it before its stream starts, so a change made right after
    /// is measured against a look from before it.
    pub fn look(&self, state: &crate::state::State) -> anyhow::Result<()> {
        // Held across the look: the check of listeners and the baseline go together.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !self.listened() {
            *last = None;
            return Ok(());
        }
        let now = look(state.client_views()?);
        if let Some(old) = last.as_ref() {
            for e in changes(old, &now) {
                self.publish(e);
            }
        }
        *last = Some(now);
        Ok(())
    }
}

/// What is compared between two looks at the registry, by MAC.
type Look = BTreeMap<String, (Event, Option<Event>)>;

fn look(views: Vec<ClientView>) -> Look {
    views
        .into_iter()
        .map(|v| {
            let c = v.client;
            let install = v.install.map(|i| {
                let (done, total) = match &i.phase {
                    Some(Phase::Extracting { done, total }) => (Some(*done), Some(*total)),
                    _ => (None, None),
                };
                Event::Install {
                    mac: c.mac.clone(),
                    status: i.status,
                    phase: i.phase.as_ref().map(|p| phase_name(p).to_string()),
                    done,
                    total,
                }
            });
            let client = Event::Client {
                mac: c.mac.clone(),
                name: c.name,
                action: Some(c.action.to_string()),
            };
            (c.mac, (client, install))
        })
        .collect()
}

/// The events that lead from `old` to `new`.
fn changes(old: &Look, new: &Look) -> Vec<Event> {
    let mut out = Vec::new();
    for (mac, (client, install)) in new {
        let before = old.get(mac);
        if before.map(|b| &b.0) != Some(client) {
            out.push(client.clone());
        }
        if let Some(i) = install {
            if before.and_then(|b| b.1.as_ref()) != Some(i) {
                out.push(i.clone());
            }
        }
    }
    for (mac, (client, _)) in old {
        if !new.contains_key(mac) {
            let Event::Client { name, .. } = client else {
                continue;
            };
            out.push(Event::Client {
                mac: mac.clone(),
                name: name.clone(),
                action: None,
            });
        }
    }
    out
}

/// Publishes client and install changes while anyone listens, until `stop`.
pub async fn watch_registry(api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = look_off_thread(&api).await {
            tracing::warn!("events: reading the registry: {e:#}");
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

async fn look_off_thread(api: &Arc<Api>) -> anyhow::Result<()> {
    let a = api.clone();
    tokio::task::spawn_blocking(move || a.events.look(&a.state)).await?
}

/// Event stream (Server-Sent Events)
///
/// Job progress and client boot-action and install-phase changes, as they happen; a
/// comment line every 10 s keeps idle connections open.
#[utoipa::path(operation_id = "events", get, path = "/api/v1/events", tag = "events",
    responses((status = 200, description = "an endless `text/event-stream`; each `data:` is an Event", content_type = "text/event-stream", body = Event)))]
pub async fn stream(
    State(api): State<Arc<Api>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = api.events.subscribe();
    if let Err(e) = look_off_thread(&api).await {
        tracing::warn!("events: reading the registry: {e:#}");
    }
    let stop = api.stop.clone();
    let events = futures_util::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        let e = tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            // The server stops: end the stream so the connection can close.
            _ = stop.wait_for(|v| *v) => return None,
        };
        let sse = SseEvent::default()
            .event(e.name())
            .json_data(&e)
            .unwrap_or_else(|_| SseEvent::default().comment("unserializable event"));
        Some((Ok(sse), (rx, stop)))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::installs::Install;
    use crate::state::{Action, Client};

    fn view(mac: &str, name: &str, action: Action, install: Option<(Status, Phase)>) -> ClientView {
        ClientView {
            client: Client {
                mac: mac.into(),
                name: name.into(),
                action,
                last_seen: None,
                last_step: None,
            },
            install: install.map(|(status, phase)| Install {
                token: String::new(),
                mac: mac.into(),
                profile: "web".into(),
                recover: None,
                created_ms: 0,
                status,
                snapshot: None,
                hostname: None,
                phase: Some(phase),
                updated_ms: None,
                bound_ip: None,
                expires_ms: None,
            }),
        }
    }

    #[test]
    fn changes_are_what_differs_between_two_looks() {
        let a = "52:54:00:00:00:0a";
        let b = "52:54:00:00:00:0b";
        let old = look(vec![
            view(
                a,
                "web1",
                Action::Install("web".into()),
                Some((Status::Active, Phase::Partitioned)),
            ),
            view(b, "db1", Action::Local, None),
        ]);
        assert_eq!(changes(&old, &old), []);
        let new = look(vec![view(
            a,
            "web1",
            Action::Install("web".into()),
            Some((Status::Active, Phase::Extracting { done: 5, total: 10 })),
        )]);
        assert_eq!(
            changes(&old, &new),
            [
                Event::Install {
                    mac: a.into(),
                    status: Status::Active,
                    phase: Some("extracting".into()),
                    done: Some(5),
                    total: Some(10),
                },
                Event::Client {
                    mac: b.into(),
                    name: "db1".into(),
                    action: None
                },
            ]
        );
        let flipped = look(vec![view(a, "web1", Action::Local, None)]);
        assert_eq!(
            changes(&new, &flipped),
            [Event::Client {
                mac: a.into(),
                name: "web1".into(),
                action: Some("local".into())
            }]
        );
    }

    #[test]
    fn a_look_publishes_changes_since_the_last_one_while_anyone_listens() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::state::State::open(dir.path()).unwrap();
        let mac: ignite_netboot::MacAddr = "52:54:00:00:00:0c".parse().unwrap();
        st.add(mac, "web1", &Action::Local).unwrap();
        let ev = Events::new();
        let mut rx = ev.subscribe();
        // The first look is the baseline: what was there before is no change.
        ev.look(&st).unwrap();
        assert!(rx.try_recv().is_err());
        st.set_action("web1", &Action::Capture).unwrap();
        ev.look(&st).unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::Client {
                mac: mac.to_string(),
                name: "web1".into(),
                action: Some("capture".into())
            }
        );
        assert!(rx.try_recv().is_err());
        // Nobody listening: changes meanwhile are nobody's, the next listener starts afresh.
        drop(rx);
        ev.look(&st).unwrap();
        st.set_action("web1", &Action::Local).unwrap();
        let mut rx = ev.subscribe();
        ev.look(&st).unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn every_subscriber_gets_what_is_published_after_it_subscribed() {
        let ev = Events::new();
        ev.publish(Event::Lagged { missed: 0 });
        assert!(!ev.listened());
        let (mut r1, mut r2) = (ev.subscribe(), ev.subscribe());
        assert!(ev.listened());
        let e = Event::Lagged { missed: 7 };
        ev.publish(e.clone());
        assert_eq!(r1.recv().await.unwrap(), e);
        assert_eq!(r2.recv().await.unwrap(), e);
        assert!(r1.try_recv().is_err(), "nothing before subscribing");
    }
}
