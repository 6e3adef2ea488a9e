//! What operators do to a running daemon: control requests (status, events, reload,
//! overrides), metrics and hooks. Everything here runs on the event loop, like every
//! other input: the daemon owns all state.
//!
//! # Reload (`multiwan reload`, SIGHUP)
//!
//! The file the daemon was started with is read and validated again. A file with errors
//! is refused (exit 2 for the client, the errors in the reply and the log) and the
//! running config stays. So is a change of `mark_mask`, `table_base`, `rule_priority`
//! or `nft_table`: they name the kernel objects multiwan owns, so changing them needs
//! `multiwan flush` and a restart. A good file is applied as a difference:
//!
//! - a new link (or one enabled again) gets a runtime (health machine and prober),
//!   starts `up` like at daemon start, and its hooks run with `MULTIWAN_PREVIOUS=none`;
//!   `events` shows it coming `from: "none"`;
//! - a removed link, or one set to `enabled = false`, loses its runtime, its series in
//!   the metrics and, once the new plan is installed, its conntrack entries (its mark no
//!   longer routes anywhere); hooks and `events` see it go to `disabled`;
//! - a link whose `interface` or `id` changed is re-created: its connections are
//!   flushed (they were set up for the old interface or mark), then it starts like a
//!   new link (hooks and `events` see it come from `none`), keeping an operator
//!   override;
//! - a changed check restarts the link's prober and keeps its state, counters and
//!   damping; other changes (weight, priority, gateway, flags) only change the plan;
//! - then the whole plan is re-made and applied with a full read-back of the kernel.
//!   Weights, priorities and rules decide new connections only: existing connections
//!   stay where they are, and no conntrack entry is deleted except those above.
//!
//! `settings.metrics` moves the listener at once; `settings.socket` takes effect at the
//! next restart (the running daemon keeps its socket, so the client that asked for the
//! reload still gets its answer); `hooks_dir`, `hook_timeout` and the rest apply from
//! the next event on.
//!
//! # Overrides (`multiwan link LINK up|down|auto`)
//!
//! `up` forces the link in service (state `up`) whatever its probes say; `down` takes
//! it out (state `disabled`): new connections go elsewhere at once, but its existing
//! connections are **not** deleted (an operator draining a link for maintenance wants
//! calls and downloads to finish; `conntrack -D --mark` does the rest if wanted).
//! `auto` returns to what the evidence says. The health machine keeps probing under an
//! override, so `auto` is right at once. An override lasts until `auto`, a reload that
//! removes the link, or a daemon restart.

use std::time::Instant;

use crate::api::{Event, LinkAction, Refusal, Request};
use crate::config::{Config, Gateway, Link, Settings};
use crate::control::hooks::HookEvent;
use crate::control::http;
use crate::health::{Override, Transition};
use crate::plan::LinkState;

use super::links::LinkRuntime;
use super::Daemon;
use reload_diff::{LinkChange, ReloadDiff};

mod reload_diff;

/// Runtimes a reload took away or made, and the transitions it caused.
#[derive(Default)]
struct Reloaded {
    /// Links whose runtime is gone: (link as configured before, mark, state, why).
    gone: Vec<(Link, u32, LinkState, &'static str)>,
    /// Links with a new runtime: their state at start is their first event.
    fresh: Vec<String>,
    transitions: Vec<Transition>,
}

impl Daemon {
    /// Serves one request from the control socket or the metrics listener.
    pub(super) async fn on_request(&mut self, request: Request) {
        match request {
            // Answered in their own task once fresh counters are read (never on the loop).
            Request::Status(reply) => self.reply_status(reply),
            Request::Subscribe(reply) => {
                let _ = reply.send(self.events.subscribe());
            }
            Request::Reload(reply) => {
                let r = self.reload("reload requested").await;
                let _ = reply.send(r);
            }
            Request::Link {
                link,
                action,
                reply,
            } => {
                let r = self.set_override(&link, action).await;
                let _ = reply.send(r);
            }
            Request::Metrics(reply) => self.reply_metrics(reply),
        }
    }

    /// Starts (or moves) the metrics listener as `settings.metrics` says. A listener
    /// that cannot bind is logged and left out: routing matters more than metrics.
    pub(super) async fn start_metrics(&mut self) {
        if let Some((_, task)) = self.metrics_server.take() {
            task.abort();
        }
        let Some(addr) = self.config.settings.metrics else {
            return;
        };
        match http::bind(addr).await {
            Ok(listener) => {
                tracing::info!("metrics on http://{addr}/metrics");
                let task = tokio::spawn(http::serve(listener, self.requests.clone()));
                self.metrics_server = Some((addr, task));
            }
            Err(e) => tracing::warn!("{e:#}; running without metrics"),
        }
    }

