//! The named cases. Each checks one rule of the agent protocol, runs against
//! a fresh agent process, data directory, PKI and listener, and fails with a
//! message that starts with `rule <name>:`. The doc of each case says the
//! rule precisely, as the kit checks it.

mod commands;
mod connection;
mod hello;
mod sessions;

use std::future::Future;
use std::pin::Pin;

use crate::ctx::Ctx;
use crate::error::Result;

pub type CaseFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

pub struct Case {
    /// Also the name of the rule it checks.
    pub name: &'static str,
    /// The rule, in one or a few sentences.
    pub doc: &'static str,
    pub run: for<'a> fn(&'a mut Ctx) -> CaseFuture<'a>,
}

pub const CASES: &[Case] = &[
    Case {
        name: "hello-welcome",
        doc: "The first frame is Hello, sent once: agent_id equals the id in the client \
              certificate (which is the one the kit made), protocol_version (or \
              supported_protocol_versions) offers PROTOCOL_VERSION_1, platform is \"process\", \
              capacity.max_sessions equals MAX_SESSIONS, and the inventory is empty on a fresh \
              AGENT_DATA_DIR. After Welcome the agent keeps the stream open.",
        run: |c| Box::pin(hello::hello_welcome(c)),
    },
    Case {
        name: "welcome-version",
        doc: "A Welcome whose protocol_version the agent does not speak (99) makes it end the \
              stream within 5 s, without sending results, acks or statuses on it.",
        run: |c| Box::pin(hello::welcome_version(c)),
    },
    Case {
        name: "heartbeat-interval",
        doc: "With Welcome.heartbeat_interval = 300 ms: the first Heartbeat comes within one \
              interval of Welcome (200 ms of slack), every next one within 3 intervals of the \
              previous, on average not more often than every half interval; sequence is 1, 2, 3... \
              (checked over 6 heartbeats).",
        run: |c| Box::pin(hello::heartbeat_interval(c)),
    },
    Case {
        name: "ack-then-result",
        doc: "Every delivery of a command gets exactly one CommandAck, before its CommandResult: \
              a start, a stop, and a second delivery of the stop (acked again, result again).",
        run: |c| Box::pin(commands::ack_then_result(c)),
    },
    Case {
        name: "no-unknown-ids",
        doc: "Every CommandAck and CommandResult names a command the kit delivered on this \
              stream (checked over a start, a stop and a stop of an unknown session, and 500 ms \
              of quiet after them).",
        run: |c| Box::pin(commands::no_unknown_ids(c)),
    },
    Case {
        name: "status-after-result",
        doc: "Right after each CommandResult (heartbeats aside) comes a SessionStatus of the \
              command's session, in the phase the command led to: start and wake -> PROVISIONING \
              or RUNNING, hibernate -> HIBERNATED. A stop's STOPPED status may come right before \
              its result instead (nothing is observed after it). Checked over start, hibernate, \
              wake and stop of one session.",
        run: |c| Box::pin(commands::status_after_result(c)),
    },
    Case {
        name: "start-idempotent",
        doc: "A second StartSession (another command id) for a session that runs succeeds and \
              starts no second workload: the session stays RUNNING at the same URL and the \
              workload command ran once.",
        run: |c| Box::pin(commands::start_idempotent(c)),
    },
    Case {
        name: "duplicate-delivery",
        doc: "A finished command delivered again (same command_id) gets an ack and the same \
              result again, and is not applied again (its workload ran once).",
        run: |c| Box::pin(commands::duplicate_delivery(c)),
    },
    Case {
        name: "unknown-stop",
        doc: "StopSession for a session the agent does not know succeeds, and the status that \
              follows says STOPPED.",
        run: |c| Box::pin(commands::unknown_stop(c)),
    },
    Case {
        name: "unknown-hibernate",
        doc: "HibernateSession and WakeSession for a session the agent does not know each fail \
              with FAILURE_REASON_NOT_FOUND, not retryable.",
        run: |c| Box::pin(commands::unknown_hibernate(c)),
    },
    Case {
        name: "lifecycle",
        doc: "start -> RUNNING with a URL that answers HTTP 2xx; hibernate -> HIBERNATED and the \
              URL stops answering; wake -> RUNNING and the URL answers again; stop -> STOPPED and \
              nothing listens on the URL any more. Every command succeeds.",
        run: |c| Box::pin(sessions::lifecycle(c)),
    },
    Case {
        name: "inventory-after-restart",
        doc: "An agent killed with SIGKILL (its whole process group) while a session runs, and \
              started again on the same AGENT_DATA_DIR, lists the session in Hello.inventory as \
              RUNNING at the same URL, without starting its workload again.",
        run: |c| Box::pin(sessions::inventory_after_restart(c)),
    },
    Case {
        name: "max-in-flight",
        doc: "With Welcome.max_in_flight = 1 the agent applies at most one command at a time. \
              The kit (breaking its own limit on purpose, as a control plane that lost track \
              might) sends stops for two running sessions at once, whose workloads take 1 s to \
              exit after SIGTERM: the second workload must get its SIGTERM only after the first \
              one has exited. Both stops are still acked and both succeed.",
        run: |c| Box::pin(commands::max_in_flight(c)),
    },
    Case {
        name: "oversized-frame",
        doc: "With Welcome.max_message_bytes = 2048 no frame of the agent is larger: a start \
              whose program does not exist and whose name is 1500 control characters (so that a \
              quoted echo of it in CommandFailed.message is several KiB) must fail with a \
              message cut to fit.",
        run: |c| Box::pin(commands::oversized_frame(c)),
    },
    Case {
        name: "reconnect-backoff",
        doc: "With BACKOFF_BASE_MS=100 and BACKOFF_MAX_MS=1000, the kit ends each stream with \
              UNAVAILABLE right after Welcome for 8 s. The agent reconnects after every cut \
              (within BACKOFF_MAX_MS + 5 s), its waits grow: from the 6th reconnect on they \
              average at least 2 x BACKOFF_BASE_MS, and at most 20 attaches fall in the 5 s after \
              the 5th (no reconnect storm).",
        run: |c| Box::pin(connection::reconnect_backoff(c)),
    },
    Case {
        name: "refusal-not-retried-tightly",
        doc: "Attach answered with PERMISSION_DENIED (only an operator can fix it) is retried \
              only after a delay jittered up to the cap, never in a loop from the base: with \
              BACKOFF_BASE_MS=250 and BACKOFF_MAX_MS=30000, at most 4 attempts in the 5 s from \
              the first one (backoff from the base would make 5 or more).",
        run: |c| Box::pin(connection::refusal_not_retried_tightly(c)),
    },
    Case {
        name: "drain",
        doc: "After Drain with reconnect_after = 1.5 s the agent attaches again no earlier than \
              1.5 s after the Drain was sent (and within 1.5 s + BACKOFF_MAX_MS + 5 s), with a \
              new Hello, and ends the drained stream: either first (within 5 s of the Drain) or \
              within 5 s of its new stream's Welcome (make-before-break).",
        run: |c| Box::pin(connection::drain(c)),
    },
];

pub fn find(name: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.name == name)
}