    /// Reload, logged in one line either way.
    pub(super) async fn reload(&mut self, origin: &str) -> Result<String, Refusal> {
        super::notify::reloading();
        let result = self.try_reload().await;
        super::notify::ready(&self.summary());
        match &result {
            Ok(message) => tracing::info!("{origin}: {message}"),
            Err(r) => tracing::error!(
                "{origin}: refused: {}",
                r.message.trim_end().replace('\n', "; ")
            ),
        }
        result
    }

    async fn try_reload(&mut self) -> Result<String, Refusal> {
        let new = crate::config::load(&self.config.path).map_err(|e| {
            Refusal::usage(format!(
                "{e}\nthe new config has errors: nothing changed, the running config stays"
            ))
        })?;
        let diff =
            ReloadDiff::new(&self.config, &new).map_err(|e| Refusal::usage(e.to_string()))?;
        crate::preflight::check_forwarding(&new)
            .map_err(|e| Refusal::runtime(format!("{e:#}; the running config stays")))?;

        let now = Instant::now();
        let reloaded = self.reload_links(&diff, &new, now);
        self.config = new;
        if diff.metrics_moved {
            self.start_metrics().await;
        }
        // Tell what happened, then apply once, then act.
        self.announce_reload(&reloaded, now);

        // A full apply: read the kernel back and repair any drift (a firewall reload
        // that flushed the ruleset, a hand-deleted rule), even when the plan is unchanged.
        self.verify_next = true;
        let previous = self.installed.take();
        if let Err(e) = self.reconcile("reload").await {
            // The apply rolled back: the kernel holds what it held.
            self.installed = previous;
            return Err(Refusal::runtime(format!(
                "the new config is in place but applying it failed: {e:#}; the previous \
                 kernel state stays in force and is retried on the next change"
            )));
        }
        self.after_reload(&reloaded).await;
        Ok(format!(
            "reloaded {}: {}",
            self.config.path.display(),
            diff.summary()
        ))
    }

    /// Carries out the link changes of a reload on the runtimes (not yet the kernel).
    fn reload_links(&mut self, diff: &ReloadDiff, new: &Config, now: Instant) -> Reloaded {
        let mut r = Reloaded::default();
        for change in &diff.links {
            let name = change.name();
            let configured = || {
                new.link(name)
                    .expect("the diff names links of the new file")
            };
            match change {
                LinkChange::Gone { why, .. } => {
                    let rt = self.links.remove(name).expect("a running link");
                    r.gone
                        .push((rt.link.clone(), rt.mark, rt.health.state(), why.as_str()));
                }
                LinkChange::Recreated { .. } => {
                    let old = self.links.remove(name).expect("a running link");
                    let mut rt = self.new_runtime(configured(), &new.settings, now);
                    let _ = rt.health.set_override(now, old.health.operator_override());
                    self.links.insert(name.to_string(), rt);
                    r.fresh.push(name.to_string());
                    r.gone.push((
                        old.link.clone(),
                        old.mark,
                        old.health.state(),
                        "re-created by reload",
                    ));
                }
                LinkChange::Changed { check, .. } => {
                    let l = configured().clone();
                    let reports = self.reports_tx.clone();
                    let rt = self.links.get_mut(name).expect("a running link");
                    if *check {
                        r.transitions
                            .extend(rt.set_check(now, l.check.clone(), reports));
                    }
                    rt.link = l;
                    rt.update_endpoint(&self.facts);
                }
                LinkChange::Added { .. } => {
                    let rt = self.new_runtime(configured(), &new.settings, now);
                    self.links.insert(name.to_string(), rt);
                    r.fresh.push(name.to_string());
                }
            }
        }
        // New runtimes and changed gateways see the interfaces as they are now; for a
        // fresh runtime that is its initial state, not a change.
        for t in self.observe_interfaces(now) {
            if !r.fresh.contains(&t.link) {
                r.transitions.push(t);
            }
        }
        r
    }

    /// Log lines, metrics and `events` for what a reload did to the links.
    fn announce_reload(&mut self, r: &Reloaded, now: Instant) {
        for (link, _, state, why) in &r.gone {
            if r.fresh.contains(&link.name) {
                continue;
            }
            self.metrics.forget(&link.name);
            tracing::info!("link {}: {state} -> disabled ({why})", link.name);
            let _ = self.events.send(Event {
                time: crate::status::rfc3339(self.wall(now)),
                link: link.name.clone(),
                from: state.to_string(),
                to: LinkState::Disabled.to_string(),
                reason: why.to_string(),
            });
        }
        for name in &r.fresh {
            let rt = &self.links[name];
            let (state, reason) = (rt.health.state(), rt.health.reason().to_string());
            tracing::info!("link {name}: none -> {state} (added by reload: {reason})");
            let _ = self.events.send(Event {
                time: crate::status::rfc3339(self.wall(now)),
                link: name.clone(),
                from: "none".into(),
                to: state.to_string(),
                reason: format!("added by reload: {reason}"),
            });
        }
        for t in &r.transitions {
            self.log_transition(t);
        }
    }

    /// Once the reloaded plan is installed: conntrack flushes and hooks.
    async fn after_reload(&mut self, r: &Reloaded) {
        let mask = self.config.settings.mark_mask;
        for (link, mark, state, _) in &r.gone {
            // Removed: the mark no longer routes. Re-created: the connections were
            // set up (source address, NAT) for the old interface or mark. The reload
            // answers once they are gone, so what it reports has happened.
            if let Err(e) = self.flush_connections(&link.name, *mark, mask).await {
                tracing::warn!("link {}: deleting conntrack entries: {e}", link.name);
            }
            if !r.fresh.contains(&link.name) {
                let ev = self.hook_event(link, LinkState::Disabled.as_str(), state.as_str());
                self.queue_hook(ev);
            }
        }
        for name in &r.fresh {
            let rt = &self.links[name];
            let ev = self.hook_event(&rt.link, rt.health.state().as_str(), "none");
            self.queue_hook(ev);
        }
        self.after_apply(&r.transitions);
        self.write_status();
    }

    fn new_runtime(&self, link: &Link, settings: &Settings, now: Instant) -> LinkRuntime {
        LinkRuntime::start(
            link,
            settings,
            LinkState::Up,
            now,
            &self.facts,
            self.reports_tx.clone(),
        )
    }

    /// `multiwan link LINK up|down|auto`.
    pub(super) async fn set_override(
        &mut self,
        name: &str,
        action: LinkAction,
    ) -> Result<String, Refusal> {
        let Some(rt) = self.links.get_mut(name) else {
            let known: Vec<&str> = self.config.links.iter().map(|l| l.name.as_str()).collect();
            return Err(Refusal::usage(match self.config.link(name) {
                Some(_) => format!(
                    "link {name} is disabled in the config (enabled = false): set enabled = \
                     true and run `multiwan reload`"
                ),
                None => format!(
                    "no link {name} in {} (links: {})",
                    self.config.path.display(),
                    known.join(", ")
                ),
            }));
        };
        let operator = match action {
            LinkAction::Up => Some(Override::Up),
            LinkAction::Down => Some(Override::Down),
            LinkAction::Auto => None,
        };
        let t = rt.health.set_override(Instant::now(), operator);
        let message = match &t {
            Some(t) => format!("link {name}: {} -> {} ({})", t.from, t.to, t.reason),
            None => format!(
                "link {name}: stays {} ({})",
                rt.health.state(),
                rt.health.reason()
            ),
        };
        match t {
            Some(t) => self.act(vec![t]).await,
            None => {
                tracing::info!("operator: {message}");
                self.write_status();
            }
        }
        Ok(message)
    }

    /// What the hooks of `link` are told.
    pub(super) fn hook_event(&self, link: &Link, event: &str, previous: &str) -> HookEvent {
        let gateway = self
            .installed
            .as_ref()
            .and_then(|d| d.links.iter().find(|s| s.name == link.name))
            .and_then(|s| s.gateway)
            .map(|g| g.to_string())
            .or_else(|| match link.gateway {
                Gateway::Static(g) => Some(g.to_string()),
                Gateway::Auto | Gateway::None => None,
            })
            .unwrap_or_default();
        let active = self
            .links
            .iter()
            .filter(|(_, l)| l.health.state().in_service())
            .map(|(n, _)| n.clone())
            .collect();
        HookEvent {
            event: event.to_string(),
            link: link.name.clone(),
            interface: link.interface.clone(),
            gateway,
            previous: previous.to_string(),
            active,
        }
    }

    pub(super) fn queue_hook(&mut self, event: HookEvent) {
        let s = &self.config.settings;
        self.hooks.run(&s.hooks_dir, s.hook_timeout, event);
    }

    /// The hooks of every link for its state at start (`MULTIWAN_PREVIOUS=none`).
    pub(super) fn initial_hooks(&mut self) {
        let events: Vec<HookEvent> = self
            .links
            .values()
            .map(|rt| self.hook_event(&rt.link, rt.health.state().as_str(), "none"))
            .collect();
        for e in events {
            self.queue_hook(e);
        }
    }

    /// The hooks of state changes, after the new plan is applied.
    pub(super) fn transition_hooks(&mut self, transitions: &[Transition]) {
        let events: Vec<HookEvent> = transitions
            .iter()
            .filter_map(|t| {
                let rt = self.links.get(&t.link)?;
                Some(self.hook_event(&rt.link, t.to.as_str(), t.from.as_str()))
            })
            .collect();
        for e in events {
            self.queue_hook(e);
        }
    }
}
